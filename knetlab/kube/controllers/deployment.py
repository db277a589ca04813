"""The Deployment controller: rolls a Deployment out as ReplicaSets.

Each pod template gets one ReplicaSet ``<deploy>-<pod-template-hash>`` (the hash is also
a label on the RS's selector and template). Revisions live in the
``deployment.kubernetes.io/revision`` annotation on the RS and the Deployment: a template
that comes back (``kubectl rollout undo`` patches an old RS's template into the
Deployment) moves its RS to the next revision. RollingUpdate follows kube's arithmetic:
scale the new RS up while the total stays within replicas + maxSurge, scale old ones down
while available pods stay at or above replicas - maxUnavailable (surge rounds up,
unavailable down; both 0 means unavailable 1); one step per sync, the next when the caches
show its effect. Recreate scales old RSs to 0 and waits until their pods are gone.
The decisions are pure functions of cached objects, in ``rollout.py``.
"""

from __future__ import annotations

import logging

from knetlab.kube.client import ApiError
from knetlab.kube.controllers.base import Controller, ignore_missing
from knetlab.kube.controllers.rollout import (
    DESIRED,
    MAX,
    REVISION,
    cleanup_plan,
    deployment_status,
    find_new_rs,
    is_scaling_event,
    new_rs_object,
    proportional_scale,
    replicas_of,
    revision,
    rolling_step,
    surge_unavailable,
)
from knetlab.kube.controllers.util import (
    Obj,
    condition,
    deleting,
    labels,
    meta,
    phase,
    selector_matches,
)

log = logging.getLogger("knetlab.kube.controllers.deployment")


