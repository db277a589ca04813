"""The Controller base every controller (and the scheduler) is built on, as in
kube-controller-manager: shared informers feed local caches; event handlers only enqueue
``namespace/name`` keys; one worker thread per controller runs ``sync(key)``, which reads
the caches, writes the difference through the API and is safe to repeat. Failed syncs are
re-queued with a doubling back-off.

Also here: ``Informers`` (one informer per resource shared by all controllers),
``Expectations`` (do not create or delete twice while the watch lags behind our own
writes) and ``EventRecorder`` (v1 Events written from a background thread, best effort).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from knetlab.kube.client import ApiError, Informer, KubeClient, WorkQueue, key_of
from knetlab.kube.controllers.util import (
    Obj,
    controller_ref,
    deleting,
    fmt_time,
    meta,
    owner_ref,
)

log = logging.getLogger("knetlab.kube.controllers")

EXPECTATIONS_TTL = 300.0  # kube's: after 5 minutes an unmet expectation is forgotten


class Informers:
    """One shared informer per resource, created on first use, started together."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._by_resource: dict[str, Informer] = {}
        self._indexes: dict[str, OwnerIndex] = {}

    def __call__(self, resource: str) -> Informer:
        inf = self._by_resource.get(resource)
        if inf is None:
            inf = self._by_resource[resource] = Informer(self.client, resource)
        return inf

    def owner_index(self, resource: str) -> OwnerIndex:
        idx = self._indexes.get(resource)
        if idx is None:
            idx = self._indexes[resource] = OwnerIndex(self(resource))
        return idx

    def has(self, resource: str) -> bool:
        return resource in self._by_resource

    def start(self) -> None:
        for inf in self._by_resource.values():
            inf.start()

    def wait_synced(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        return all(inf.wait_synced(max(0.0, deadline - time.monotonic()))
                   for inf in self._by_resource.values())

    def stop(self) -> None:
        for inf in self._by_resource.values():
            inf.stop()


class Expectations:
    """Per controller key: how many creations and which deletions we still wait to see.

    A controller that created 500 pods must not create them again on its next sync just
    because the pod informer has not delivered them yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._adds: dict[str, int] = {}
        self._dels: dict[str, set[str]] = {}
        self._stamp: dict[str, float] = {}

    def expect(self, key: str, adds: int = 0, dels: set[str] | None = None) -> None:
        with self._lock:
            self._adds[key] = self._adds.get(key, 0) + adds
            self._dels.setdefault(key, set()).update(dels or ())
            self._stamp[key] = time.monotonic()

    def created(self, key: str, n: int = 1) -> None:
        with self._lock:
            if key in self._adds:
                self._adds[key] = max(0, self._adds[key] - n)

    def deleted(self, key: str, obj_key: str) -> None:
        with self._lock:
            self._dels.get(key, set()).discard(obj_key)

    def satisfied(self, key: str) -> bool:
        with self._lock:
            if key not in self._stamp:
                return True
            if time.monotonic() - self._stamp[key] > EXPECTATIONS_TTL:
                return True
            return self._adds.get(key, 0) <= 0 and not self._dels.get(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._adds.pop(key, None)
            self._dels.pop(key, None)
            self._stamp.pop(key, None)


class EventRecorder:
    """Writes v1 Events (``kubectl describe`` shows them) from one background thread, so a
    controller never waits on them; drops events when the API is slow (bounded queue)."""

    def __init__(self, client: KubeClient, component: str) -> None:
        self.client, self.component = client, component
        self._q: queue.Queue[Obj | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def event(self, obj: Obj, kind: str, reason: str, message: str,
              etype: str = "Normal", api_version: str = "v1") -> None:
        m = meta(obj)
        ns = m.get("namespace") or "default"
        ts = fmt_time()
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"generateName": f"{m.get('name', 'x')}.", "namespace": ns},
              "involvedObject": {"kind": kind, "apiVersion": api_version, "name": m.get("name"),
                                 "namespace": m.get("namespace"), "uid": m.get("uid"),
                                 "resourceVersion": m.get("resourceVersion")},
              "reason": reason, "message": message, "type": etype, "count": 1,
              "firstTimestamp": ts, "lastTimestamp": ts,
              "source": {"component": self.component}, "reportingComponent": self.component}
        try:
            self._q.put_nowait(ev)
        except queue.Full:
            pass

    def _run(self) -> None:
        while (ev := self._q.get()) is not None:
            try:
                self.client.create("events", ev, ev["metadata"]["namespace"])
            except Exception as exc:  # noqa: BLE001 - events are best effort
                log.debug("event %s not written: %s", ev["reason"], exc)

    def stop(self) -> None:
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass


class Context:
    """What every controller gets: the client, the shared informers, events."""

    def __init__(self, client: KubeClient, informers: Informers | None = None,
                 recorder: EventRecorder | None = None,
                 options: dict[str, str] | None = None) -> None:
        self.client = client
        #: the manager's flags a controller reads (``load_balancer_cidr``)
        self.options: dict[str, str] = options or {}
        self.informers = informers or Informers(client)
        self.recorder = recorder or EventRecorder(client, "knetlab-controller-manager")


class Controller:
    """Subclasses set ``name`` and implement ``setup`` (register informer handlers that
    call ``enqueue``) and ``sync(key)``."""

    name = "controller"
    workers = 1
    #: seconds to gather dependents' events before one sync (0: sync at once). A burst of
    #: 1,000 pod updates then costs a few syncs of the owner, not 1,000.
    batch = 0.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.queue = WorkQueue()
        self.expectations = Expectations()
        self._failures: dict[str, int] = {}
        self._batching: set[str] = set()
        self.syncs, self.sync_cpu = 0, 0.0  # for the manager's stop-time summary
        self._batch_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.setup()

    # -- to override -----------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def sync(self, key: str) -> None:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def informer(self, resource: str) -> Informer:
        return self.ctx.informers(resource)

    def enqueue(self, obj: Obj) -> None:
        self.queue.add(key_of(obj))

    def enqueue_batched(self, key: str) -> None:
        """Enqueue after ``batch`` seconds, once however many events arrive meanwhile."""
        if self.batch <= 0:
            self.queue.add(key)
            return
        with self._batch_lock:
            if key in self._batching:
                return
            self._batching.add(key)
        self.queue.add_after(key, self.batch)

    def on(self, resource: str, fn: Callable[[str, Obj, Obj | None], None]) -> None:
        self.informer(resource).add_handler(fn)

    def enqueue_owner(self, owner_kind: str) -> Callable[[str, Obj, Obj | None], None]:
        """A handler for dependents: enqueue the controller owner of the given kind (for
        the old object too, when the owner reference changed)."""

        def handler(_event: str, obj: Obj, old: Obj | None) -> None:
            for o in (obj, old):
                ref = controller_ref(o) if o else None
                if ref and ref.get("kind") == owner_kind:
                    self.enqueue_batched(f"{meta(o).get('namespace')}/{ref['name']}")
        return handler

    def track_dependents(self, owner_kind: str,
                         resource: str = "pods") -> None:
        """Enqueue the controller owner of every changed dependent, and lower the owner's
        expectations when its creations and deletions show up in the cache."""

        def handler(event: str, obj: Obj, old: Obj | None) -> None:
            ns = meta(obj).get("namespace")
            ref = controller_ref(obj)
            if ref and ref.get("kind") == owner_kind:
                key = f"{ns}/{ref['name']}"
                if event == "ADDED":
                    self.expectations.created(key)
                elif event == "DELETED" or (deleting(obj) and not (old and deleting(old))):
                    self.expectations.deleted(key, key_of(obj))
                self.enqueue_batched(key)
            old_ref = controller_ref(old) if old else None
            if old_ref and old_ref.get("kind") == owner_kind and old_ref != ref:
                self.enqueue_batched(f"{ns}/{old_ref['name']}")

        self.on(resource, handler)

    def delete_expected(self, owner_key: str, obj: Obj, resource: str = "pods") -> None:
        """Delete a dependent whose deletion ``expectations`` waits for; one already gone
        (404) is no longer waited for."""
        m = meta(obj)
        try:
            self.client.delete(resource, m["name"], m.get("namespace"))
        except ApiError as exc:
            if exc.code != 404:
                self.expectations.deleted(owner_key, key_of(obj))
                raise
            self.expectations.deleted(owner_key, key_of(obj))

    def claim(self, owner: Obj, kind: str, api_version: str, matches: Callable[[Obj], bool],
              resource: str = "pods") -> list[Obj]:
        """kube's ControllerRefManager: the objects this owner controls. Orphans that match
        are adopted, owned ones that stopped matching are released (both via the API)."""
        idx = self.ctx.informers.owner_index(resource)
        ns = meta(owner).get("namespace", "")
        owned = []
        for obj in idx.owned(meta(owner)["uid"]):
            if matches(obj) or deleting(obj):
                owned.append(obj)
            elif not deleting(owner):
                refs = [r for r in meta(obj).get("ownerReferences") or []
                        if r.get("uid") != meta(owner)["uid"]]
                ignore_missing(lambda o=obj, r=refs: self.client.patch(
                    resource, meta(o)["name"], {"metadata": {"ownerReferences": r}}, ns))
        if deleting(owner):
            return owned
        for obj in idx.orphans(ns):
            if deleting(obj) or not matches(obj):
                continue
            refs = [*(meta(obj).get("ownerReferences") or []),
                    owner_ref(owner, kind, api_version)]
            patched = ignore_missing(lambda o=obj, r=refs: self.client.patch(
                resource, meta(o)["name"], {"metadata": {"ownerReferences": r}}, ns))
            if patched:
                owned.append(patched)
        return owned

    def patch_status(self, resource: str, obj: Obj, status: Obj) -> None:
        """Write ``status`` keys that differ from the cached object's (merge patch on the
        status subresource: no conflicts with spec writers)."""
        have = obj.get("status") or {}
        diff = {k: v for k, v in status.items() if have.get(k) != v}
        if diff:
            m = meta(obj)
            ignore_missing(lambda: self.client.patch(resource, m["name"], {"status": diff},
                                                     m.get("namespace"), subresource="status"))

    def event(self, obj: Obj, kind: str, reason: str, message: str, etype: str = "Normal",
              api_version: str = "v1") -> None:
        self.ctx.recorder.event(obj, kind, reason, message, etype, api_version)

    # -- workers -------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.queue.shutdown()

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            with self._batch_lock:
                self._batching.discard(key)
            t0 = time.thread_time()
            try:
                self.sync(key)
                self._failures.pop(key, None)
            except ApiError as exc:
                self._retry(key, exc, quiet=exc.code == 409)
            except Exception as exc:  # noqa: BLE001 - one bad object must not stop the worker
                log.exception("%s: sync %s failed", self.name, key)
                self._retry(key, exc, quiet=True)
            finally:
                self.queue.done(key)
                self.syncs += 1
                self.sync_cpu += time.thread_time() - t0

    def _retry(self, key: str, exc: Exception, quiet: bool = False) -> None:
        n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(0.05 * 2 ** (n - 1), 30.0)
        (log.debug if quiet else log.warning)("%s: sync %s: %s (retry in %.2fs)",
                                             self.name, key, exc, delay)
        self.queue.add_after(key, delay)


def ignore_missing(fn: Callable[[], Any]) -> Any:
    """Run an API write; a 404 (already gone) is success for an idempotent controller."""
    try:
        return fn()
    except ApiError as exc:
        if exc.code != 404:
            raise
        return None


class OwnerIndex:
    """Objects of one informer indexed by their controller owner's uid ("" for orphans),
    so a controller finds its pods without scanning every pod in the cluster."""

    def __init__(self, informer: Informer) -> None:
        self._lock = threading.Lock()
        self._by_owner: dict[str, dict[str, Obj]] = {}
        self._owner_of: dict[str, str] = {}
        informer.add_handler(self._on)

    def _on(self, event: str, obj: Obj, _old: Obj | None) -> None:
        key = key_of(obj)
        ref = controller_ref(obj)
        owner = ref.get("uid", "") if ref else ""
        with self._lock:
            prev = self._owner_of.pop(key, None)
            if prev is not None:
                self._by_owner.get(prev, {}).pop(key, None)
            if event != "DELETED":
                self._owner_of[key] = owner
                self._by_owner.setdefault(owner, {})[key] = obj

    def owned(self, owner_uid: str) -> list[Obj]:
        with self._lock:
            return list(self._by_owner.get(owner_uid, {}).values())

    def orphans(self, namespace: str) -> list[Obj]:
        with self._lock:
            return [o for o in self._by_owner.get("", {}).values()
                    if meta(o).get("namespace") == namespace]
