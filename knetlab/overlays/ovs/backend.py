"""The ``ovs-vxlan`` and ``ovs-gre`` data planes: one OVS per node, one os-ken controller.

Life cycle: ``setup`` starts the controller; ``setup_node`` starts the node's OVS, moves
the node IP to br-phy and registers the node in the lab's etcd
(``/knetlab/ovs/nodes/NAME``), which is what the controller learns membership from; pods
are wired by the ``ovs`` CNI plugin, which registers them (``/knetlab/ovs/pods/PORT``, one
entry per attachment).
``sync`` routes the other nodes' pod subnets into gw0, seeds OVS's tunnel neighbour cache
and waits until every switch is connected and programmed, so a lab is usable when ``up``
returns.

Settings (topology key ``ovs``): ``vni`` (the tunnel key, default 1).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab.cni.plugins.ovs import OVS_NODES, OVS_PODS
from knetlab.dataplane import Backend, register
from knetlab.errors import ConfigError, KnetlabError
from knetlab.overlays.ovs.controllerd import ControllerDaemon
from knetlab.overlays.ovs.node import POD_MTU, SINK_BRIDGE, NodeSwitch
from knetlab.overlays.ovs.pipeline import GW_IFACE, TABLE_BY_ID, dpid_for
from knetlab.overlays.ovs.services import apply_service_snat
from knetlab.routes import reconcile_routes

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

CONNECT_TIMEOUT = 15.0  # seconds for every br-int to connect and be programmed


class OvsBackend(Backend):
    section: ClassVar[str | None] = "ovs"
    cni_plugins: ClassVar[tuple[str, ...]] = ("ovs",)
    tunnel: ClassVar[str]

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.switches: dict[str, NodeSwitch] = {}
        self.controller: ControllerDaemon | None = None
        self.written = 0  # etcd revision of our last node registration

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        settings.only(["vni"])
        vni = settings.int("vni", 1, lo=1, hi=2**24 - 1)
        # Said before anything is built, with the fix.
        if not shutil.which("ovs-vswitchd") or not shutil.which("ovs-ofctl"):
            raise ConfigError(f"data plane {cls.name} needs Open vSwitch, which is not "
                              "installed", file=spec.file, line=spec.lines.get("dataplane"),
                              field="dataplane", fix="apt-get install openvswitch-switch "
                              "(or run scripts/setup.sh)")
        if importlib.util.find_spec("os_ken") is None:
            raise ConfigError(f"data plane {cls.name} needs the os-ken OpenFlow controller, "
                              "which is not installed", file=spec.file, field="dataplane",
                              line=spec.lines.get("dataplane"), fix="pip install os-ken "
                              "(a dependency of knetlab: pip install -e .)")
        return {"vni": vni}

    @property
    def store(self) -> Any:
        assert self.cluster.store is not None
        return self.cluster.store

    def setup(self) -> None:
        self.controller = ControllerDaemon(self.cluster.rundir, self.store.to_arg(),
                                           self.settings["vni"])
        self.controller.start()

    def setup_node(self, node: K8sNode) -> None:
        assert self.controller and self.cluster.underlay
        u = self.cluster.spec.underlay
        route = None
        if u.type == "leaf-spine":
            route = (str(u.cidr), str(u.gateway(node.spec.rack)))
        sw = NodeSwitch(self.cluster.rundir, node, self.tunnel, self.controller.socket, route)
        self.switches[node.name] = sw
        self.written = max(self.written, self.store.put(f"{OVS_NODES}{node.name}", {
            "name": node.name, "ip": node.node_ip, "podCIDR": node.spec.pod_cidr,
            "gateway": node.spec.pod_gateway, "dpid": dpid_for(node.name)}))
        sw.start()
        apply_service_snat(node, str(self.cluster.spec.pod_cidr))

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        sw = self.switches[node.name]
        assert self.controller
        return {"cniVersion": "1.0.0", "name": "knetlab-ovs", "plugins": [{
            "type": "ovs", "bridge": "br-int", "ovsdb": sw.db, "mtu": POD_MTU,
            "sinkBridge": SINK_BRIDGE,
            "node": node.name, "podCIDR": node.spec.pod_cidr,
            **self.store.conf(), "controllerStatus": str(self.controller.status_file),
            "controllerPidFile": str(self.controller.pid_file),
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": node.spec.pod_cidr,
                                  "gateway": node.spec.pod_gateway}]],
                     "dataDir": str(node.dir / "ipam")}}]}

    def sync(self) -> None:
        nodes = self.cluster.k8s_nodes()
        for node in nodes:
            reconcile_routes(node, {p.spec.pod_cidr: f"via {p.spec.pod_gateway} dev "
                                    f"{GW_IFACE} onlink" for p in nodes if p is not node})
        self._seed_neighbours(nodes)
        self.wait_programmed()

    def _seed_neighbours(self, nodes: list[K8sNode]) -> None:
        """Seed each OVS's tunnel neighbour cache with its next hops' MACs: the peer itself
        on the same L2 segment, else the rack's ToR (OVS drops the packet that triggers
        its own ARP, which would lose the first packet to every new peer)."""
        macs = {n.node_ip: self.switches[n.name].uplink_mac() for n in nodes}
        segment = self.cluster.spec.underlay.type == "segment"
        for node in nodes:
            hops = {p.node_ip: macs[p.node_ip] for p in nodes
                    if p is not node and (segment or p.spec.rack == node.spec.rack)}
            if not segment:
                gw = str(self.cluster.spec.underlay.gateway(node.spec.rack))
                hops[gw] = self._router_mac(node.spec.rack, gw)
            self.switches[node.name].seed_neighbours(hops)

    def _router_mac(self, rack: int, ip: str) -> str:
        assert self.cluster.underlay
        tor = self.cluster.underlay.tors[rack]
        for link in json.loads(tor.run(["ip", "-j", "addr", "show"]).stdout or "[]"):
            if any(a.get("local") == ip for a in link.get("addr_info", [])):
                return link["address"]
        raise KnetlabError(f"no interface with {ip} on the ToR of rack {rack}")

    def wait_programmed(self, timeout: float = CONNECT_TIMEOUT, since: int = 0) -> None:
        """Until every node's br-int is connected and synced past our last registration
        (not the store's revision: the API server's writes move that, and the controller
        re-reads only when the OVS registry changes)."""
        assert self.controller
        want = max(self.written, since)
        deadline = time.monotonic() + timeout
        while True:
            status = self.controller.status()
            if not status["running"]:
                raise KnetlabError("the os-ken controller is not running; log tail:\n"
                                   + self.controller.log_tail())
            sw = status["switches"]
            late = [n for n in self.switches if sw.get(n, {}).get("synced_rev", -1) < want]
            if not late:
                return
            if time.monotonic() > deadline:
                raise KnetlabError(
                    f"br-int of {', '.join(late)} not connected to (or not programmed by) the "
                    f"os-ken controller within {timeout}s; controller log tail:\n"
                    f"{self.controller.log_tail()}\nvswitchd log tail of {late[0]}:\n"
                    f"{self.switches[late[0]].ovs.vswitchd.log_tail()}")
            time.sleep(0.02)

    def remove_node(self, node: K8sNode) -> None:
        self.store.delete(f"{OVS_NODES}{node.name}")
        for key, pod in self.store.list(OVS_PODS).items():
            if pod.get("node") == node.name:
                self.store.delete(key)
        sw = self.switches.pop(node.name, None)
        if sw:
            sw.stop()

    def teardown(self) -> None:
        for sw in self.switches.values():
            sw.stop()
        self.switches = {}
        if self.controller:
            self.controller.stop()

    # -- visible parts -------------------------------------------------------------
    def flows(self, node: str) -> str:
        sw = self._switch(node)
        return format_flows(sw.ofctl("dump-flows", "--no-stats"))

    def controller_action(self, action: str) -> dict[str, Any]:
        """Stop, start or restart the os-ken controller (switches keep their flows)."""
        assert self.controller
        if action not in ("stop", "start", "restart"):
            raise KnetlabError(f"unknown controller action {action!r} (stop, start, restart)")
        if action in ("stop", "restart"):
            self.controller.stop()
        if action in ("start", "restart"):
            if not self.controller.alive():
                self.controller.start()
            self.wait_programmed()
        return self.controller.status()

    def _switch(self, node: str) -> NodeSwitch:
        if node not in self.switches:
            raise KnetlabError(f"no node {node!r} with an OVS in cluster "
                               f"{self.cluster.spec.name}; nodes: {', '.join(self.switches)}")
        return self.switches[node]

    def describe(self) -> dict[str, Any]:
        if not self.controller:
            return {}
        daemons = [{"name": "os-ken", "owner": "cluster", "pid": self.controller.pid}]
        for name, sw in self.switches.items():
            daemons += [{"name": d.name, "owner": name, "pid": d.pid}
                        for d in (sw.ovs.ovsdb, sw.ovs.vswitchd, sw.agent)]
        ctl = self.controller.status()
        state = f"running, pid {ctl['pid']}" if ctl["running"] else "DOWN"
        lines = [f"controller os-ken: {state}"]
        for node in sorted(self.switches):
            sw = ctl["switches"].get(node)
            lines.append(f"  {node} br-int: " + (f"connected, {sw['flows']} flows" if sw
                                                  else "not connected"))
        return {"daemons": daemons, "summary": lines,
                "ovs": {"tunnel": self.tunnel, "vni": self.settings["vni"], "controller": ctl}}


def format_flows(dump: str) -> str:
    """ovs-ofctl's dump, grouped by table under the pipeline's table names."""
    groups: dict[int, list[str]] = {}
    for line in dump.splitlines():
        line = line.strip()
        if not line.startswith("cookie=") and not line.startswith("table="):
            continue  # the reply header
        # ovs-ofctl leaves out "table=0"
        table = int(line.split("table=")[1].split(",")[0]) if "table=" in line else 0
        groups.setdefault(table, []).append(line)
    out = []
    for table in sorted(groups):
        t = TABLE_BY_ID.get(table)
        head = f"table {table} {t.name}: {t.purpose}" if t else f"table {table}"
        out.append(head)
        out += [f"  {line}" for line in groups[table]]
    return "\n".join(out) if out else "(no flows)"


@register
class OvsVxlanBackend(OvsBackend):
    name = "ovs-vxlan"
    tunnel = "vxlan"


@register
class OvsGreBackend(OvsBackend):
    name = "ovs-gre"
    tunnel = "gre"
