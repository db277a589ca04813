"""Docker's iptables ruleset for one node: rendered whole from desired state, applied in one
``iptables-restore --noflush`` transaction inside the node's namespace.

Layout (as dockerd 28 programs it)::

    nat     PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
            OUTPUT [! -d 127.0.0.0/8] -m addrtype --dst-type LOCAL -j DOCKER
            DOCKER: one DNAT per published port (hairpin mode: also from the bridge itself)
    filter  FORWARD -j DOCKER-USER; FORWARD -j DOCKER-FORWARD
            DOCKER-FORWARD: isolation, established, -o BR -j DOCKER, egress accept
            DOCKER: one ACCEPT per published port, then drop the rest toward each bridge
            DOCKER-ISOLATION-STAGE-1/2: user-defined bridges cannot reach each other

One deviation, on purpose: dockerd appends its MASQUERADE rules to ``POSTROUTING``
directly; here they live in a ``DOCKER-POSTROUTING`` chain jumped to from POSTROUTING, so
that every render rewrites them whole (a chain named in a restore is flushed) and rules
of other components in the node's POSTROUTING are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knetlab import shell
from knetlab.docker.ports import ANY, Binding

NAT_CHAINS = ("DOCKER", "DOCKER-POSTROUTING")
FILTER_CHAINS = ("DOCKER-USER", "DOCKER-FORWARD", "DOCKER", "DOCKER-ISOLATION-STAGE-1",
                 "DOCKER-ISOLATION-STAGE-2")


@dataclass(frozen=True)
class BridgeNet:
    name: str  # the Docker network name (bridge, mynet)
    ifname: str  # docker0, br-<id>
    subnet: str


@dataclass(frozen=True)
class Published:
    container: str
    ip: str
    bridge: str  # ifname of the container's bridge
    bindings: tuple[Binding, ...] = field(default_factory=tuple)


def _c(text: str) -> str:
    return f'-m comment --comment "docker: {text}"'


def builtin_jumps(userland_proxy: bool) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) jumps from the built-in chains, installed once per node."""
    # With the userland proxy, 127.0.0.0/8 is served by the proxy, not by DNAT (dockerd).
    local = [] if not userland_proxy else ["!", "-d", "127.0.0.0/8"]
    addr = ["-m", "addrtype", "--dst-type", "LOCAL"]
    return [("nat", "PREROUTING", [*addr, "-j", "DOCKER"]),
            ("nat", "OUTPUT", [*local, *addr, "-j", "DOCKER"]),
            ("nat", "POSTROUTING", ["-j", "DOCKER-POSTROUTING"]),
            ("filter", "FORWARD", ["-j", "DOCKER-FORWARD"]),
            ("filter", "FORWARD", ["-j", "DOCKER-USER"])]  # inserted last: ends up first


def _dnat(p: Published, b: Binding) -> str:
    dst = "" if b.host_ip == ANY else f"-d {b.host_ip}/32 "
    return (f"-A DOCKER {dst}-p {b.proto} -m {b.proto} --dport {b.host_port} {_c(p.container)} "
            f"-j DNAT --to-destination {p.ip}:{b.container_port}")


def render(bridges: list[BridgeNet], published: list[Published], userland_proxy: bool) -> str:
    """The whole Docker ruleset for one node as iptables-restore text."""
    nat = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS)]
    flt = ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS),
           f"-A DOCKER-USER {_c('user rules go before this')} -j RETURN",
           f"-A DOCKER-FORWARD {_c('isolation')} -j DOCKER-ISOLATION-STAGE-1"]
    for br in bridges:
        i, n = br.ifname, br.name
        nat.append(f"-A DOCKER-POSTROUTING -s {br.subnet} ! -o {i} {_c(n)} -j MASQUERADE")
        if not userland_proxy:  # 127.0.0.1 published through route_localnet
            nat.append(f"-A DOCKER-POSTROUTING -o {i} -m addrtype --src-type LOCAL {_c(n)} "
                       "-j MASQUERADE")
        flt += [f"-A DOCKER-FORWARD -o {i} -m conntrack --ctstate RELATED,ESTABLISHED "
                f"{_c(n)} -j ACCEPT",
                f"-A DOCKER-FORWARD -o {i} {_c(n)} -j DOCKER",
                f"-A DOCKER-FORWARD -i {i} ! -o {i} {_c(n)} -j ACCEPT",
                f"-A DOCKER-FORWARD -i {i} -o {i} {_c(n)} -j ACCEPT",
                f"-A DOCKER-ISOLATION-STAGE-1 -i {i} ! -o {i} {_c(n)} "
                "-j DOCKER-ISOLATION-STAGE-2",
                f"-A DOCKER-ISOLATION-STAGE-2 -o {i} {_c(n)} -j DROP"]
    for p in published:
        for b in p.bindings:
            nat.append(_dnat(p, b))
            # hairpin: the container reaching its own published port through the node
            nat.append(f"-A DOCKER-POSTROUTING -s {p.ip}/32 -d {p.ip}/32 -p {b.proto} -m "
                       f"{b.proto} --dport {b.container_port} {_c(p.container)} -j MASQUERADE")
            flt.append(f"-A DOCKER -d {p.ip}/32 ! -i {p.bridge} -o {p.bridge} -p {b.proto} "
                       f"-m {b.proto} --dport {b.container_port} {_c(p.container)} -j ACCEPT")
    # Unpublished traffic toward a bridge from elsewhere is dropped (dockerd's policy).
    flt += [f"-A DOCKER ! -i {br.ifname} -o {br.ifname} {_c(br.name)} -j DROP"
            for br in bridges]
    # Two host ports to one container port need their filter/hairpin rule once.
    nat, flt = list(dict.fromkeys(nat)), list(dict.fromkeys(flt))
    return "\n".join([*nat, "COMMIT", *flt, "COMMIT", ""])


def ensure_jumps(netns: str, userland_proxy: bool) -> None:
    """Create Docker's chains and the jumps to them from the built-in chains (idempotent)."""
    head = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), "COMMIT",
            "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), "COMMIT", ""]
    shell.run(["iptables-restore", "--noflush"], netns=netns, input="\n".join(head),
              context="create Docker's chains")
    for table, chain, rule in builtin_jumps(userland_proxy):
        if not shell.run(["iptables", "-w", "-t", table, "-C", chain, *rule], netns=netns,
                         check=False).ok:
            shell.run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule], netns=netns,
                      context=f"jump from {table} {chain} to Docker's chains")


def apply(netns: str, text: str) -> None:
    shell.run(["iptables-restore", "-w", "--noflush"], netns=netns, input=text,
              context="apply Docker's iptables rules")
