"""What flanneld programs in a node's kernel, reconciled level-triggered from the leases.

Runs inside the node's namespace (in the agent process). Per backend:

- vxlan: device ``flannel.<VNI>`` (nolearning, dstport, MTU underlay-50, ``<subnet>.0/32``);
  per peer a route ``via <peer>.0 dev flannel.1 onlink``, a permanent neighbour
  ``<peer>.0 -> VTEP MAC`` and an FDB entry ``VTEP MAC -> peer node IP``. DirectRouting:
  peers on the node's own L2 segment get a plain route via their node IP instead.
- host-gw: a route per peer via its node IP (only for peers on the node's segment).
- udp: TUN ``flannel0`` (made by the forwarder) gets ``<subnet>.0/<network len>`` and
  MTU underlay-28; the kernel's connected route sends the whole network to it.

Every route carries knetlab's proto 77; desired sets are applied, extras deleted.

As flanneld with ``--ip-masq`` (kube-flannel's default): chain ``FLANNEL-POSTRTG`` in the
nat table masquerades pod traffic that leaves the pod network, and traffic from outside
it to other nodes' pods; pod to pod keeps its addresses.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any

from knetlab import shell

log = logging.getLogger("flannel.kernel")
ROUTE_PROTO = "77"  # the same number as knetlab.routes: knetlab-owned routes


@dataclass
class Local:
    node: str
    subnet: str  # this node's lease
    public_ip: str  # node IP with prefix length, e.g. 192.168.0.11/24
    iface: str  # underlay uplink
    config: dict[str, Any]
    underlay_mtu: int = 1500

    @property
    def ip(self) -> str:
        return self.public_ip.split("/")[0]

    @property
    def btype(self) -> str:
        return self.config["Backend"]["Type"]

    @property
    def vxlan_dev(self) -> str:
        return f"flannel.{self.config['Backend']['VNI']}"

    def same_segment(self, peer_ip: str) -> bool:
        net = ipaddress.ip_interface(self.public_ip).network
        return ipaddress.ip_address(peer_ip) in net


def vtep_mac(node_ip: str) -> str:
    """A stable, locally administered MAC per node, so a recreated device keeps its VTEP
    identity (flanneld reuses the MAC from its previous lease for the same reason)."""
    octets = [int(p) for p in node_ip.split(".")]
    return "0e:fa:" + ":".join(f"{o:02x}" for o in octets)


def _json(argv: list[str]) -> list[dict[str, Any]]:
    res = shell.run(argv, check=False)
    return json.loads(res.stdout or "[]") if res.ok else []


def first_host(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet).network_address)


# -- devices -------------------------------------------------------------------------------

def ensure_vxlan(local: Local) -> None:
    dev, be = local.vxlan_dev, local.config["Backend"]
    links = _json(["ip", "-d", "-j", "link", "show", "dev", dev])
    info = links[0].get("linkinfo", {}).get("info_data", {}) if links else {}
    if links and (info.get("id") != be["VNI"] or info.get("port") != be["Port"]
                  or info.get("local") != local.ip or info.get("learning", False)):
        log.info("%s has the wrong settings (%s); recreating", dev, info)
        shell.run(["ip", "link", "del", dev])
        links = []
    if not links:
        log.info("creating %s", dev)
        shell.run(["ip", "link", "add", dev, "type", "vxlan", "id", str(be["VNI"]), "local",
                   local.ip, "dev", local.iface, "dstport", str(be["Port"]), "nolearning"])
    mtu = local.underlay_mtu - 50
    _link_addr(dev, mtu, f"{first_host(local.subnet)}/32", vtep_mac(local.ip))


def ensure_tun(local: Local) -> bool:
    """Address flannel0 (made by the forwarder); False while it does not exist yet."""
    if not _json(["ip", "-j", "link", "show", "dev", "flannel0"]):
        return False
    plen = local.config["Network"].split("/")[1]
    _link_addr("flannel0", local.underlay_mtu - 28, f"{first_host(local.subnet)}/{plen}")
    return True


def _link_addr(dev: str, mtu: int, addr: str, mac: str | None = None) -> None:
    link = _json(["ip", "-j", "addr", "show", "dev", dev])[0]
    lines = []
    if link.get("mtu") != mtu or "UP" not in link.get("flags", []):
        lines.append(f"link set {dev} mtu {mtu} up")
    if mac and link.get("address") != mac:
        lines.append(f"link set {dev} address {mac}")
    have = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
            if a.get("family") == "inet"}
    if addr not in have:
        lines.append(f"addr replace {addr} dev {dev}")
    if lines:
        shell.ip_batch(lines, context=f"configure {dev}")


# -- per-peer state ---------------------------------------------------------------------------

def desired_routes(local: Local, peers: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in peers:
        ip = p["PublicIP"]
        if local.btype == "host-gw" or (local.btype == "vxlan"
                                        and local.config["Backend"].get("DirectRouting")
                                        and local.same_segment(ip)):
            if not local.same_segment(ip):
                log.error("host-gw: peer %s (%s) is not on this node's L2 segment %s; "
                          "no route", p["node"], ip, local.public_ip)
                continue
            out[p["subnet"]] = f"via {ip} dev {local.iface}"
        elif local.btype == "vxlan":
            out[p["subnet"]] = f"via {first_host(p['subnet'])} dev {local.vxlan_dev} onlink"
    return out


def reconcile_routes(desired: dict[str, str]) -> None:
    current = {}
    for r in _json(["ip", "-j", "route", "show", "proto", ROUTE_PROTO]):
        current[r["dst"]] = f"via {r.get('gateway')} dev {r.get('dev')}" + (
            " onlink" if "onlink" in r.get("flags", []) else "")
    lines = [f"route replace {dst} proto {ROUTE_PROTO} {hop}" for dst, hop in desired.items()
             if current.get(dst) != hop]
    lines += [f"route del {dst} proto {ROUTE_PROTO}" for dst in sorted(set(current) - set(desired))]
    if lines:
        shell.ip_batch(lines, context="flannel routes")


def reconcile_vxlan_peers(local: Local, peers: list[dict[str, Any]]) -> None:
    """Neighbour (<peer>.0 -> VTEP MAC) and FDB (VTEP MAC -> node IP) per VXLAN peer."""
    dev = local.vxlan_dev
    routes = desired_routes(local, peers)
    vx = [p for p in peers if routes.get(p["subnet"], "").endswith("onlink")]
    want_neigh = {first_host(p["subnet"]): p["BackendData"]["VtepMAC"] for p in vx}
    want_fdb = {p["BackendData"]["VtepMAC"]: p["PublicIP"] for p in vx}
    have_neigh = {n["dst"]: n.get("lladdr") for n in _json(
        ["ip", "-j", "neigh", "show", "dev", dev, "nud", "permanent"])}
    have_fdb = {f["mac"]: f["dst"] for f in _json(["bridge", "-j", "fdb", "show", "dev", dev])
                if "dst" in f}
    ip_lines = [f"neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
                for ip, mac in want_neigh.items() if have_neigh.get(ip) != mac]
    ip_lines += [f"neigh del {ip} dev {dev}" for ip in set(have_neigh) - set(want_neigh)]
    br_lines = [f"fdb replace {mac} dev {dev} dst {ip} self permanent"
                for mac, ip in want_fdb.items() if have_fdb.get(mac) != ip]
    br_lines += [f"fdb del {mac} dev {dev} dst {have_fdb[mac]} self"
                 for mac in set(have_fdb) - set(want_fdb)]
    if ip_lines:
        shell.ip_batch(ip_lines, context=f"neighbours on {dev}")
    if br_lines:
        shell.run(["bridge", "-batch", "-"], input="\n".join(br_lines) + "\n",
                  context=f"fdb on {dev}")


MASQ_CHAIN = "FLANNEL-POSTRTG"
MASQ_JUMP = ["POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", MASQ_CHAIN]


def masq_rules(network: str, subnet: str) -> list[str]:
    """flanneld's rules, as ``iptables -S`` prints them."""
    c, tag = f"-A {MASQ_CHAIN}", '-m comment --comment "flanneld masq"'
    return [f"{c} -s {network} -d {network} {tag} -j RETURN",
            f"{c} -s {network} ! -d 224.0.0.0/4 {tag} -j MASQUERADE --random-fully",
            f"{c} ! -s {network} -d {subnet} {tag} -j RETURN",
            f"{c} ! -s {network} -d {network} {tag} -j MASQUERADE --random-fully"]


