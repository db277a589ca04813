"""The OpenFlow pipeline of every node's ``br-int``: tables by name, and the whole flow set.

Antrea-style: tables are declared once, in order, with a name and a purpose; one small
function per kind of flow; ``desired_flows`` is a pure function of the cluster membership
(nodes and pods) that the controller reconciles every switch to. No OpenFlow library is
imported here, so the pipeline is testable (and readable) on its own.

Packet walk::

    Classifier ──arp──> ArpResponder   (answer for local pods and every pod gateway)
        │ip / tunnel with our VNI
        v
    L3Forwarding ──local pod / gateway──> LocalOutput (eth_dst -> port)
        │remote node's pod subnet: tun_ipv4_dst = peer node, tunnel_id = VNI
        v
    TunnelOutput ──> tun0 (vxlan or gre, remote_ip=flow key=flow)

Cookies: the top byte is the table, the rest a hash of the flow's content. A flow whose
content changes gets a new cookie, so "diff by cookie" (add missing, delete extra) is
exactly "make the switch hold the desired set"; a resync never duplicates a flow.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

TUN_PORT = 1  # ofport_request of the flow-based tunnel port
GW_PORT = 2  # ofport_request of gw0, the node's own leg into br-int
POD_PORT_BASE = 100  # pod port = base + the pod address's offset in the node's subnet
TUN_IFACE, GW_IFACE = "tun0", "gw0"

ETH_IP, ETH_ARP = 0x0800, 0x0806


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    purpose: str


CLASSIFIER = Table(0, "Classifier", "split ARP from IP; accept tunnel traffic of our VNI only")
ARP_RESPONDER = Table(10, "ArpResponder", "answer ARP for local pods and pod gateways")
L3_FORWARDING = Table(20, "L3Forwarding", "local pod or gateway -> LocalOutput; "
                                          "remote pod subnet -> tunnel to its node")
TUNNEL_OUTPUT = Table(30, "TunnelOutput", "send into the flow-based tunnel port")
LOCAL_OUTPUT = Table(40, "LocalOutput", "deliver by destination MAC to a pod port or gw0")
TABLES = [CLASSIFIER, ARP_RESPONDER, L3_FORWARDING, TUNNEL_OUTPUT, LOCAL_OUTPUT]
TABLE_BY_ID = {t.id: t for t in TABLES}


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    pod_cidr: str
    gateway: str
    dpid: int


@dataclass(frozen=True)
class PodInfo:
    name: str
    node: str
    ip: str


@dataclass(frozen=True)
class Flow:
    table: Table
    priority: int
    match: tuple[tuple[str, Any], ...]
    #: ("set", field, value) | ("move", src, dst, bits) | ("output", port|"in_port")
    #: | ("goto", Table); empty means drop
    actions: tuple[tuple[Any, ...], ...] = ()
    comment: str = field(default="", compare=False)

    @functools.cached_property
    def cookie(self) -> int:
        digest = hashlib.sha1(repr((self.table.id, self.priority, self.match,
                                    self.actions)).encode()).digest()
        return (self.table.id << 56) | int.from_bytes(digest[:7], "big")


def mac_for(ip: str) -> str:
    """The MAC knetlab derives from an IPv4 address (0a:58 + address), as kubenet did."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def pod_port(ip: str, pod_cidr: str) -> int:
    net = ipaddress.IPv4Network(pod_cidr)
    return POD_PORT_BASE + int(ipaddress.IPv4Address(ip)) - int(net.network_address)


