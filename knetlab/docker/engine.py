"""The engine of one node: containers and the CNM objects (network, endpoint, sandbox).

What dockerd keeps per host. A *sandbox* is the container's network namespace (a Mininet
host holding it, so the Mininet CLI reaches the container by name); an *endpoint* joins a
sandbox to a *network*; the network's driver (``drivers``) does the kernel work. Local
networks (bridge, macvlan) live in the engine; overlay networks are swarm-scoped and live
in the cluster store (``/knetlab/docker/networks/NAME``), with their peers, endpoints and address
claims, so every node's engine sees them.

Rules are level-triggered: every change re-renders Docker's whole ruleset for the node
from the container list (``rules.render``) and applies it in one transaction.
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knetlab.daemon import Daemon, DaemonError
from knetlab.docker import rules
from knetlab.docker.drivers import DRIVERS
from knetlab.docker.ports import Allocator, Binding, PortSpec, parse_expose, parse_publish
from knetlab.errors import KnetlabError, NotFoundError
from knetlab.nodes.host import NetnsHost

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir

DEFAULT_BRIDGE = ("bridge", "docker0", "172.17.0.0/16")
USER_POOLS = [f"172.{n}.0.0/16" for n in range(18, 32)]
OVERLAY_POOLS = [f"10.0.{n}.0/24" for n in range(0, 256)]


class DockerError(KnetlabError):
    def __init__(self, msg: str) -> None:
        super().__init__(f"docker: Error response from daemon: {msg}")


@dataclass
class Network:
    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    ifname: str
    ip_range: str = ""
    parent: str = ""
    vni: int = 0
    options: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # local IPAM (bridge, macvlan)

    @property
    def scope(self) -> str:
        return "swarm" if self.driver == "overlay" else "local"

    @property
    def vxlan_ifname(self) -> str:
        return f"vx-{self.id[:12]}"

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "used"}


@dataclass
class Endpoint:
    id: str
    container: str
    network: str
    ifname: str  # inside the sandbox (eth0, eth1, ...)
    host_ifname: str  # veth peer in the node (or the macvlan child before it moves)
    ip: str
    mac: str = ""


class ContainerProcess(Daemon):
    """The container's command, running inside its sandbox."""
    name = "container"

    def __init__(self, rundir: RunDir, owner: str, netns: str, argv: list[str]) -> None:
        super().__init__(rundir, owner, netns)
        self.argv = argv

    def command(self) -> list[str]:
        return self.argv

    def match(self) -> str:
        return " ".join(self.argv)


class UserlandProxy(Daemon):
    """docker-proxy for one binding, in the node's namespace."""

    def __init__(self, rundir: RunDir, owner: str, netns: str, b: Binding, cip: str) -> None:
        self.name = f"docker-proxy-{b.proto}-{b.host_ip}-{b.host_port}"
        super().__init__(rundir, owner, netns)
        self.b, self.cip = b, cip
        (self.dir / "ready").unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "knetlab.docker.proxy", "-proto", self.b.proto,
                "-host-ip", self.b.host_ip, "-host-port", str(self.b.host_port),
                "-container-ip", self.cip, "-container-port", str(self.b.container_port),
                "-ready-file", str(self.dir / "ready")]

    def is_ready(self) -> bool:
        return (self.dir / "ready").exists()


@dataclass
class Container:
    id: str
    name: str
    image: str
    command: list[str]
    sandbox: NetnsHost | None
    endpoints: list[Endpoint] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    process: ContainerProcess | None = None
    proxies: list[UserlandProxy] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    status: str = "Up"


def new_id() -> str:
    return secrets.token_hex(32)