class DeploymentController(Controller):
    name = "deployment"
    batch = 0.05

    def setup(self) -> None:
        self.deploys = self.informer("deployments")
        self.rss = self.informer("replicasets")
        self.pod_index = self.ctx.informers.owner_index("pods")
        self.rs_index = self.ctx.informers.owner_index("replicasets")
        # Our own last writes, used while the RS cache is older (no decisions on stale data).
        self._written: dict[str, Obj] = {}
        self.on("deployments", lambda _e, obj, _o: self.enqueue(obj))
        self.on("replicasets", self._on_rs)
        self.on("pods", self._on_pod)

    def _on_rs(self, event: str, rs: Obj, old: Obj | None) -> None:
        if event == "DELETED":
            self._written.pop(meta(rs).get("uid", ""), None)
        self.enqueue_owner("Deployment")(event, rs, old)
        if not (meta(rs).get("ownerReferences")) and event != "DELETED":
            for d in self.deploys.items():  # an orphan RS: who may adopt it
                if meta(d).get("namespace") == meta(rs).get("namespace") and selector_matches(
                        (d.get("spec") or {}).get("selector"), labels(rs)):
                    self.enqueue(d)

    def _on_pod(self, event: str, pod: Obj, _old: Obj | None) -> None:
        # Recreate waits for old pods to be gone: their deletion must wake it up.
        if event == "DELETED":
            rs_ref = next((r for r in meta(pod).get("ownerReferences") or []
                           if r.get("kind") == "ReplicaSet"), None)
            rs = self.rss.get(rs_ref["name"], meta(pod).get("namespace")) if rs_ref else None
            if rs is not None:
                self.enqueue_owner("Deployment")(event, rs, None)

    def _fresh(self, rs: Obj) -> Obj:
        mine = self._written.get(meta(rs).get("uid", ""))
        if mine is None:
            return rs
        try:
            if int(meta(mine)["resourceVersion"]) > int(meta(rs)["resourceVersion"]):
                return mine
        except (KeyError, ValueError):
            pass
        self._written.pop(meta(rs).get("uid", ""), None)
        return rs

    def _remember(self, rs: Obj | None) -> Obj | None:
        if rs:
            self._written[meta(rs)["uid"]] = rs
        return rs

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        d = self.deploys.get(name, ns)
        if d is None:
            return
        spec = d.get("spec") or {}
        selector = spec.get("selector")
        rss = [self._fresh(r) for r in self.claim(
            d, "Deployment", "apps/v1", lambda r: selector_matches(selector, labels(r)),
            resource="replicasets")]
        uids = {meta(r)["uid"] for r in rss}
        rss += [r for u, r in list(self._written.items()) if u not in uids
                and meta(r).get("namespace") == ns and any(
                    o.get("uid") == meta(d)["uid"] for o in meta(r).get("ownerReferences", []))]
        new = find_new_rs(d, rss)
        olds = [r for r in rss if r is not new]
        if deleting(d):
            self.patch_status("deployments", d, deployment_status(d, new, olds))
            return
        if spec.get("paused") or is_scaling_event(d, rss):
            self._apply(d, rss, proportional_scale(d, new, olds))
            if spec.get("paused"):
                self._cleanup(d, olds)
            self.patch_status("deployments", d, deployment_status(d, new, olds))
            return
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            self._recreate(d, new, olds)
            return
        if new is None:
            probe = {"metadata": {"name": "-"}, "spec": {"replicas": 0}, "status": {}}
            step = rolling_step(d, probe, olds)
            new = self._create_rs(d, olds, step.get("-", 0))
            if new is None:
                return
        new = self._sync_revision(d, new, olds)
        step = rolling_step(d, new, olds)
        if step:
            self._apply(d, [new, *olds], step)
        else:
            self._cleanup(d, olds)
        self.patch_status("deployments", d, deployment_status(d, new, olds))
        self._requeue_for_deadline(d)

    def _recreate(self, d: Obj, new: Obj | None, olds: list[Obj]) -> None:
        running = [r for r in olds if replicas_of(r) > 0]
        if running:
            self._apply(d, olds, {meta(r)["name"]: 0 for r in running})
        elif not any(phase(p) not in ("Succeeded", "Failed")
                     for r in olds for p in self.pod_index.owned(meta(r)["uid"])):
            if new is None:
                new = self._create_rs(d, olds, replicas_of(d))
            if new is not None:
                new = self._sync_revision(d, new, olds)
                self._apply(d, [new], {meta(new)["name"]: replicas_of(d)})
                self._cleanup(d, olds)
        self.patch_status("deployments", d, deployment_status(d, new, olds))

    def _create_rs(self, d: Obj, olds: list[Obj], replicas: int) -> Obj | None:
        rev = max([revision(r) for r in olds] + [0]) + 1
        rs = new_rs_object(d, replicas, rev)
        try:
            created = self.client.create("replicasets", rs, meta(d)["namespace"])
        except ApiError as exc:
            if exc.code != 409:
                raise
            have = self.client.get("replicasets", rs["metadata"]["name"], meta(d)["namespace"])
            if any(o.get("uid") == meta(d)["uid"] for o in meta(have).get("ownerReferences", [])) \
                    and find_new_rs(d, [have]) is not None:
                return self._remember(have)
            # A different template hashed to the same name: bump collisionCount, retry.
            count = int((d.get("status") or {}).get("collisionCount") or 0) + 1
            self.client.patch("deployments", meta(d)["name"], {"status": {
                "collisionCount": count}}, meta(d)["namespace"], subresource="status")
            raise
        self.event(d, "Deployment", "ScalingReplicaSet",
                   f"Scaled up replica set {rs['metadata']['name']} from 0 to {replicas}",
                   api_version="apps/v1")
        self._set_deploy_revision(d, str(rev))
        return self._remember(created)

    def _sync_revision(self, d: Obj, new: Obj, olds: list[Obj]) -> Obj:
        """The new RS has the highest revision (a template rolled back to gets the next)."""
        want = max([revision(r) for r in olds] + [0]) + 1
        if revision(new) < want or (revision(new) == 0):
            new = self._remember(self.client.patch(
                "replicasets", meta(new)["name"],
                {"metadata": {"annotations": {REVISION: str(want)}}},
                meta(d)["namespace"])) or new
        self._set_deploy_revision(d, str(revision(new)))
        return new

    def _set_deploy_revision(self, d: Obj, rev: str) -> None:
        if (meta(d).get("annotations") or {}).get(REVISION) != rev:
            ignore_missing(lambda: self.client.patch(
                "deployments", meta(d)["name"], {"metadata": {"annotations": {REVISION: rev}}},
                meta(d)["namespace"]))

    def _apply(self, d: Obj, rss: list[Obj], sizes: dict[str, int]) -> None:
        surge, _ = surge_unavailable(d)
        ann = {DESIRED: str(replicas_of(d)), MAX: str(replicas_of(d) + surge)}
        for rs in rss:
            size = sizes.get(meta(rs)["name"])
            if size is None:
                continue
            have = meta(rs).get("annotations") or {}
            if replicas_of(rs) == size and all(have.get(k) == v for k, v in ann.items()):
                continue
            patched = ignore_missing(lambda r=rs, n=size: self.client.patch(
                "replicasets", meta(r)["name"],
                {"metadata": {"annotations": ann}, "spec": {"replicas": n}},
                meta(r)["namespace"]))
            self._remember(patched)
            if replicas_of(rs) != size:
                how = "up" if size > replicas_of(rs) else "down"
                self.event(d, "Deployment", "ScalingReplicaSet",
                           f"Scaled {how} replica set {meta(rs)['name']} from "
                           f"{replicas_of(rs)} to {size}", api_version="apps/v1")

    def _cleanup(self, d: Obj, olds: list[Obj]) -> None:
        for rs in cleanup_plan(d, olds):
            ignore_missing(lambda r=rs: self.client.delete(
                "replicasets", meta(r)["name"], meta(r)["namespace"]))

    def _requeue_for_deadline(self, d: Obj) -> None:
        c = condition(d, "Progressing")
        if c is not None and c.get("reason") == "ReplicaSetUpdated":
            deadline = int((d.get("spec") or {}).get("progressDeadlineSeconds") or 600)
            self.queue.add_after(f"{meta(d)['namespace']}/{meta(d)['name']}", deadline + 1)

