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
from knetlab.routes import reconcile_routes
from knetlab.vxlan import VxlanDevice

log = logging.getLogger("flannel.kernel")


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

def vxlan_device(local: Local) -> VxlanDevice:
    be = local.config["Backend"]
    return VxlanDevice(local.vxlan_dev, be["VNI"], local.ip, local.iface, be["Port"],
                       local.underlay_mtu - 50, mac=vtep_mac(local.ip),
                       address=f"{first_host(local.subnet)}/32")


def ensure_tun(local: Local) -> bool:
    """Address flannel0 (made by the forwarder); False while it does not exist yet."""
    if not _json(["ip", "-j", "link", "show", "dev", "flannel0"]):
        return False
    plen = local.config["Network"].split("/")[1]
    _link_addr("flannel0", local.underlay_mtu - 28, f"{first_host(local.subnet)}/{plen}")
    return True


def _link_addr(dev: str, mtu: int, addr: str) -> None:
    link = _json(["ip", "-j", "addr", "show", "dev", dev])[0]
    lines = []
    if link.get("mtu") != mtu or "UP" not in link.get("flags", []):
        lines.append(f"link set {dev} mtu {mtu} up")
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
                          "no route", p["subnet"], ip, local.public_ip)
                continue
            out[p["subnet"]] = f"via {ip} dev {local.iface}"
        elif local.btype == "vxlan":
            out[p["subnet"]] = f"via {first_host(p['subnet'])} dev {local.vxlan_dev} onlink"
    return out


def reconcile_vxlan_peers(local: Local, peers: list[dict[str, Any]]) -> None:
    """Neighbour (<peer>.0 -> VTEP MAC) and FDB (VTEP MAC -> node IP) per VXLAN peer."""
    routes = desired_routes(local, peers)
    vx = [p for p in peers if routes.get(p["subnet"], "").endswith("onlink")]
    vxlan_device(local).sync_unicast(
        {first_host(p["subnet"]): (p["BackendData"]["VtepMAC"], p["PublicIP"]) for p in vx})


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
        vxlan_device(local).ensure()
        reconcile_vxlan_peers(local, peers)
        reconcile_routes(None, desired_routes(local, peers))
    elif local.btype == "host-gw":
        reconcile_routes(None, desired_routes(local, peers))
    elif local.btype == "udp":
        if not ensure_tun(local):
            return []
        reconcile_routes(None, {})
    return sorted(p["subnet"] for p in peers)
