"""The garbage collector and PodGC.

Garbage collector (kube's, reduced to the resources the lab's controllers own): an index
of every watched object by uid and of dependents by owner uid. An object whose owners
(by uid) are all gone is deleted (Background); owners that are gone but not the only ones
are dropped from its ownerReferences. Owners are looked up in the caches first and, before
anything is deleted, confirmed gone with a live GET (a lagging cache must not delete a
live object's pods). An owner being deleted with the ``foregroundDeletion`` finalizer
gets its dependents deleted (Foreground too, so chains cascade) and loses the finalizer
once no blocking dependent is left; with ``orphan`` its dependents lose their
ownerReference to it, then it loses the finalizer.

PodGC: a pod bound to a node that no longer exists is deleted at once (grace 0), so its
controller creates a replacement the scheduler puts elsewhere.
"""

from __future__ import annotations

import logging
import threading

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller, ignore_missing
from knetlab.kube.controllers.util import Obj, deleting, meta

log = logging.getLogger("knetlab.kube.controllers.gc")

#: kind -> plural resource, for owner lookups (kinds the lab's API serves)
KIND_RESOURCE = {"Pod": "pods", "ReplicaSet": "replicasets", "Deployment": "deployments",
                 "DaemonSet": "daemonsets", "StatefulSet": "statefulsets", "Job": "jobs",
                 "Service": "services", "EndpointSlice": "endpointslices", "Node": "nodes",
                 "ConfigMap": "configmaps", "Secret": "secrets", "Namespace": "namespaces",
                 "ControllerRevision": "controllerrevisions", "Endpoints": "endpoints",
                 "ServiceAccount": "serviceaccounts", "Ingress": "ingresses"}
CLUSTER_SCOPED = {"Node", "Namespace"}
#: the resources whose objects the collector watches (owners and dependents)
WATCHED = ("pods", "replicasets", "deployments", "daemonsets", "statefulsets", "jobs",
           "services", "endpointslices")
FOREGROUND, ORPHAN = "foregroundDeletion", "orphan"