def reconcile_masq(local: Local) -> None:
    """Rewrite the chain (one atomic iptables-restore) only when it differs."""
    want = masq_rules(local.config["Network"], local.subnet)
    have = shell.run(["iptables", "-w", "-t", "nat", "-S", MASQ_CHAIN], check=False).stdout
    if [line for line in have.splitlines() if line.startswith("-A ")] != want:
        text = "*nat\n:" + MASQ_CHAIN + " - [0:0]\n" + "\n".join(want) + "\nCOMMIT\n"
        shell.run(["iptables-restore", "-w", "--noflush"], input=text,
                  context=f"flannel masquerade rules ({MASQ_CHAIN})")
    if shell.run(["iptables", "-w", "-t", "nat", "-C", *MASQ_JUMP], check=False).returncode:
        shell.run(["iptables", "-w", "-t", "nat", "-A", *MASQ_JUMP],
                  context=f"jump to {MASQ_CHAIN}")


def reconcile(local: Local, leases: list[dict[str, Any]]) -> list[str]:
    """Program everything for the current leases; return the peer subnets programmed."""
    peers = [p for p in leases if p["subnet"] != local.subnet]
    if local.btype == "vxlan":
        ensure_vxlan(local)
        reconcile_routes(desired_routes(local, peers))
        reconcile_vxlan_peers(local, peers)
    elif local.btype == "host-gw":
        reconcile_routes(desired_routes(local, peers))
    elif local.btype == "udp":
        if not ensure_tun(local):
            return []
        reconcile_routes({})
    return sorted(p["subnet"] for p in peers)
