"""The flannel data planes: ``flannel-vxlan``, ``flannel-udp`` and ``host-gw``.

The backend is the cluster-side half of flannel: it stores the network config, starts a
flanneld-like agent (and for UDP the forwarder) per node, writes the flannel CNI config,
releases a leaving node's lease and waits until every agent has programmed the current
membership. The kernel is programmed only by the agents (see ``agent`` and ``kernel``).

As flanneld's DaemonSet, a crashed agent or forwarder is started again, after a back-off
that doubles per crash (1 s to 10 s; ``knetlab.watchdog``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab.dataplane import Backend, register
from knetlab.errors import ConfigError, KnetlabError
from knetlab.overlays.flannel import config as fconfig
from knetlab.overlays.flannel import subnet
from knetlab.overlays.flannel.daemons import FlannelAgent, UdpForwarder
from knetlab.watchdog import Watchdog

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

SYNC_TIMEOUT = 10.0


class FlannelBackend(Backend):
    section: ClassVar[str | None] = "flannel"
    kind: ClassVar[str]

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.agents: dict[str, FlannelAgent] = {}
        self.forwarders: dict[str, UdpForwarder] = {}
        self.lock = threading.RLock()  # the watchdog thread and the cluster's calls
        # the DaemonSet's part: start again what exited, each after its back-off
        self.watchdog = Watchdog("flannel-daemonset", self.lock, self._daemons,
                                 lambda key: self._restart(*key))

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        if not cls.routed_underlay_ok and spec.underlay.type != "segment":
            raise ConfigError(
                f"data plane {cls.name} routes each peer's pod subnet via the peer's node IP, "
                f"so every node must be on one L2 segment, but underlay.type is "
                f"{spec.underlay.type}", file=spec.file, line=spec.lines.get("dataplane"),
                field="dataplane", fix="use underlay.type: segment, or flannel-vxlan / "
                "vpc-routes on leaf-spine")
        return fconfig.parse(spec, settings, cls.kind)

    @property
    def store(self) -> Any:
        assert self.cluster.store is not None
        return self.cluster.store

    def setup(self) -> None:
        subnet.put_config(self.store, self.settings)

    def setup_node(self, node: K8sNode) -> None:
        # Started without waiting: a hundred agents boot in parallel; sync() waits for all.
        if self.kind == "udp":
            fwd = UdpForwarder(node, self.store, self.settings["SubnetLen"])
            fwd.start(wait=False)
            self.forwarders[node.name] = fwd
        agent = FlannelAgent(node, self.store)
        agent.start(wait=False)
        self.agents[node.name] = agent
        (node.dir / "10-flannel.conflist").write_text(json.dumps(self.flannel_conflist(),
                                                                 indent=2))

    def flannel_conflist(self) -> dict[str, Any]:
        """What a flannel install puts in /etc/cni/net.d (the flannel plugin's input)."""
        return {"name": "cbr0", "cniVersion": "1.0.0", "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        """The flannel plugin's delegation, expanded: bridge cbr0 with subnet.env's MTU."""
        return node.default_cni_config(mtu=fconfig.mtu(self.settings), name="cbr0")

    def sync(self) -> None:
        """Wait until each agent has programmed exactly the other live nodes' leases."""
        nodes = self.cluster.k8s_nodes()
        for fwd in self.forwarders.values():
            fwd.wait_ready()
        deadline = time.monotonic() + SYNC_TIMEOUT + 0.3 * len(nodes)  # agents boot at once
        for node in nodes:
            want = sorted(n.spec.pod_cidr for n in nodes if n is not node)
            agent = self.agents[node.name]
            while self._applied(agent) != want:
                if time.monotonic() > deadline or not agent.alive():
                    raise KnetlabError(f"flannel agent on {node.name} did not program peers "
                                       f"{want} (has {self._applied(agent)}); log tail:\n"
                                       f"{agent.log_tail()}")
                time.sleep(0.02)
        self.watchdog.start()

    def _daemons(self) -> dict[tuple[str, str], Any]:
        return {**{("agent", n): d for n, d in self.agents.items()},
                **{("forwarder", n): d for n, d in self.forwarders.items()}}

    def _restart(self, kind: str, name: str) -> int:
        node = self.cluster.node(name)
        table: dict[str, Any] = self.agents if kind == "agent" else self.forwarders
        # The entry is replaced, never removed: readers (status, the watchdog, tests) see
        # the old daemon or the new one, not a node without an agent while the new one starts.
        old = table.get(name)
        if old:
            old.stop()
        daemon = (FlannelAgent(node, self.store) if kind == "agent" else
                  UdpForwarder(node, self.store, self.settings["SubnetLen"]))
        daemon.start()
        table[name] = daemon
        assert daemon.pid
        return daemon.pid

    @staticmethod
    def _applied(agent: FlannelAgent) -> list[str] | None:
        try:
            return json.loads((agent.dir / "applied.json").read_text())["peers"]
        except (OSError, ValueError, KeyError):
            return None

    def remove_node(self, node: K8sNode) -> None:
        self._stop(node.name)
        subnet.release(self.store, node.spec.pod_cidr)

    def _stop(self, name: str) -> None:
        with self.lock:
            for table in (self.agents, self.forwarders):
                daemon = table.pop(name, None)
                if daemon:
                    daemon.stop()

    def teardown(self) -> None:
        self.watchdog.stop()  # first: it must not start what we stop
        for name in list(self.agents):
            self._stop(name)

    def restart_agent(self, node: str) -> int:
        """Stop (if running) and start a node's agent; returns the new pid."""
        with self.lock:
            return self._restart("agent", node)

    def node_names(self) -> dict[str, str]:
        """node IP -> node name (flanneld's leases name no node, only its PublicIP)."""
        return {n.node_ip: n.name for n in self.cluster.k8s_nodes()}

    def describe(self) -> dict[str, Any]:
        daemons = [{"name": d.name, "owner": o, "pid": d.pid}
                   for table in (self.agents, self.forwarders) for o, d in table.items()]
        names = self.node_names()
        leases = [{**lease, "node": names.get(lease["PublicIP"], "")}
                  for lease in subnet.leases(self.store)]
        return {"flannel": {"config": self.settings, "leases": leases}, "daemons": daemons}


def format_leases(leases: list[dict[str, Any]], config: dict[str, Any],
                  names: dict[str, str]) -> str:
    """The leases as a table; ``names``: node IP -> node name."""
    rows = [["SUBNET", "NODE", "PUBLIC-IP", "BACKEND", "BACKEND-DATA", "TTL"]]
    for lease in leases:
        data = ",".join(f"{k}={v}" for k, v in lease.get("BackendData", {}).items()) or "-"
        ttl = lease.get("ttl", -1)
        rows.append([lease["subnet"], names.get(lease["PublicIP"], "-"), lease["PublicIP"],
                     lease["BackendType"], data, f"{ttl}s" if ttl >= 0 else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    head = (f"flannel network {config['Network']} /{config['SubnetLen']} "
            f"backend {config['Backend']}")
    return "\n".join([head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                               .rstrip() for r in rows])


@register
class FlannelVxlan(FlannelBackend):
    name = "flannel-vxlan"
    kind = "vxlan"
    kernel_features: ClassVar[tuple[str, ...]] = ("vxlan",)


@register
class FlannelUdp(FlannelBackend):
    name = "flannel-udp"
    kind = "udp"
    kernel_features: ClassVar[tuple[str, ...]] = ("tun",)


@register
class HostGw(FlannelBackend):
    """flannel's host-gw: routes via peers' node IPs, so every node must share one segment."""
    name = "host-gw"
    kind = "host-gw"
    routed_underlay_ok: ClassVar[bool] = False
