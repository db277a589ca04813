"""CNM network drivers: what each network type does in the kernel of one node.

- ``bridge``: a Linux bridge in the node (``docker0`` or ``br-<id12>``), a veth per
  endpoint, hairpin on, NAT and isolation from ``rules``.
- ``macvlan``: bridge mode on the node's uplink; containers sit on the underlay. The
  parent cannot reach its own macvlan children (the kernel never hairpins parent <->
  child); ``--aux-address host=IP`` makes a macvlan shim on the node with that IP and a
  route to the network's range through it, the fix Docker's documentation gives.
- ``overlay``: a bridge plus a VXLAN device (VNI from the network, UDP 4789, on the
  uplink) per node; peers (the nodes that joined) come from the cluster store, where
  the network itself lives, as dockerd keeps overlay state in its key-value store.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from knetlab.vxlan import VxlanDevice

if TYPE_CHECKING:
    from knetlab.docker.engine import Endpoint, Engine, Network
    from knetlab.nodes.host import NetnsHost

VXLAN_PORT = 4789
OVERLAY_MTU = 1450


def _configure_inside(sandbox: NetnsHost, ep: Endpoint, net: Network, default: bool) -> None:
    prefix = ipaddress.ip_network(net.subnet).prefixlen
    lines = [f"addr add {ep.ip}/{prefix} dev {ep.ifname}", f"link set {ep.ifname} up"]
    if default and net.gateway:
        lines.append(f"route replace default via {net.gateway} dev {ep.ifname}")
    sandbox.ip_batch(lines, context=f"configure {ep.ifname} of container {ep.container}")


def _veth(engine: Engine, sandbox: NetnsHost, ep: Endpoint, master: str, mtu: int) -> None:
    node = engine.node
    node.ip_batch([f"link add {ep.host_ifname} mtu {mtu} type veth peer name {ep.ifname} "
                   f"mtu {mtu} netns {sandbox.pid}",
                   f"link set {ep.host_ifname} master {master} up",
                   # the container reaches its own published port through the node
                   f"link set dev {ep.host_ifname} type bridge_slave hairpin on"],
                  context=f"wire container {ep.container} to {master}")


class BridgeDriver:
    name = "bridge"

    def create(self, engine: Engine, net: Network) -> None:
        engine.node.ip_batch([f"link add {net.ifname} type bridge stp_state 0 forward_delay 0",
                              f"addr add {net.gateway}/{ipaddress.ip_network(net.subnet).prefixlen}"
                              f" dev {net.ifname}",
                              f"link set {net.ifname} up"],
                             context=f"create bridge {net.ifname} of network {net.name}")

    def delete(self, engine: Engine, net: Network) -> None:
        engine.node.run(["ip", "link", "del", net.ifname], check=False)

    def join(self, engine: Engine, net: Network, sandbox: NetnsHost, ep: Endpoint,
             default: bool) -> None:
        _veth(engine, sandbox, ep, net.ifname, 1500)
        _configure_inside(sandbox, ep, net, default)

    def leave(self, engine: Engine, net: Network, ep: Endpoint) -> None:
        engine.node.run(["ip", "link", "del", ep.host_ifname], check=False)


class MacvlanDriver:
    name = "macvlan"

    def create(self, engine: Engine, net: Network) -> None:
        shim = net.options.get("aux_host")
        if not shim:
            return
        # The shim: the node's own macvlan child, so node <-> containers meet in the
        # macvlan bridge instead of needing the (impossible) parent <-> child path.
        # The parent must not answer ARP for the shim's address (ARP flux): its MAC is the
        # one address a macvlan child can never reach, and TCP to the shim would stall.
        engine.node.run(["sysctl", "-qw", f"net.ipv4.conf.{net.parent}.arp_ignore=1"])
        engine.node.ip_batch([f"link add {net.ifname} link {net.parent} type macvlan mode bridge",
                              f"addr add {shim}/32 dev {net.ifname}",
                              f"link set {net.ifname} up",
                              f"route replace {net.ip_range or net.subnet} dev {net.ifname}"],
                             context=f"create macvlan shim {net.ifname} for {net.name}")

    def delete(self, engine: Engine, net: Network) -> None:
        if net.options.get("aux_host"):
            engine.node.run(["ip", "link", "del", net.ifname], check=False)

    def join(self, engine: Engine, net: Network, sandbox: NetnsHost, ep: Endpoint,
             default: bool) -> None:
        engine.node.ip_batch([f"link add {ep.host_ifname} link {net.parent} type macvlan "
                              "mode bridge",
                              f"link set {ep.host_ifname} netns {sandbox.pid}"],
                             context=f"macvlan for container {ep.container}")
        sandbox.ip_batch([f"link set {ep.host_ifname} name {ep.ifname}"])
        _configure_inside(sandbox, ep, net, default)

    def leave(self, engine: Engine, net: Network, ep: Endpoint) -> None:
        # Delete the child now, as Docker does: left to the namespace's (asynchronous)
        # teardown, a dying container still answers ARP for its address, and a new
        # container given the same IP loses its peers' traffic to the dead MAC.
        c = engine.containers.get(ep.container)
        if c is not None and c.sandbox is not None:
            c.sandbox.run(["ip", "link", "del", ep.ifname], check=False)


class OverlayDriver:
    name = "overlay"

    def create(self, engine: Engine, net: Network) -> None:
        pass  # made lazily on a node when its first container joins (as dockerd does)

    @staticmethod
    def device(engine: Engine, net: Network) -> VxlanDevice:
        """dockerd's overlay: learning on, unknown and broadcast frames flooded to peers."""
        return VxlanDevice(net.vxlan_ifname, net.vni, engine.node.node_ip, engine.node.uplink,
                           VXLAN_PORT, OVERLAY_MTU, learning=True, master=net.ifname)

    def _ensure(self, engine: Engine, net: Network) -> None:
        node = engine.node
        if node.run(["ip", "link", "show", net.ifname], check=False).ok:
            return
        node.ip_batch([f"link add {net.ifname} type bridge stp_state 0 forward_delay 0",
                       f"link set {net.ifname} up"],
                      context=f"create overlay {net.name} on {node.name}")
        self.device(engine, net).ensure(node.netns)

    def sync(self, engine: Engine, net: Network, peers: list[str]) -> None:
        """Flood entries toward every other node that has joined (level-triggered)."""
        vx = self.device(engine, net)
        if vx.exists(engine.node.netns):
            vx.sync_flood(peers, engine.node.netns)

    def delete(self, engine: Engine, net: Network) -> None:
        engine.node.run(["ip", "link", "del", net.vxlan_ifname], check=False)
        engine.node.run(["ip", "link", "del", net.ifname], check=False)

    def join(self, engine: Engine, net: Network, sandbox: NetnsHost, ep: Endpoint,
             default: bool) -> None:
        self._ensure(engine, net)
        _veth(engine, sandbox, ep, net.ifname, OVERLAY_MTU)
        _configure_inside(sandbox, ep, net, default)

    def leave(self, engine: Engine, net: Network, ep: Endpoint) -> None:
        engine.node.run(["ip", "link", "del", ep.host_ifname], check=False)


DRIVERS = {d.name: d for d in (BridgeDriver(), MacvlanDriver(), OverlayDriver())}
