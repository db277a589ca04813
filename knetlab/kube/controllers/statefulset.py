"""The StatefulSet controller: pods with stable names ``<sts>-0 .. <sts>-(n-1)``.

OrderedReady (the default) creates ordinal i only when 0..i-1 are Running and Ready, and
deletes surplus pods from the highest ordinal down, one at a time; Parallel does both at
once. Every pod gets ``spec.hostname`` = its name, ``spec.subdomain`` = serviceName and
the ``statefulset.kubernetes.io/pod-name`` label (a per-pod Service / DNS name). Revisions
are ``<sts>-<hash of the template>`` in the ``controller-revision-hash`` label; a
RollingUpdate replaces pods from the highest ordinal down to ``partition``, one at a time,
each only when all pods are healthy. A deleted pod comes back with the same name.
``plan_statefulset`` is the pure decision.
"""

from __future__ import annotations

import logging

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.history import sync_history
from knetlab.kube.controllers.util import (
    Obj,
    deleting,
    labels,
    meta,
    owner_ref,
    phase,
    pod_available,
    pod_from_template,
    pod_ready,
    selector_matches,
    template_hash,
)

log = logging.getLogger("knetlab.kube.controllers.statefulset")

HASH = "controller-revision-hash"
POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"


def update_revision(sts: Obj) -> str:
    return f"{meta(sts)['name']}-" + template_hash(
        (sts.get("spec") or {}).get("template") or {},
        (sts.get("status") or {}).get("collisionCount"))


def ordinal(sts: Obj, pod: Obj) -> int | None:
    prefix, name = f"{meta(sts)['name']}-", meta(pod).get("name", "")
    rest = name[len(prefix):]
    if not name.startswith(prefix) or not rest.isdigit() or (rest != "0" and rest[0] == "0"):
        return None
    return int(rest)


def healthy(pod: Obj) -> bool:
    return phase(pod) == "Running" and pod_ready(pod) and not deleting(pod)


def plan_statefulset(sts: Obj, pods: list[Obj]) -> list[tuple[str, int, Obj | None]]:
    """Actions ("create", ordinal, None) / ("delete", ordinal, pod), in order."""
    spec = sts.get("spec") or {}
    want = int(spec.get("replicas", 1))
    parallel = spec.get("podManagementPolicy") == "Parallel"
    by_ord = {o: p for p in pods if (o := ordinal(sts, p)) is not None}
    actions: list[tuple[str, int, Obj | None]] = []
    for i in range(want):
        p = by_ord.get(i)
        if p is None:
            actions.append(("create", i, None))
        elif phase(p) in ("Failed", "Succeeded") and not deleting(p):
            actions.append(("delete", i, p))  # recreated with the same name next time
        elif parallel or healthy(p):
            continue
        if not parallel:
            return actions  # OrderedReady: wait for this ordinal
    unhealthy = [o for o, p in by_ord.items() if not healthy(p)]
    for o in sorted((o for o in by_ord if o >= want), reverse=True):
        p = by_ord[o]
        if deleting(p):
            if not parallel:
                return actions
            continue
        if not parallel and any(u != o for u in unhealthy):
            return actions
        actions.append(("delete", o, p))
        if not parallel:
            return actions
    strat = spec.get("updateStrategy") or {}
    if actions or strat.get("type", "RollingUpdate") != "RollingUpdate":
        return actions
    partition = int((strat.get("rollingUpdate") or {}).get("partition") or 0)
    rev = update_revision(sts)
    for i in range(want - 1, partition - 1, -1):
        p = by_ord.get(i)
        if p is None or deleting(p):
            return actions
        if labels(p).get(HASH) != rev:
            if all(healthy(q) for o, q in by_ord.items() if o < want and o != i) or parallel:
                actions.append(("delete", i, p))
            return actions
        if not healthy(p):
            return actions
    return actions