class Engine:
    """dockerd of one node."""

    def __init__(self, service: DockerService, node: K8sNode) -> None:
        self.service, self.node, self.cluster = service, node, service.cluster
        self.networks: dict[str, Network] = {}
        self.containers: dict[str, Container] = {}
        self.ports = Allocator()
        self.userland_proxy = True
        name, ifname, subnet = DEFAULT_BRIDGE
        self._add_local(Network(new_id(), name, "bridge", subnet, _host(subnet, 1), ifname))
        rules.ensure_jumps(node.netns, self.userland_proxy)
        self.reconcile()

    # -- networks ----------------------------------------------------------------
    def all_networks(self) -> dict[str, Network]:
        out = dict(self.networks)
        for rec in self.service.store.list("/knetlab/docker/networks").values():
            out[rec["name"]] = Network(**rec)
        return out

    def network(self, name: str) -> Network:
        nets = self.all_networks()
        found = nets.get(name) or next((n for n in nets.values() if n.id.startswith(name)), None)
        if not found:
            raise DockerError(f"network {name} not found")
        return found

    def _add_local(self, net: Network) -> None:
        DRIVERS[net.driver].create(self, net)
        self.networks[net.name] = net
        net.used.add(net.gateway)
        if net.options.get("aux_host"):
            net.used.add(net.options["aux_host"])

    def create_network(self, name: str, driver: str = "bridge", subnet: str = "",
                       gateway: str = "", ip_range: str = "", aux: dict[str, str] | None = None,
                       opts: dict[str, str] | None = None) -> Network:
        if name in self.all_networks():
            raise DockerError(f"network with name {name} already exists")
        if driver not in DRIVERS:
            raise DockerError(f"plugin \"{driver}\" not found")
        nid = new_id()
        subnet = subnet or self._free_pool(driver)
        gateway = gateway or (self._underlay_gw() if driver == "macvlan" and not subnet
                              else _host(subnet, 1))
        options = {**(opts or {})}
        if aux and "host" in aux:
            options["aux_host"] = aux["host"]
        net = Network(nid, name, driver, subnet, gateway, f"br-{nid[:12]}", ip_range,
                      options.get("parent", self.node.uplink), options=options)
        if driver == "macvlan":
            net.ifname = f"mv-{nid[:12]}"
        if driver == "overlay":
            net.ifname, net.vni = f"ov-{nid[:12]}", 4096 + int(nid[:4], 16) % 4096
            if not self.service.store.create(f"/knetlab/docker/networks/{name}", net.record()):
                raise DockerError(f"network with name {name} already exists")
            return net
        self._add_local(net)
        self.reconcile()
        return net

    def _underlay_gw(self) -> str:
        return str(self.cluster.spec.underlay.gateway(self.node.spec.rack))

    def _free_pool(self, driver: str) -> str:
        if driver == "macvlan":
            return str(self.cluster.spec.underlay.rack_subnet(self.node.spec.rack))
        taken = {n.subnet for n in self.all_networks().values()}
        pools = OVERLAY_POOLS if driver == "overlay" else USER_POOLS
        return next(p for p in pools if p not in taken)

    def remove_network(self, name: str) -> None:
        net = self.network(name)
        if net.name == "bridge":
            raise DockerError("bridge is a pre-defined network and cannot be removed")
        users = [c.name for c in self.containers.values()
                 for e in c.endpoints if e.network == net.name]
        if net.driver == "overlay":
            users += [v["container"] for v in self.service.store.list(
                f"/knetlab/docker/overlay/{net.name}/endpoints").values()]
        if users:
            raise DockerError(f"error while removing network: network {net.name} id {net.id} "
                              f"has active endpoints ({', '.join(users)})")
        DRIVERS[net.driver].delete(self, net)
        if net.driver == "overlay":
            for eng in self.service.engines.values():
                DRIVERS["overlay"].delete(eng, net)
            for key in self.service.store.list(f"/knetlab/docker/overlay/{net.name}"):
                self.service.store.delete(key)
            self.service.store.delete(f"/knetlab/docker/networks/{net.name}")
        else:
            del self.networks[net.name]
        self.reconcile()

    # -- IPAM --------------------------------------------------------------------
    def _allocate_ip(self, net: Network, container: str, want: str = "") -> str:
        pool = ipaddress.ip_network(net.ip_range or net.subnet)
        skip = {n.node_ip for n in self.cluster.k8s_nodes()} if net.driver == "macvlan" else set()
        candidates = [want] if want else [str(h) for h in pool.hosts()]
        for ip in candidates:
            if ip in skip or ip == net.gateway or ip == net.options.get("aux_host"):
                continue
            if net.driver == "overlay":
                if self.service.store.create(f"/knetlab/docker/overlay/{net.name}/ips/{ip}",
                                             {"container": container, "node": self.node.name}):
                    return ip
            elif ip not in net.used:
                net.used.add(ip)
                return ip
        raise DockerError(f"no available IPv4 addresses on this network's address pools: "
                          f"{net.name}" if not want else f"Address already in use: {want}")

    def _release_ip(self, net: Network, ip: str) -> None:
        if net.driver == "overlay":
            self.service.store.delete(f"/knetlab/docker/overlay/{net.name}/ips/{ip}")
        else:
            local = self.networks.get(net.name)
            if local:
                local.used.discard(ip)

    # -- rules ---------------------------------------------------------------------
    def reconcile(self) -> None:
        """Render Docker's whole ruleset for this node and apply it in one transaction."""
        bridges = [rules.BridgeNet(n.name, n.ifname, n.subnet)
                   for n in self.networks.values() if n.driver == "bridge"]
        published = []
        for c in self.containers.values():
            ep = next((e for e in c.endpoints if self.networks.get(e.network) and
                       self.networks[e.network].driver == "bridge"), None)
            if ep and c.status == "Up":
                published.append(rules.Published(c.name, ep.ip, self.networks[ep.network].ifname,
                                                 tuple(c.bindings)))
        rules.apply(self.node.netns, rules.render(bridges, published, self.userland_proxy))

    def set_userland_proxy(self, on: bool) -> None:
        if any(c.status == "Up" for c in self.containers.values()):
            raise DockerError("stop the running containers before changing userland-proxy")
        for table, chain, rule in rules.builtin_jumps(self.userland_proxy):
            if chain == "OUTPUT":
                self.node.run(["iptables", "-w", "-t", table, "-D", chain, *rule], check=False)
        self.userland_proxy = on
        self.node.sysctl("net.ipv4.conf.all.route_localnet", "0" if on else "1")
        rules.ensure_jumps(self.node.netns, on)
        self.reconcile()

    # -- containers ------------------------------------------------------------------
    def port_specs(self, publish: list[str], publish_all: bool, expose: list[str]) -> \
            list[PortSpec]:
        specs = [s for p in publish for s in parse_publish(p)]
        if publish_all:  # -P: every exposed port, on a random host port
            exposed = [e for x in expose for e in parse_expose(x)]
            have = {(s.container_port, s.proto) for s in specs}
            specs += [PortSpec("0.0.0.0", (), port, proto) for port, proto in exposed
                      if (port, proto) not in have]
        return specs

    def container(self, name: str) -> Container:
        found = self.containers.get(name) or next(
            (c for c in self.containers.values() if c.id.startswith(name)), None)
        if not found:
            raise NotFoundError(f"Error response from daemon: No such container: {name}")
        return found


class DockerService:
    """The engines of a cluster, one per node that ran a docker command."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        assert cluster.store is not None
        self.store = cluster.store
        self.engines: dict[str, Engine] = {}

    def engine(self, node: str) -> Engine:
        if node not in self.engines:
            self.engines[node] = Engine(self, self.cluster.node(node))
        return self.engines[node]

    def sync_overlay(self, net: Network) -> None:
        """Every node that joined ``net`` floods to every other one (peers from the store)."""
        nodes = self.store.list(f"/knetlab/docker/overlay/{net.name}/nodes")
        peers = [v["ip"] for v in nodes.values()]
        for eng in self.engines.values():
            DRIVERS["overlay"].sync(eng, net, peers)


def _host(subnet: str, n: int) -> str:
    return str(ipaddress.ip_network(subnet).network_address + n)


__all__ = ["Container", "DaemonError", "DockerError", "DockerService", "Endpoint", "Engine",
           "Network"]