class GarbageCollector(Controller):
    name = "garbagecollector"

    def setup(self) -> None:
        self._lock = threading.Lock()
        self._uids: dict[str, tuple[str, str]] = {}  # uid -> (resource, key)
        self._dependents: dict[str, set[tuple[str, str]]] = {}  # owner uid -> {(res, key)}
        for res in WATCHED:
            self.on(res, lambda e, obj, old, r=res: self._on(r, e, obj, old))

    def _on(self, res: str, event: str, obj: Obj, old: Obj | None) -> None:
        key, u = key_of(obj), meta(obj).get("uid", "")
        refs = [r.get("uid") for r in meta(obj).get("ownerReferences") or []]
        old_refs = [r.get("uid") for r in meta(old).get("ownerReferences") or []] if old else []
        with self._lock:
            for ou in old_refs:
                self._dependents.get(ou, set()).discard((res, key))
            if event == "DELETED":
                self._uids.pop(u, None)
                deps = list(self._dependents.get(u, ()))
            else:
                self._uids[u] = (res, key)
                for ou in refs:
                    self._dependents.setdefault(ou, set()).add((res, key))
                deps = []
        if event == "DELETED":
            for r, k in deps:  # maybe orphaned now
                self.queue.add(f"{r}|{k}")
            for ou in refs:  # an owner may be waiting for this dependent to go
                owner = self._uids.get(ou)
                if owner:
                    self.queue.add(f"{owner[0]}|{owner[1]}")
            return
        fins = meta(obj).get("finalizers") or []
        if (event == "ADDED" and refs) or refs != old_refs or (
                deleting(obj) and (FOREGROUND in fins or ORPHAN in fins)):
            self.queue.add(f"{res}|{key}")

    def dependents(self, owner_uid: str) -> list[tuple[str, Obj]]:
        with self._lock:
            items = list(self._dependents.get(owner_uid, ()))
        out = []
        for res, key in items:
            ns, _, name = key.rpartition("/")
            obj = self.informer(res).get(name, ns or None)
            if obj is not None:
                out.append((res, obj))
        return out

    def sync(self, item: str) -> None:
        res, _, key = item.partition("|")
        ns, _, name = key.rpartition("/")
        obj = self.informer(res).get(name, ns or None)
        if obj is None:
            return
        fins = meta(obj).get("finalizers") or []
        if deleting(obj) and ORPHAN in fins:
            self._orphan(res, obj)
        elif deleting(obj) and FOREGROUND in fins:
            self._foreground(res, obj)
        self._collect(res, obj)

    def _orphan(self, res: str, obj: Obj) -> None:
        u = meta(obj)["uid"]
        for dres, dep in self.dependents(u):
            refs = [r for r in meta(dep).get("ownerReferences") or [] if r.get("uid") != u]
            ignore_missing(lambda d=dep, r=refs, dr=dres: self.client.patch(
                dr, meta(d)["name"], {"metadata": {"ownerReferences": r}},
                meta(d).get("namespace")))
        self._drop_finalizer(res, obj, ORPHAN)

    def _foreground(self, res: str, obj: Obj) -> None:
        u = meta(obj)["uid"]
        blocking = 0
        for dres, dep in self.dependents(u):
            ref = next((r for r in meta(dep).get("ownerReferences") or []
                        if r.get("uid") == u), {})
            if ref.get("blockOwnerDeletion"):
                blocking += 1
            if not deleting(dep):
                ignore_missing(lambda d=dep, dr=dres: self.client.delete(
                    dr, meta(d)["name"], meta(d).get("namespace"), propagation="Foreground"))
        if blocking == 0:
            self._drop_finalizer(res, obj, FOREGROUND)

    def _drop_finalizer(self, res: str, obj: Obj, fin: str) -> None:
        rest = [f for f in meta(obj).get("finalizers") or [] if f != fin]
        ignore_missing(lambda: self.client.patch(
            res, meta(obj)["name"], {"metadata": {"finalizers": rest or None}},
            meta(obj).get("namespace")))

    def _owner_exists(self, ref: Obj, ns: str | None) -> bool:
        """By the cache first; a miss is confirmed with a live GET."""
        kind = ref.get("kind", "")
        res = KIND_RESOURCE.get(kind)
        if res is None:
            return True  # a kind we cannot look up: never collect on a guess
        with self._lock:
            if ref.get("uid") in self._uids:
                return True
        try:
            live = self.client.get(res, ref.get("name", ""),
                                   None if kind in CLUSTER_SCOPED else ns)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return meta(live).get("uid") == ref.get("uid")

    def _collect(self, res: str, obj: Obj) -> None:
        refs = meta(obj).get("ownerReferences") or []
        if not refs or deleting(obj):
            return
        ns = meta(obj).get("namespace")
        gone = [r for r in refs if not self._owner_exists(r, ns)]
        if not gone:
            return
        m = meta(obj)
        if len(gone) == len(refs):
            log.info("deleting %s %s/%s: its owners are gone", res, ns, m["name"])
            ignore_missing(lambda: self.client.delete(res, m["name"], ns,
                                                      propagation="Background",
                                                      uid=m["uid"]))
            return
        keep = [r for r in refs if r not in gone]
        ignore_missing(lambda: self.client.patch(res, m["name"],
                                                 {"metadata": {"ownerReferences": keep}}, ns))


class PodGC(Controller):
    name = "podgc"
    SCAN = "-scan-"
    PERIOD = 20.0  # kube's podgc runs every 20 s; node deletions trigger it at once

    def setup(self) -> None:
        self.pods = self.informer("pods")
        self.nodes = self.informer("nodes")
        self.on("nodes", lambda e, _obj, _o: self.queue.add(self.SCAN) if e == "DELETED"
                else None)
        self.queue.add_after(self.SCAN, self.PERIOD)

    def sync(self, key: str) -> None:
        try:
            self._scan()
        finally:
            self.queue.add_after(self.SCAN, self.PERIOD)

    def _scan(self) -> None:
        known = {meta(n)["name"] for n in self.nodes.items()}
        missing: dict[str, bool] = {}
        for pod in self.pods.items():
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or node in known:
                continue
            if node not in missing:  # the node cache may lag: ask the API
                try:
                    self.client.get("nodes", node)
                    missing[node] = False
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    missing[node] = True
            if missing[node]:
                m = meta(pod)
                log.info("deleting pod %s/%s: node %s is gone", m["namespace"], m["name"], node)
                ignore_missing(lambda m=m: self.client.delete(
                    "pods", m["name"], m["namespace"], grace_period=0, uid=m.get("uid")))
