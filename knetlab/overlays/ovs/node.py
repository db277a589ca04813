"""One node's Open vSwitch: the OVS instance in the node's netns, ``br-phy`` and ``br-int``.

As Antrea and OVN-Kubernetes run it, with the userspace datapath (no OVS kernel module):

- ``br-phy`` (netdev, standalone) owns the uplink ``<node>-eth0``; the node IP moves from
  the uplink to br-phy's internal port, so OVS's native tunnelling finds a route and a
  neighbour for the peers (the kernel's routes are re-added on br-phy).
- ``br-int`` (netdev, fail_mode=secure, OpenFlow13) holds ``tun0`` (flow-based vxlan or
  gre: ``remote_ip=flow key=flow``), ``gw0`` (the node's own leg, with the pod gateway
  address) and the pod ports (added by the ``ovs`` CNI plugin). Its controller is the
  os-ken app, reached through a unix socket symlinked into the OVS run dir (OVS accepts
  only socket paths inside it).
- An nft ``netdev`` ingress drop on the uplink: vswitchd reads it with AF_PACKET (before
  the hook), but the kernel must not also handle the frames (it would answer tunnel
  packets with ICMP port unreachable now that the node IP is local on br-phy).
- The same for pod ports, for free: the plugin creates each pod's host veth as a port of
  ``ovs-sink``, a Linux bridge that stays down. vswitchd's AF_PACKET socket sees a frame
  before the bridge's rx handler, which drops every frame of a port of a down bridge, so
  the kernel's IP stack never sees it (an nft chain per pod cost one ``nft`` run, ~3 ms
  of CPU, and a netdev hook registration per pod).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from knetlab import shell
from knetlab.errors import KnetlabError
from knetlab.overlays.cni_agents import CniAgent
from knetlab.overlays.ovs.pipeline import (
    GW_IFACE,
    GW_PORT,
    TUN_IFACE,
    TUN_PORT,
    dpid_for,
    mac_for,
)
from knetlab.ovs import OvsInstance

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir

POD_MTU = 1450  # 1500 minus the tunnel header; 1500 breaks TCP with the userspace datapath
NFT_TABLE = "knetlab_ovs"  # netdev table in the node netns: ingress drops on OVS-owned ports
SINK_BRIDGE = "ovs-sink"  # down Linux bridge: its ports' frames reach vswitchd, not the kernel
SINK_MAC = "02:00:00:00:5e:00"  # fixed: a bridge's MAC would otherwise follow its ports
STATS_MS = 60_000  # vswitchd's refresh of the Interface statistics column (default 5000)


def nft_drop_rules(device: str) -> str:
    """nft script: drop every frame the kernel would see arriving on ``device``."""
    return (f"table netdev {NFT_TABLE} {{}}\n"
            f"add chain netdev {NFT_TABLE} in-{device} {{ type filter hook ingress device "
            f"\"{device}\" priority 0; policy drop; }}\n")


class NodeSwitch:
    """The OVS of one node: start, wire the bridges, move the node IP, stop."""

    def __init__(self, rundir: RunDir, node: K8sNode, tunnel: str, controller_sock: Path,
                 underlay_route: tuple[str, str] | None) -> None:
        self.node, self.tunnel = node, tunnel
        self.ovs = OvsInstance(rundir, node.name, netns=node.netns)
        # the ovs plugin hands it the pod's wiring (knetlab/cni/agent.py)
        self.agent = CniAgent(rundir, node.name, node.netns, "ovs")
        self.controller_sock = controller_sock
        self.underlay_route = underlay_route  # (underlay CIDR, ToR) on leaf-spine
        self.prefix = node.spec.ip.split("/")[1]
        self.start_seconds = 0.0

    @property
    def ctl(self) -> str:
        return str(self.ovs.dir / "ovs-vswitchd.ctl")

    @property
    def db(self) -> str:
        return f"unix:{self.ovs.dir / 'db.sock'}"

    def start(self) -> None:
        # No IPv6 on what is created in the node from now on (br-phy, gw0, pod ports): the
        # lab is IPv4, and each IPv6 link-local route a new pod port brings makes vswitchd
        # re-read the node's whole routing table (measured: 63 -> 25 ms of vswitchd CPU per
        # pod port added and removed, with 25 ports). Pods keep their own IPv6.
        self.node.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        res = self.node.run(["ip", "link", "add", SINK_BRIDGE, "address", SINK_MAC, "type",
                             "bridge"], check=False)
        if not res.ok and "File exists" not in res.stderr:  # a restarted switch has it
            raise KnetlabError(f"cannot create {SINK_BRIDGE} in {self.node.name}: "
                               f"{res.stderr.strip()}")
        t = time.monotonic()
        self.ovs.start()
        self.start_seconds = time.monotonic() - t
        link = self.ovs.dir / "controller.sock"
        link.unlink(missing_ok=True)
        link.symlink_to(self.controller_sock)
        self._bridges(self.uplink_mac(), link)
        self._wait_links(["br-phy", GW_IFACE])
        self._addresses()
        self.node.run(["nft", "-f", "-"], input=nft_drop_rules(self.node.uplink),
                      context=f"nft ingress drop on {self.node.uplink} in {self.node.name}")
        if not self.agent.alive():
            self.agent.start(wait=False)

    def uplink_mac(self) -> str:
        out = self.node.run(["ip", "-j", "link", "show", "dev", self.node.uplink]).stdout
        return json.loads(out)[0]["address"]

    def _bridges(self, mac: str, controller: Path) -> None:
        node = self.node
        self.ovs.vsctl(
            # Every stats-update-interval vswitchd reads every port's counters from the
            # kernel and writes them all to OVSDB (5 s by default: work that grows with the
            # pods on the node); nothing here reads that column (``ovs-ofctl dump-ports``
            # asks the datapath itself).
            "set", "Open_vSwitch", ".", f"other_config:stats-update-interval={STATS_MS}",
            "--", "--may-exist", "add-br", "br-phy", "--", "set", "bridge", "br-phy",
            "datapath_type=netdev", f"other-config:hwaddr={mac}",
            "--", "--may-exist", "add-port", "br-phy", node.uplink,
            "--", "--may-exist", "add-br", "br-int", "--", "set", "bridge", "br-int",
            "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13",
            f"other-config:datapath-id={dpid_for(node.name):016x}",
            "--", "--may-exist", "add-port", "br-int", TUN_IFACE, "--", "set", "interface",
            TUN_IFACE, f"type={self.tunnel}", f"ofport_request={TUN_PORT}",
            "options:remote_ip=flow", "options:key=flow", f"options:local_ip={node.node_ip}",
            "--", "--may-exist", "add-port", "br-int", GW_IFACE, "--", "set", "interface",
            GW_IFACE, "type=internal", f"ofport_request={GW_PORT}",
            f"mac=\"{mac_for(node.spec.pod_gateway)}\"",
            "--", "set-controller", "br-int", f"unix:{controller}")

    def _wait_links(self, names: list[str], timeout: float = 10.0) -> None:
        """vswitchd creates the internal ports' tap devices asynchronously."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.node.run(["ip", "-j", "link", "show"]).stdout
            have = {link["ifname"] for link in json.loads(out or "[]")}
            if set(names) <= have:
                return
            time.sleep(0.02)
        raise KnetlabError(f"ovs-vswitchd on {self.node.name} did not create {names} within "
                           f"{timeout}s; log tail:\n{self.ovs.vswitchd.log_tail()}")

    def _addresses(self) -> None:
        node, ip = self.node, self.node.spec.ip
        gw_len = node.spec.pod_cidr.split("/")[1]
        lines = [f"addr del {ip} dev {node.uplink}",
                 f"addr add {ip} dev br-phy",
                 "link set br-phy up",
                 f"link set {GW_IFACE} mtu {POD_MTU} up",
                 f"addr add {node.spec.pod_gateway}/{gw_len} dev {GW_IFACE}"]
        if self.underlay_route:  # deleting the address took the route to the fabric along
            cidr, tor = self.underlay_route
            lines.append(f"route replace {cidr} via {tor} dev br-phy")
        node.ip_batch(lines, context=f"move {ip} of {node.name} to br-phy")

    def seed_neighbours(self, peers: dict[str, str]) -> None:
        """Tell OVS's tunnel neighbour cache the MAC of each next hop: no first-packet loss."""
        for ip, mac in peers.items():
            shell.run(["ovs-appctl", "-t", self.ctl, "tnl/neigh/set", "br-phy", ip, mac],
                      netns=self.node.netns, check=False)

    def ofctl(self, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow13 ARGS`` against this node's br-int (or what args name)."""
        mgmt = f"unix:{self.ovs.dir / 'br-int.mgmt'}"
        argv = ["ovs-ofctl", "-O", "OpenFlow13", args[0], mgmt, *args[1:]]
        return shell.run(argv, netns=self.node.netns, context=f"ovs-ofctl on {self.node.name}",
                         ).stdout

    def stop(self) -> None:
        self.agent.stop()
        self.ovs.stop()
