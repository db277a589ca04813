"""Outside clients: hosts on the underlay that are not part of the cluster.

A NodePort or a LoadBalancer address is meant to be tried from where users try it: a
machine outside the cluster, with no kubelet, no pod route and no kube-proxy. The
topology adds them with ``clients:``::

    clients: {count: 2}                        # client-1, client-2 (rack 1 on leaf-spine)
    clients: [laptop, {name: probe, rack: 2}]  # names, and a rack on leaf-spine

Each is a Mininet host (``knetlab exec client-1 -- curl ...``, ``client-1 ping ...`` in the
CLI) linked to its rack's switch. Addresses come from the top of the rack's subnet,
below the route reflectors' (``broadcast - 9 - k``): they never meet the node addresses,
which grow from the bottom (``.11``, ``.12``, ...).

Routes of a client, as a machine on that network would have them:
- leaf-spine: a default route via its rack's ToR (the router that learns LoadBalancer
  addresses over BGP on calico-bgp);
- segment: the segment itself, a default route via the VPC router when the data plane
  has one, and ``loadBalancerCIDR`` on-link: LoadBalancer addresses are announced on the
  segment (MetalLB's layer-2 mode: the announcing node answers ARP for them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knetlab.nodes.host import NetnsHost
from knetlab.topologies.fields import NODE_NAME_MAX, Fields

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.topologies.schema import ClusterSpec

MAX_CLIENTS = 16  # per rack: the top addresses of its subnet, under the reflectors'
TOP_RESERVED = 9  # broadcast-1 .. -8: route reflectors (calico rr); clients start below


@dataclass
class ClientSpec:
    name: str
    rack: int = 1
    ip: str = ""  # with prefix length, as NodeSpec.ip
    gateway: str = ""  # its default router ("" on a segment without one)


class Client(NetnsHost):
    """A machine outside the cluster on the underlay: no kubelet, no pods, no proxy."""

    def __init__(self, name: str, rundir: Any, spec: ClientSpec, **params: Any) -> None:
        super().__init__(name, rundir, **params)
        self.spec = spec

    @property
    def client_ip(self) -> str:
        return self.spec.ip.split("/")[0]

    @property
    def uplink(self) -> str:
        return f"{self.name}-eth0"


def parse_clients(spec: ClusterSpec, top: Fields) -> None:
    """``clients:`` (a list of names or ``{name, rack}``, or ``{count: N}``) into
    ``spec.clients``, with addresses. Names must not meet a node's or a pod's."""
    raw = top.raw("clients")
    if raw is None:
        return
    racks = spec.underlay.racks
    taken = {n.name for n in spec.nodes} | {p.name for p in spec.pods}
    clients: list[ClientSpec] = []
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            where = top.where("clients") or 0
            f = Fields({"name": item} if isinstance(item, str) else item, spec.file,
                       f"clients[{i}]", getattr(item, "line", where) or where)
            f.only(["name", "rack"])
            name = f.name("name", max_len=NODE_NAME_MAX, host=True)
            if name in taken:
                raise f.error("name", f"name {name!r} is already used by a node, pod or "
                              "client", "give each client its own name")
            taken.add(name)
            clients.append(ClientSpec(name, f.int("rack", 1, lo=1, hi=racks)))
    else:
        f = top.sub("clients")
        f.only(["count", "rack"])
        rack = f.int("rack", 1, lo=1, hi=racks)
        for k in range(1, f.int("count", 1, lo=0, hi=MAX_CLIENTS) + 1):
            name = f"client-{k}"
            if name in taken:
                raise f.error("count", f"name {name!r} is already used by a node or pod",
                              "rename that node or pod, or list the clients by name")
            clients.append(ClientSpec(name, rack))
    for rack in range(1, racks + 1):
        in_rack = [c for c in clients if c.rack == rack]
        if len(in_rack) > MAX_CLIENTS:
            raise top.error("clients", f"{len(in_rack)} clients in rack {rack}",
                            f"use at most {MAX_CLIENTS} per rack")
        subnet = spec.underlay.rack_subnet(rack)
        for k, c in enumerate(in_rack, start=1):
            c.ip = f"{subnet.broadcast_address - TOP_RESERVED - k}/{subnet.prefixlen}"
            if spec.underlay.type == "leaf-spine":
                c.gateway = str(spec.underlay.gateway(rack))
    nodes = {ipaddress.ip_interface(n.ip).ip for n in spec.nodes}
    for c in clients:
        if ipaddress.ip_interface(c.ip).ip in nodes:
            raise top.error("clients", f"client {c.name} would take {c.ip}, a node's address",
                            "use fewer nodes in that rack or a larger underlay.cidr")
    spec.clients = clients


def build_clients(cluster: Cluster) -> dict[str, Client]:
    """Make every client host, link it to its rack's switch, address and route it."""
    out: dict[str, Client] = {}
    for cs in cluster.spec.clients:
        out[cs.name] = build_client(cluster, cs)
    return out


def build_client(cluster: Cluster, cs: ClientSpec) -> Client:
    net, underlay, spec = cluster.net, cluster.underlay, cluster.spec
    assert net is not None and underlay is not None
    host = net.addHost(cs.name, cls=Client, rundir=cluster.rundir, spec=cs, ip=None)
    switch = underlay.switches[cs.rack]
    link = net.addLink(host, switch, intfName1=host.uplink)
    switch.attach(link.intf2)
    gateway = cs.gateway
    if not gateway and underlay.with_segment_router:  # a VPC router on the segment
        gateway = str(spec.underlay.gateway(1))
        cs.gateway = gateway
    lines = [f"addr add {cs.ip} dev {host.uplink}", f"link set {host.uplink} up",
             "link set lo up"]
    if gateway:
        lines.append(f"route replace default via {gateway}")
    lb = getattr(spec, "load_balancer_cidr", None)
    if lb is not None and spec.underlay.type == "segment":
        # Layer-2 announcement: the LoadBalancer range is on this segment (ARP finds the
        # node that announces an address), as with MetalLB's L2 mode.
        lines.append(f"route replace {lb} dev {host.uplink}")
    host.ip_batch(lines, context=f"configure outside client {cs.name}")
    # Full checksums in software: a frame may meet an OVS userspace datapath (an OVS
    # underlay switch, or br-phy on an OVS plane's node), which reads it with AF_PACKET
    # and never completes a partial checksum (TCP would stall). A client is no benchmark.
    host.run(["ethtool", "-K", host.uplink, "tx", "off"])
    return host


def describe_clients(clients: dict[str, Client]) -> list[dict[str, Any]]:
    """What ``knetlab status`` shows of each client."""
    return [{"name": c.name, "ip": c.spec.ip, "rack": c.spec.rack,
             "gateway": c.spec.gateway or None} for c in clients.values()]
