"""The DaemonSet controller: one pod per eligible node.

A node is eligible when it is Ready, schedulable, matches the template's nodeSelector /
required node affinity and has no NoSchedule/NoExecute taint the pod does not tolerate.
Pods are bound directly (``spec.nodeName``), not through the scheduler. A template change
rolls out node by node (RollingUpdate, maxUnavailable, default 1): pods carry the
``controller-revision-hash`` label, an old pod is deleted only while the number of
unavailable pods stays within maxUnavailable, and its replacement comes on the next sync.
``plan_daemonset`` is the pure decision.
"""

from __future__ import annotations

import logging

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.history import sync_history
from knetlab.kube.controllers.util import (
    Obj,
    deleting,
    deletion_rank,
    labels,
    meta,
    node_matches_pod,
    node_ready,
    owner_ref,
    phase,
    pod_available,
    pod_from_template,
    pod_ready,
    resolve_int_or_percent,
    selector_matches,
    template_hash,
    untolerated_taint,
)

log = logging.getLogger("knetlab.kube.controllers.daemonset")

HASH = "controller-revision-hash"
# What the DaemonSet controller adds to every daemon pod (kube's AddOrUpdateDaemonPodTolerations).
DAEMON_TOLERATIONS = [
    {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": e}
    for k, e in (("not-ready", "NoExecute"), ("unreachable", "NoExecute"),
                 ("disk-pressure", "NoSchedule"), ("memory-pressure", "NoSchedule"),
                 ("pid-pressure", "NoSchedule"), ("unschedulable", "NoSchedule"))]


def ds_hash(ds: Obj) -> str:
    return template_hash((ds.get("spec") or {}).get("template") or {},
                         (ds.get("status") or {}).get("collisionCount"))


def eligible(node: Obj, pod_spec: Obj) -> bool:
    tolerations = (pod_spec.get("tolerations") or []) + DAEMON_TOLERATIONS
    return (node_ready(node) and not (node.get("spec") or {}).get("unschedulable")
            and node_matches_pod(node, pod_spec) and untolerated_taint(node, tolerations) is None)


def plan_daemonset(ds: Obj, nodes: list[Obj], pods: list[Obj]) -> tuple[list[str], list[Obj]]:
    """(node names to create a pod on, pods to delete)."""
    spec = ds.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    want = {meta(n)["name"] for n in nodes if eligible(n, pod_spec)}
    h = ds_hash(ds)
    by_node: dict[str, list[Obj]] = {}
    for p in pods:
        if not deleting(p):
            by_node.setdefault((p.get("spec") or {}).get("nodeName") or "", []).append(p)
    create: list[str] = []
    delete: list[Obj] = []
    for node, ps in by_node.items():
        if node not in want:
            delete += ps
    for node in sorted(want):
        ps = [p for p in by_node.get(node, []) if phase(p) != "Failed"]
        delete += [p for p in by_node.get(node, []) if phase(p) == "Failed"]
        if not ps:
            if not any(deleting(p) and (p.get("spec") or {}).get("nodeName") == node
                       for p in pods):
                create.append(node)
            continue
        # Keep one pod per node: the updated one if any, else the oldest.
        ps.sort(key=lambda p: (labels(p).get(HASH) != h,
                               meta(p).get("creationTimestamp", ""), meta(p)["name"]))
        delete += ps[1:]
    strat = spec.get("updateStrategy") or {}
    if strat.get("type", "RollingUpdate") == "RollingUpdate":
        max_unavail = resolve_int_or_percent((strat.get("rollingUpdate") or {}).get(
            "maxUnavailable"), len(want), False, 1) or 1
        min_ready = int(spec.get("minReadySeconds") or 0)
        current = [ps[0] for n, ps in by_node.items() if n in want and ps]
        unavailable = len(want) - sum(1 for p in current if pod_available(p, min_ready))
        # Nodes already waiting for a pod count as unavailable.
        budget = max_unavail - unavailable
        old = sorted((p for p in current if labels(p).get(HASH) != h and p not in delete),
                     key=lambda p: (pod_available(p, min_ready), deletion_rank(p)))
        for p in old:
            if not pod_available(p, min_ready):
                delete.append(p)  # replacing an unavailable pod costs no availability
            elif budget > 0:
                delete.append(p)
                budget -= 1
    return create, delete


def daemonset_status(ds: Obj, nodes: list[Obj], pods: list[Obj]) -> Obj:
    spec = ds.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    want = {meta(n)["name"] for n in nodes if eligible(n, pod_spec)}
    h = ds_hash(ds)
    min_ready = int(spec.get("minReadySeconds") or 0)
    on: dict[str, Obj] = {}
    for p in pods:
        if not deleting(p) and phase(p) != "Failed":
            on.setdefault((p.get("spec") or {}).get("nodeName") or "", p)
    scheduled = [p for n, p in on.items() if n in want]
    available = sum(1 for p in scheduled if pod_available(p, min_ready))
    return {"desiredNumberScheduled": len(want), "currentNumberScheduled": len(scheduled),
            "numberMisscheduled": sum(1 for n in on if n not in want),
            "numberReady": sum(1 for p in scheduled if pod_ready(p)),
            "numberAvailable": available, "numberUnavailable": len(want) - available,
            "updatedNumberScheduled": sum(1 for p in scheduled if labels(p).get(HASH) == h),
            "observedGeneration": meta(ds).get("generation", 1)}


class DaemonSetController(Controller):
    name = "daemonset"
    batch = 0.05

    def setup(self) -> None:
        self.dss = self.informer("daemonsets")
        self.informer("controllerrevisions")  # revision history (history.py)
        self.nodes = self.informer("nodes")
        self.ctx.informers.owner_index("pods")
        self.on("daemonsets", lambda _e, obj, _o: self.enqueue(obj))
        self.track_dependents("DaemonSet")
        self.on("nodes", self._on_node)

    def _on_node(self, _event: str, node: Obj, old: Obj | None) -> None:
        if old is not None and (old.get("spec"), labels(old), node_ready(old)) == (
                node.get("spec"), labels(node), node_ready(node)):
            return  # a heartbeat: nothing a DaemonSet cares about
        for ds in self.dss.items():
            self.enqueue(ds)

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        ds = self.dss.get(name, ns)
        if ds is None:
            return
        spec = ds.get("spec") or {}
        selector = spec.get("selector")
        pods = self.claim(ds, "DaemonSet", "apps/v1",
                          lambda p: selector_matches(selector, labels(p)))
        nodes = self.nodes.items()
        if not deleting(ds) and self.expectations.satisfied(key):
            create, delete = plan_daemonset(ds, nodes, pods)
            self.expectations.expect(key, adds=len(create), dels={key_of(p) for p in delete})
            for p in delete:
                self.delete_expected(key, p)
                self.event(ds, "DaemonSet", "SuccessfulDelete",
                           f"Deleted pod: {meta(p)['name']}", api_version="apps/v1")
            if create:
                self._create(ds, create)
        if not deleting(ds):
            sync_history(self, ds, "DaemonSet", f"{meta(ds)['name']}-{ds_hash(ds)}", ds_hash(ds))
        self.patch_status("daemonsets", ds, daemonset_status(ds, nodes, pods))

    def _create(self, ds: Obj, node_names: list[str]) -> None:
        m = meta(ds)
        tmpl = (ds.get("spec") or {}).get("template") or {}
        error = None
        for node in node_names:
            pod = pod_from_template(tmpl, owner_ref(ds, "DaemonSet", "apps/v1"),
                                    m["namespace"], generate_name=f"{m['name']}-",
                                    extra_labels={HASH: ds_hash(ds)})
            spec = pod["spec"]
            spec["nodeName"] = node
            have = {(t.get("key"), t.get("effect")) for t in spec.get("tolerations") or []}
            spec["tolerations"] = (spec.get("tolerations") or []) + [
                t for t in DAEMON_TOLERATIONS if (t["key"], t["effect"]) not in have]
            try:
                made = self.client.create("pods", pod, m["namespace"])
                self.event(ds, "DaemonSet", "SuccessfulCreate",
                           f"Created pod: {meta(made)['name']}", api_version="apps/v1")
            except ApiError as exc:
                self.expectations.created(key_of(ds))
                error = exc
        if error is not None:
            raise error