def statefulset_status(sts: Obj, pods: list[Obj]) -> Obj:
    spec = sts.get("spec") or {}
    old = sts.get("status") or {}
    rev = update_revision(sts)
    current = old.get("currentRevision") or rev
    live = [p for p in pods if ordinal(sts, p) is not None and phase(p) not in (
        "Failed", "Succeeded")]
    min_ready = int(spec.get("minReadySeconds") or 0)
    status = {"observedGeneration": meta(sts).get("generation", 1),
              "replicas": len(live), "readyReplicas": sum(1 for p in live if pod_ready(p)),
              "availableReplicas": sum(1 for p in live if pod_available(p, min_ready)),
              "currentReplicas": sum(1 for p in live if labels(p).get(HASH) == current),
              "updatedReplicas": sum(1 for p in live if labels(p).get(HASH) == rev),
              "currentRevision": current, "updateRevision": rev}
    want = int(spec.get("replicas", 1))
    if status["updatedReplicas"] == want == status["replicas"] == status["readyReplicas"]:
        status["currentRevision"] = rev  # rollout complete
        status["currentReplicas"] = status["updatedReplicas"]
    if old.get("collisionCount") is not None:
        status["collisionCount"] = old["collisionCount"]
    return status


class StatefulSetController(Controller):
    name = "statefulset"
    batch = 0.05

    def setup(self) -> None:
        self.stss = self.informer("statefulsets")
        self.informer("controllerrevisions")  # revision history (history.py)
        self.ctx.informers.owner_index("pods")
        self.on("statefulsets", lambda _e, obj, _o: self.enqueue(obj))
        self.track_dependents("StatefulSet")

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        sts = self.stss.get(name, ns)
        if sts is None:
            self.expectations.forget(key)
            return
        selector = (sts.get("spec") or {}).get("selector")
        pods = self.claim(sts, "StatefulSet", "apps/v1", lambda p: selector_matches(
            selector, labels(p)) and ordinal(sts, p) is not None)
        if not deleting(sts) and self.expectations.satisfied(key):
            actions = plan_statefulset(sts, pods)
            self.expectations.expect(key, adds=sum(1 for a in actions if a[0] == "create"),
                                     dels={key_of(p) for _, _, p in actions if p})
            for verb, i, pod in actions:
                if verb == "create":
                    self._create(sts, key, i)
                elif pod is not None:
                    self.delete_expected(key, pod)
                    self.event(sts, "StatefulSet", "SuccessfulDelete",
                               f"delete Pod {meta(pod)['name']} in StatefulSet {name} "
                               "successful", api_version="apps/v1")
        if not deleting(sts):
            rev = update_revision(sts)
            sync_history(self, sts, "StatefulSet", rev, rev)
        self.patch_status("statefulsets", sts, statefulset_status(sts, pods))

    def _create(self, sts: Obj, key: str, i: int) -> None:
        m, spec = meta(sts), sts.get("spec") or {}
        pod_name = f"{m['name']}-{i}"
        pod = pod_from_template(spec.get("template") or {},
                                owner_ref(sts, "StatefulSet", "apps/v1"), m["namespace"],
                                name=pod_name, extra_labels={
                                    HASH: update_revision(sts), POD_NAME: pod_name,
                                    POD_INDEX: str(i)})
        pod["spec"]["hostname"] = pod_name
        if spec.get("serviceName"):
            pod["spec"]["subdomain"] = spec["serviceName"]
        try:
            self.client.create("pods", pod, m["namespace"])
        except ApiError as exc:
            self.expectations.created(key)
            if exc.code != 409:  # already there: the cache was behind
                self.event(sts, "StatefulSet", "FailedCreate",
                           f"create Pod {pod_name} in StatefulSet {m['name']} failed: {exc}",
                           "Warning", "apps/v1")
                raise
            return
        self.event(sts, "StatefulSet", "SuccessfulCreate",
                   f"create Pod {pod_name} in StatefulSet {m['name']} successful",
                   api_version="apps/v1")
