"""The planes the comparison covers and the one layout every plane is measured on.

Layout: two nodes on one L2 segment (192.168.0.0/24, Linux bridge underlay), one pod per
node, ``kubernetes: false`` (the data plane alone: no API server, controllers or kubelets
burning CPU during the measurements). ``vpc-routes`` puts its VPC router on that segment
(its pod routes live on the router, as on a cloud fabric), so no plane needs a leaf-spine.
The measured pair is pod-1-0 (client) -> pod-2-0 (server); for the host baseline it is
node-1 -> node-2's node IP over the same underlay, with no pod network; for docker-vxlan it
is two containers on a Docker overlay network (a host-gw lab with no pods, the containers'
VXLAN device made by knetlab's Docker engine, knetlab/docker/drivers.py).

A plane that cannot run here is still a row: ``unavailable()`` says why (not built in this
tree, the kernel lacks a feature, not done).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.cluster import Cluster
from knetlab.dataplane import backends
from knetlab.errors import KnetlabError
from knetlab.topologies.schema import load_topology

TOPOLOGY = """name: {name}
podCIDR: {pod_cidr}
dataplane: {dataplane}
{settings}kubernetes: false
switch: linuxbridge
underlay: {{type: segment, cidr: {underlay}}}
nodes: {{count: 2}}
pods: {{perNode: {pods}}}
"""


PMD_SLEEP_US = 1000


@dataclass(frozen=True)
class Plane:
    key: str                 # the row's name in the report
    dataplane: str           # the Backend that builds it
    what: str                # one line: the mechanism
    settings: str = ""       # topology lines for the plane's own section
    vxlan: bool = False      # kernel VXLAN: also measured with segmentation offloads off
    pair: str = "pods"       # pods | host | docker
    pod_cidr: str = "10.244.0.0/16"
    underlay: str = "192.168.0.0/24"
    not_done: str = ""       # a plane this version does not measure, and why
    port_type: str = ""      # OVS planes: retype the afpacket ports (uplink, pod veths)


PLANES = [
    Plane("host", "host-gw", "node to node over the underlay, no pod network (baseline)",
          pair="host", vxlan=True),
    Plane("host-gw", "host-gw", "flannel host-gw: kernel routes via the peer node"),
    Plane("vpc-routes", "vpc-routes", "routes per node subnet on the VPC router (2 hops)"),
    Plane("calico-bgp", "calico-bgp", "BGP-learned /26 routes, /32 pod routes, no encap"),
    Plane("calico-ipip", "calico-ipip", "IP-in-IP tunnel (kernel ipip device)"),
    Plane("calico-vxlan", "calico-vxlan", "kernel VXLAN (vxlan.calico)", vxlan=True),
    Plane("flannel-vxlan", "flannel-vxlan", "kernel VXLAN (flannel.1)", vxlan=True),
    Plane("docker-vxlan", "host-gw", "Docker overlay network: bridge + kernel VXLAN",
          vxlan=True, pair="docker"),
    Plane("flannel-udp", "flannel-udp", "TUN + userspace UDP forwarder (Python)"),
    Plane("ovs-vxlan", "ovs-vxlan", "Open vSwitch userspace datapath, VXLAN"),
    Plane("ovs-gre", "ovs-gre", "Open vSwitch userspace datapath, GRE"),
    Plane("ovs-vxlan-afxdp", "ovs-vxlan", "as ovs-vxlan, every afpacket port turned "
          "into an AF_XDP port (type=afxdp)", port_type="afxdp"),
    Plane("weave-sleeve", "weave", "weave router: Ethernet frames in UDP (userspace)",
          settings="weave: {mtu: 1376}\n", pod_cidr="10.32.0.0/12"),
    Plane("weave-encrypted", "weave", "weave sleeve, NaCl secretbox per datagram",
          settings="weave: {mtu: 1376, password: cmp-lab-secret}\n",
          pod_cidr="10.32.0.0/12"),
    Plane("macvlan", "macvlan", "pods on the underlay itself (macvlan bridge mode)",
          settings="macvlan: {sliceLen: 24}\n", underlay="192.168.0.0/16"),
]
BY_KEY = {p.key: p for p in PLANES}
QUICK = ["host", "host-gw"]


def unavailable(plane: Plane) -> str:
    """Why the plane cannot be measured in this tree on this kernel ('' if it can)."""
    if plane.not_done:
        return plane.not_done
    if plane.dataplane not in backends():
        return f"not built: no data plane {plane.dataplane!r} in knetlab.dataplane.backends()"
    return ""


@dataclass
class Pair:
    """The two ends the measurements run between, and every namespace on the path."""
    client: Any              # a NetnsHost: .netns, .name
    server: Any
    server_ip: str
    namespaces: list[str]    # nodes and pods/containers (for ethtool)


def topology(plane: Plane, name: str, workdir: Path) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(
        name=name, pod_cidr=plane.pod_cidr, dataplane=plane.dataplane,
        settings=plane.settings, underlay=plane.underlay,
        pods=0 if plane.pair != "pods" else 1))
    return path


def retype_ovs_ports(c: Cluster, port_type: str) -> int:
    """Turn every OVS port that reads a kernel device through AF_PACKET (the node's uplink
    on br-phy, the pod veths on br-int) into ``port_type`` (``afxdp``: an AF_XDP socket
    with an XDP program on the veth). Ports keep their ofport (``ofport_request``), so the
    controller's flows still apply. Returns how many ports changed."""
    changed = 0
    for sw in getattr(c.backend, "switches", {}).values():
        # AF_XDP ports are polled by PMD threads, which busy-spin by default: a core each.
        # Let them sleep when idle (OVS 3.1 spells it pmd-maxsleep, later pmd-sleep-max).
        sw.ovs.vsctl("set", "Open_vSwitch", ".", f"other_config:pmd-maxsleep={PMD_SLEEP_US}",
                     f"other_config:pmd-sleep-max={PMD_SLEEP_US}")
        for bridge in ("br-phy", "br-int"):
            for port in sw.ovs.vsctl("list-ports", bridge).split():
                if sw.ovs.vsctl("get", "Interface", port, "type").strip() in ('""', "system"):
                    sw.ovs.vsctl("set", "Interface", port, f"type={port_type}")
                    changed += 1
        errors = sw.ovs.vsctl("--columns=name,error", "--format=csv", "list", "Interface")
        if port_type and any(line.split(",", 1)[1] not in ("[]", "error")
                             for line in errors.splitlines()[1:]):
            raise KnetlabError(f"OVS ports of type {port_type} failed: {errors}")
    return changed


