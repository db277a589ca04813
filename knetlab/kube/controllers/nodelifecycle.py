"""The node lifecycle controller, reduced to its heartbeat check: a node whose kubelet has
not renewed its Lease (``kube-node-lease``) nor posted its Ready condition for 40 s
(kube's node-monitor-grace-period) gets Ready=Unknown, reason NodeStatusUnknown. The
scheduler and the DaemonSet controller then leave it alone; the kubelet sets Ready again
when it comes back. Nodes that never heartbeat (no lease, no lastHeartbeatTime) are left
alone, as are nodes already not Ready.
"""

from __future__ import annotations

import datetime as dt
import logging

from knetlab.kube.client import ApiError
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.util import Obj, condition, fmt_time, meta, now, parse_time

log = logging.getLogger("knetlab.kube.controllers.nodelifecycle")

GRACE = 40.0
PERIOD = 5.0  # kube's node-monitor-period
LEASE_NS = "kube-node-lease"


def last_heartbeat(node: Obj, lease: Obj | None) -> dt.datetime | None:
    times = [parse_time((condition(node, "Ready") or {}).get("lastHeartbeatTime"))]
    if lease is not None:
        times.append(parse_time((lease.get("spec") or {}).get("renewTime")))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def stale_nodes(nodes: list[Obj], leases: dict[str, Obj], at: dt.datetime,
                grace: float = GRACE) -> list[Obj]:
    """Ready nodes whose last heartbeat is older than ``grace`` seconds."""
    out = []
    for node in nodes:
        ready = condition(node, "Ready")
        if ready is None or ready.get("status") != "True":
            continue
        last = last_heartbeat(node, leases.get(meta(node)["name"]))
        if last is not None and (at - last).total_seconds() > grace:
            out.append(node)
    return out


class NodeLifecycleController(Controller):
    name = "nodelifecycle"
    SCAN = "-scan-"

    def setup(self) -> None:
        self.nodes = self.informer("nodes")
        self.leases = self.informer("leases")
        self.queue.add_after(self.SCAN, PERIOD)

    def sync(self, key: str) -> None:
        try:
            leases = {meta(ls)["name"]: ls for ls in self.leases.items()
                      if meta(ls).get("namespace") == LEASE_NS}
            for node in stale_nodes(self.nodes.items(), leases, now()):
                self._mark_unknown(node)
        finally:
            self.queue.add_after(self.SCAN, PERIOD)

    def _mark_unknown(self, node: Obj) -> None:
        name, ts = meta(node)["name"], fmt_time()
        conds = []
        for c in (node.get("status") or {}).get("conditions") or []:
            c = dict(c)
            if c.get("type") == "Ready" or c.get("status") == "False":
                c.update({"status": "Unknown", "reason": "NodeStatusUnknown",
                          "message": "Kubelet stopped posting node status.",
                          "lastTransitionTime": ts})
            conds.append(c)
        log.warning("node %s: no heartbeat for %ss, Ready=Unknown", name, int(GRACE))
        try:
            self.client.patch("nodes", name, {"status": {"conditions": conds}},
                              subresource="status")
        except ApiError as exc:
            if exc.code != 404:
                raise
        self.event({"metadata": {"name": name, "namespace": "default", "uid": meta(node)
                                 .get("uid")}}, "Node", "NodeNotReady",
                   f"Node {name} status is now: NodeNotReady", "Normal")