def dpid_for(name: str) -> int:
    """A stable 48-bit datapath id per node (br-int's other-config:datapath-id)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:6], "big") or 1


def _f(table: Table, prio: int, match: dict[str, Any], actions: list[tuple[Any, ...]],
       comment: str) -> Flow:
    return Flow(table, prio, tuple(sorted(match.items())), tuple(actions), comment)


# -- one function per kind of flow -------------------------------------------------

def classifier_flows(vni: int) -> list[Flow]:
    return [
        _f(CLASSIFIER, 200, {"in_port": TUN_PORT, "tunnel_id": vni, "eth_type": ETH_IP},
           [("goto", L3_FORWARDING)], f"tunnel traffic of VNI {vni}"),
        _f(CLASSIFIER, 190, {"in_port": TUN_PORT}, [], "other tunnel traffic: drop"),
        _f(CLASSIFIER, 100, {"eth_type": ETH_ARP}, [("goto", ARP_RESPONDER)], "ARP"),
        _f(CLASSIFIER, 100, {"eth_type": ETH_IP}, [("goto", L3_FORWARDING)], "IPv4"),
    ]


def arp_reply_flow(ip: str, mac: str, who: str) -> Flow:
    """Turn the request into the reply in place and send it back where it came from."""
    return _f(ARP_RESPONDER, 100, {"eth_type": ETH_ARP, "arp_op": 1, "arp_tpa": ip}, [
        ("move", "eth_src", "eth_dst", 48),
        ("set", "eth_src", mac),
        ("set", "arp_op", 2),
        ("move", "arp_sha", "arp_tha", 48),
        ("move", "arp_spa", "arp_tpa", 32),
        ("set", "arp_sha", mac),
        ("set", "arp_spa", ip),
        ("output", "in_port"),
    ], f"ARP {ip} is-at {mac} ({who})")


@functools.lru_cache(maxsize=4096)  # the same Flow objects (and cookies) on every sync
def local_pod_flows(pod: PodInfo, node: NodeInfo) -> tuple[Flow, ...]:
    mac, port = mac_for(pod.ip), pod_port(pod.ip, node.pod_cidr)
    return (
        arp_reply_flow(pod.ip, mac, f"pod {pod.name}"),
        _f(L3_FORWARDING, 200, {"eth_type": ETH_IP, "ipv4_dst": pod.ip},
           [("set", "eth_src", mac_for(node.gateway)), ("set", "eth_dst", mac),
            ("goto", LOCAL_OUTPUT)], f"to local pod {pod.name}"),
        _f(LOCAL_OUTPUT, 100, {"eth_dst": mac}, [("output", port)], f"pod {pod.name}"),
    )


def gateway_flows(node: NodeInfo) -> list[Flow]:
    mac = mac_for(node.gateway)
    return [
        _f(L3_FORWARDING, 200, {"eth_type": ETH_IP, "ipv4_dst": node.gateway},
           [("set", "eth_dst", mac), ("goto", LOCAL_OUTPUT)], f"to {node.name}'s gw0"),
        _f(L3_FORWARDING, 100, {"eth_type": ETH_IP, "ipv4_dst": _net(node.pod_cidr)}, [],
           "unknown address of the local pod subnet: drop"),
        _f(L3_FORWARDING, 10, {"eth_type": ETH_IP}, [("set", "eth_dst", mac),
                                                     ("goto", LOCAL_OUTPUT)],
           "anything else leaves through the node (gw0)"),
        _f(LOCAL_OUTPUT, 100, {"eth_dst": mac}, [("output", GW_PORT)], "gw0"),
    ]


def remote_node_flow(peer: NodeInfo, vni: int) -> Flow:
    return _f(L3_FORWARDING, 100, {"eth_type": ETH_IP, "ipv4_dst": _net(peer.pod_cidr)},
              [("set", "tun_ipv4_dst", peer.ip), ("set", "tunnel_id", vni),
               ("goto", TUNNEL_OUTPUT)], f"pods of {peer.name} via tunnel to {peer.ip}")


def tunnel_output_flows() -> list[Flow]:
    return [_f(TUNNEL_OUTPUT, 0, {}, [("output", TUN_PORT)], "into tun0")]


def _net(cidr: str) -> tuple[str, str]:
    net = ipaddress.IPv4Network(cidr)
    return (str(net.network_address), str(net.netmask))


def desired_flows(me: NodeInfo, nodes: list[NodeInfo], pods: list[PodInfo],
                  vni: int) -> list[Flow]:
    """Every flow ``me``'s br-int must hold, given the whole membership."""
    flows = classifier_flows(vni) + gateway_flows(me) + tunnel_output_flows()
    for node in nodes:
        flows.append(arp_reply_flow(node.gateway, mac_for(node.gateway),
                                    f"gateway of {node.name}"))
        if node.name != me.name:
            flows.append(remote_node_flow(node, vni))
    for pod in pods:
        if pod.node == me.name:
            flows += local_pod_flows(pod, me)
    return flows
