"""The ReplicaSet controller: keeps ``spec.replicas`` pods from ``spec.template`` alive.

Pods are named ``<rs>-<5 random>`` (generateName), controlled by the ReplicaSet through an
ownerReference (controller, blockOwnerDeletion). Orphans matching the selector are adopted,
owned pods that stop matching are released. Scale-down deletes the pods kube ranks first
(unscheduled, pending, not ready, newest). Expectations keep a sync from creating the same
pods twice while the pod watch still lags behind our creations (it matters at 1,000
replicas). Creations go out in slow-start batches (1, 2, 4, ...) like kube's, so a template
the API refuses fails once, not 500 times.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.util import (
    Obj,
    condition,
    controller_ref,
    deleting,
    deletion_rank,
    labels,
    meta,
    now,
    owner_ref,
    parse_time,
    pod_active,
    pod_available,
    pod_from_template,
    pod_ready,
    selector_matches,
)

log = logging.getLogger("knetlab.kube.controllers.replicaset")

BURST = 500  # kube's burstReplicas: most pods created or deleted in one sync
STATUS_CHUNK = 32  # creations between two looks at the clock in a long sync
STATUS_EVERY = 1.0  # seconds between status writes during a long sync


def plan_replicas(want: int, active: list[Obj], burst: int = BURST) -> tuple[int, list[Obj]]:
    """(pods to create, pods to delete) to bring ``active`` to ``want``."""
    diff = len(active) - want
    if diff < 0:
        return min(-diff, burst), []
    if diff > 0:
        return 0, sorted(active, key=deletion_rank)[:min(diff, burst)]
    return 0, []


def replicaset_status(rs: Obj, pods: list[Obj]) -> Obj:
    """Status of a ReplicaSet from its active pods."""
    spec = rs.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    tlabels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    at = now()
    return {
        "replicas": len(pods),
        "fullyLabeledReplicas": sum(1 for p in pods
                                    if all(labels(p).get(k) == v for k, v in tlabels.items())),
        "readyReplicas": sum(1 for p in pods if pod_ready(p)),
        "availableReplicas": sum(1 for p in pods if pod_available(p, min_ready, at)),
        "observedGeneration": meta(rs).get("generation", 1),
    }


def next_available_in(pods: list[Obj], min_ready: int) -> float | None:
    """Seconds until a ready-but-not-yet-available pod becomes available (minReadySeconds)."""
    if min_ready <= 0:
        return None
    at, waits = now(), []
    for p in pods:
        if pod_ready(p) and not pod_available(p, min_ready, at):
            since = parse_time((condition(p, "Ready") or {}).get("lastTransitionTime"))
            if since is not None:
                waits.append(min_ready - (at - since).total_seconds())
    return max(0.1, min(waits)) + 0.05 if waits else None


def slow_start_batches(n: int) -> list[int]:
    out, size = [], 1
    while n > 0:
        out.append(min(size, n))
        n -= out[-1]
        size *= 2
    return out


class ReplicaSetController(Controller):
    name = "replicaset"
    batch = 0.1
    kind, api_version, resource = "ReplicaSet", "apps/v1", "replicasets"

    def setup(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{self.name}-w")
        self.owners = self.informer(self.resource)
        self.pods = self.informer("pods")
        self.ctx.informers.owner_index("pods")
        self.on(self.resource, lambda _e, obj, _o: self.enqueue(obj))
        self.on("pods", self._on_pod)

    def _on_pod(self, event: str, pod: Obj, old: Obj | None) -> None:
        ref = controller_ref(pod)
        ns = meta(pod).get("namespace")
        if ref and ref.get("kind") == self.kind:
            key = f"{ns}/{ref['name']}"
            if event == "ADDED":
                self.expectations.created(key)
            elif event == "DELETED" or (deleting(pod) and not (old and deleting(old))):
                self.expectations.deleted(key, key_of(pod))
            self.enqueue_batched(key)
        if old is not None:
            old_ref = controller_ref(old)
            if old_ref and old_ref.get("kind") == self.kind and old_ref != ref:
                self.enqueue_batched(f"{ns}/{old_ref['name']}")
        if ref is None and event != "DELETED":
            # An orphan: any ReplicaSet whose selector matches may adopt it.
            for rs in self.owners.items():
                if meta(rs).get("namespace") == ns and selector_matches(
                        (rs.get("spec") or {}).get("selector"), labels(pod)):
                    self.enqueue(rs)

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        rs = self.owners.get(name, ns)
        if rs is None:
            self.expectations.forget(key)
            return
        spec = rs.get("spec") or {}
        selector = spec.get("selector")
        # Expectations before the cache, as kube reads them: the pod informer indexes a pod
        # before its handler lowers the expectation, so once satisfied, the cache read next
        # holds every pod counted. Read after, a pod landing in between was counted but not
        # seen, and created again (1,032 pods for 1,000 replicas).
        satisfied = self.expectations.satisfied(key)
        pods = self.claim(rs, self.kind, self.api_version,
                          lambda p: selector_matches(selector, labels(p)))
        active = [p for p in pods if pod_active(p)]
        if satisfied and not deleting(rs):
            want = int(spec.get("replicas", 1))
            create, delete = plan_replicas(want, active)
            if create:
                self._create(rs, key, create)
            elif delete:
                self._delete(rs, key, delete)
        self.patch_status(self.resource, rs, replicaset_status(rs, active))
        wait = next_available_in(active, int(spec.get("minReadySeconds") or 0))
        if wait is not None:
            self.queue.add_after(key, wait)

    def _create(self, rs: Obj, key: str, n: int) -> None:
        m = meta(rs)
        tmpl = (rs.get("spec") or {}).get("template") or {}
        pod = pod_from_template(tmpl, owner_ref(rs, self.kind, self.api_version),
                                m["namespace"], generate_name=f"{m['name']}-")
        self.expectations.expect(key, adds=n)
        created, error = 0, None
        last_status = time.monotonic()
        for batch in slow_start_batches(n):
            for chunk in range(0, batch, STATUS_CHUNK):
                size = min(STATUS_CHUNK, batch - chunk)
                results = list(self.pool.map(
                    lambda _i: self._create_one(pod, m["namespace"]), range(size)))
                created += sum(1 for r in results if r is None)
                error = next((r for r in results if r is not None), None)
                if error is not None:
                    break
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self._progress(key)
                    last_status = time.monotonic()
            if error is not None:
                break
        if created < n:
            self.expectations.created(key, n - created)  # never coming: stop waiting
        if created:
            self.event(rs, self.kind, "SuccessfulCreate",
                       f"Created {created} pod(s)" if created > 1 else "Created pod",
                       api_version=self.api_version)
        if error is not None:
            self.event(rs, self.kind, "FailedCreate", f"Error creating: {error}", "Warning",
                       self.api_version)
            raise error

    def _progress(self, key: str) -> None:
        """Status mid-sync: 500 creations take seconds on a busy API server, and the pods
        created first are Ready long before the last is created."""
        ns, _, name = key.partition("/")
        rs = self.owners.get(name, ns)
        if rs is None:
            return
        owned = self.ctx.informers.owner_index("pods").owned(meta(rs)["uid"])
        status = replicaset_status(rs, [p for p in owned if pod_active(p)])
        status.pop("observedGeneration")  # written when the sync is done
        self.patch_status(self.resource, rs, status)

    def _create_one(self, pod: Obj, ns: str) -> Exception | None:
        try:
            self.client.create("pods", pod, ns)
            return None
        except ApiError as exc:
            return exc

    def _delete(self, rs: Obj, key: str, pods: list[Obj]) -> None:
        keys = {key_of(p) for p in pods}
        self.expectations.expect(key, dels=keys)
        errors: list[Any] = []

        def one(p: Obj) -> None:
            try:
                self.client.delete("pods", meta(p)["name"], meta(p)["namespace"])
            except ApiError as exc:
                self.expectations.deleted(key, key_of(p))  # gone already, or never will be
                if exc.code != 404:
                    errors.append(exc)

        list(self.pool.map(one, pods))
        names = ", ".join(meta(p)["name"] for p in pods[:5])
        self.event(rs, self.kind, "SuccessfulDelete",
                   f"Deleted pod: {names}" + (" ..." if len(pods) > 5 else ""),
                   api_version=self.api_version)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        super().stop()
        self.pool.shutdown(wait=False)