def _container_ip(c: Cluster, name: str) -> str:
    out = c.host(name).run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()
    return out[3].split("/")[0]


@contextlib.contextmanager
def lab(plane: Plane, name: str, workdir: Path) -> Iterator[Pair]:
    """Bring the plane up on the two-node layout, yield its pair, tear it down.

    The topology is validated (kernel features included) before anything is built, so a
    plane the kernel cannot carry raises a ConfigError naming the missing feature."""
    spec = load_topology(topology(plane, name, workdir))
    with Cluster(spec) as c:
        n1, n2 = c.node("node-1"), c.node("node-2")
        nodes = [n1.netns, n2.netns]
        if plane.pair == "host":
            yield Pair(n1, n2, n2.node_ip, nodes)
        elif plane.pair == "docker":
            c.docker("node-1", ["network", "create", "-d", "overlay", "cmpov"])
            for node, ctr in (("node-1", f"{name}-c1"), ("node-2", f"{name}-c2")):
                c.docker(node, ["run", "-d", "--name", ctr, "--network", "cmpov", "img",
                                "sleep", "infinity"])
            a, b = c.host(f"{name}-c1"), c.host(f"{name}-c2")
            yield Pair(a, b, _container_ip(c, b.name), [*nodes, a.netns, b.netns])
        else:
            if plane.port_type and not retype_ovs_ports(c, plane.port_type):
                raise KnetlabError(f"no OVS port to turn into {plane.port_type}")
            a, b = c.pod("pod-1-0"), c.pod("pod-2-0")
            yield Pair(a, b, b.ip, [*nodes, a.netns, b.netns])


def wait_reachable(pair: Pair, deadline_s: float = 20.0) -> None:
    """Converged: the server answers a ping from the client (BGP, leases, ARP/FDB)."""
    res = shell.run(["ping", "-c", "1", "-w", str(int(deadline_s)), pair.server_ip],
                    netns=pair.client.netns, check=False, timeout=deadline_s + 5)
    if not res.ok:
        raise KnetlabError(f"{pair.client.name} cannot reach {pair.server_ip} after "
                           f"{deadline_s:.0f}s: {res.stdout.strip()[-200:]}")
