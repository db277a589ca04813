"""The underlay: switches, routers and node uplinks, built into Mininet.

``segment``: every node on one L2 switch (plus a VPC-style router when the data plane
programs a fabric). ``leaf-spine``: one switch and ToR router per rack (its own /24), each
ToR linked to every spine by a /30, ECMP routes between racks.

Switches live in the root namespace, so their names carry the lab's tag (``kl1a2bs1``),
as do their ports (``kl1a2bs1-eth3``); routers and nodes are namespaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mininet.node import OVSSwitch, Switch

from knetlab import shell
from knetlab.nodes.host import NetnsHost, Router

if TYPE_CHECKING:
    from mininet.net import Mininet

    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir
    from knetlab.topologies.schema import ClusterSpec

FABRIC_LINKS_PER_24 = 64  # /30 links in the last /24 of the underlay CIDR


class KernelBridge(Switch):
    """A Linux bridge in the root namespace, made with ``ip`` (no bridge-utils)."""

    def start(self, controllers: list[Any]) -> None:
        shell.run(["ip", "link", "add", self.name, "type", "bridge", "stp_state", "0",
                   "forward_delay", "0"])
        # Bridged underlay frames must not meet the host's own iptables (br_netfilter).
        shell.run(["ip", "link", "set", self.name, "type", "bridge", "nf_call_iptables", "0",
                   "nf_call_ip6tables", "0", "nf_call_arptables", "0"], check=False)
        shell.run(["ip", "link", "set", self.name, "up"])
        for intf in self.intfList():
            if intf.name != "lo":
                self.attach(intf)

    def attach(self, intf: Any) -> None:
        shell.run(["ip", "link", "set", str(intf), "master", self.name, "up"])

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 - Mininet's name
        shell.run(["ip", "link", "del", self.name], check=False)
        super().stop(deleteIntfs)


class Underlay:
    def __init__(self, spec: ClusterSpec, net: Mininet, rundir: RunDir,
                 with_segment_router: bool) -> None:
        self.spec, self.net, self.rundir = spec, net, rundir
        self.u = spec.underlay
        self.switches: dict[int, Any] = {}
        self.tors: dict[int, Router] = {}
        self.spines: list[Router] = []
        self.with_segment_router = with_segment_router
        self.spine_links: dict[tuple[int, int], tuple[str, str]] = {}  # (rack, k) -> tor, spine

    # -- build -----------------------------------------------------------------
    def build(self) -> None:
        racks = range(1, self.u.racks + 1)
        for r in racks:
            self.switches[r] = self._switch(r)
        if self.u.type == "segment":
            if self.with_segment_router:
                self.tors[1] = self._router("vpc-router", 1)
            return
        for r in racks:
            self.tors[r] = self._router(f"tor-{r}", r)
        self.spines = [self._host(f"spine-{k}") for k in range(1, self.u.spines + 1)]
        fabric = list(self.u.cidr.subnets(new_prefix=24))[-1]
        links = list(fabric.subnets(new_prefix=30))
        for r in racks:
            for k, spine in enumerate(self.spines, start=1):
                net30 = links[(r - 1) * self.u.spines + (k - 1)]
                tor_ip, spine_ip = (str(h) for h in list(net30.hosts())[:2])
                link = self.net.addLink(self.tors[r], spine)
                link.intf1.setIP(f"{tor_ip}/30")
                link.intf2.setIP(f"{spine_ip}/30")
                self.spine_links[(r, k)] = (tor_ip, spine_ip)
        self._fabric_routes()

    def _switch(self, rack: int) -> Any:
        name = f"{self.rundir.tag}s{rack}"
        if self.spec.switch == "ovs":
            sw = self.net.addSwitch(name, cls=OVSSwitch, datapath="user", failMode="standalone",
                                    dpid=f"{rack:016x}")
        else:
            sw = self.net.addSwitch(name, cls=KernelBridge, dpid=f"{rack:016x}")
        self.rundir.record_process(sw.pid, f"mininet:{name}", name)
        sw.start([])
        return sw

    def _host(self, name: str) -> Router:
        return self.net.addHost(name, cls=Router, rundir=self.rundir, ip=None)

    def _router(self, name: str, rack: int) -> Router:
        router = self._host(name)
        link = self.net.addLink(router, self.switches[rack])
        self.switches[rack].attach(link.intf2)
        gw = self.u.gateway(rack)
        link.intf1.setIP(f"{gw}/{self.u.rack_subnet(rack).prefixlen}")
        self._software_checksums(router, link.intf1.name)
        return router

    def _software_checksums(self, host: NetnsHost, intf: str) -> None:
        """OVS's userspace datapath reads frames with AF_PACKET and does not finish partial
        checksums; a sender whose NIC 'offloads' them would stall TCP. Compute them first."""
        if self.spec.switch == "ovs":
            host.run(["ethtool", "-K", intf, "tx", "off"])

    def _fabric_routes(self) -> None:
        """Rack subnets: spines via the ToR; ToRs via every spine (ECMP)."""
        for r, tor in self.tors.items():
            subnet = self.u.rack_subnet(r)
            for k, spine in enumerate(self.spines, start=1):
                spine.ip_batch([f"route replace {subnet} via {self.spine_links[(r, k)][0]}"])
            others = [f"route replace {self.u.rack_subnet(o)} {self._spine_hops(r)}"
                      for o in self.tors if o != r]
            if others:
                tor.ip_batch(others)

    def _spine_hops(self, rack: int) -> str:
        """ECMP next hops from the ToR of ``rack`` to every spine."""
        return " ".join(f"nexthop via {self.spine_links[(rack, k)][1]}"
                        for k in range(1, len(self.spines) + 1))

    # -- nodes -----------------------------------------------------------------
    def attach_node(self, node: K8sNode) -> None:
        sw = self.switches[node.spec.rack]
        link = self.net.addLink(node, sw, intfName1=node.uplink)
        sw.attach(link.intf2)
        lines = [f"addr add {node.spec.ip} dev {node.uplink}", f"link set {node.uplink} up"]
        if self.u.type == "leaf-spine":
            lines.append(f"route replace {self.u.cidr} via {self.u.gateway(node.spec.rack)}")
        node.ip_batch(lines, context=f"configure uplink of {node.name}")
        self._software_checksums(node, node.uplink)

    def detach_node(self, node: K8sNode) -> None:
        for link in [lk for lk in self.net.links if node in (lk.intf1.node, lk.intf2.node)]:
            link.delete()
            self.net.links.remove(link)

    def routers(self) -> list[Router]:
        return [*self.tors.values(), *self.spines]

    def fabric_routes(self, node: K8sNode) -> dict[Router, str]:
        """For every router, the next hop(s) that lead to ``node``."""
        rack = node.spec.rack
        out: dict[Router, str] = {}
        for r, tor in self.tors.items():
            out[tor] = f"via {node.node_ip}" if r == rack else self._spine_hops(r)
        for k, spine in enumerate(self.spines, start=1):
            out[spine] = f"via {self.spine_links[(rack, k)][0]}"
        return out

    def gateway_for(self, node: K8sNode) -> str | None:
        """The router a node sends fabric-routed traffic to, if there is one."""
        if node.spec.rack in self.tors:
            return str(self.u.gateway(node.spec.rack))
        return None

    def is_l2_adjacent(self) -> bool:
        return self.u.type == "segment"
