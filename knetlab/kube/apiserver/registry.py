"""The generic registry: one store for every resource, backed by etcd.

Every write is: read the current object (with its etcd ``mod_revision``), default,
prepare (strategy hooks), validate, then one etcd transaction comparing ``mod_revision``
(or ``create_revision == 0`` for create). ``resourceVersion`` is etcd's ``mod_revision``;
it is stripped before storing and set from the key's revision on every read, as upstream.
A lost compare is a 409 Conflict for a PUT carrying a resourceVersion and a silent retry
for patches and unconditional updates. Nothing is written before every check passed, so
a failed request leaves nothing half-created.

Deletion: pods bound to a node are deleted gracefully (``deletionTimestamp`` +
``deletionGracePeriodSeconds``; the kubelet finishes with grace 0); objects with
finalizers (including ``foregroundDeletion``/``orphan`` added from the propagation policy)
are only marked until an update removes the last one; namespaces go Terminating and
their content is deleted in the background (see namespaces.py).
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import secrets
import string
import uuid
from collections.abc import Callable
from typing import Any

from ..etcd import KV, Compacted, EtcdClient, prefix_end
from . import strategies
from .defaults import apply_defaults
from .errors import (
    already_exists,
    bad_request,
    conflict,
    forbidden,
    gone,
    invalid,
    namespace_not_found,
    not_found,
)
from .resources import BY_PLURAL, Resource
from .validation import validate, validate_update

Obj = dict[str, Any]
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ALNUM = string.ascii_lowercase + string.digits


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode(kv: KV) -> Obj:
    obj = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


def encode(obj: Obj) -> bytes:
    meta = obj.get("metadata") or {}
    rv = meta.pop("resourceVersion", None)
    try:
        return json.dumps(obj, separators=(",", ":")).encode()
    finally:
        if rv is not None:
            meta["resourceVersion"] = rv


class _Lost(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The compare of an etcd transaction failed: someone wrote in between."""


class Registry:
    def __init__(self, etcd: EtcdClient, service_cidr: str,
                 node_ports: tuple[int, int] = (30000, 32767)) -> None:
        self.etcd = etcd
        self.alloc = strategies.Allocator(service_cidr, node_ports)

    # -- reads -----------------------------------------------------------------------
    async def read(self, res: Resource, ns: str | None, name: str) -> tuple[Obj, int]:
        _, kv = await self.etcd.get(res.key(ns, name))
        if kv is None:
            raise not_found(res, name)
        return decode(kv), kv.mod_revision

    async def get(self, res: Resource, ns: str | None, name: str) -> Obj:
        return (await self.read(res, ns, name))[0]

    async def list(self, res: Resource, ns: str | None,
                   match: Callable[[Obj], bool] | None = None, limit: int = 0,
                   cont: str = "") -> Obj:
        prefix = res.list_prefix(ns)
        start, revision = prefix, 0
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                start, revision = token["start"], int(token["rv"])
            except (ValueError, KeyError, TypeError):
                raise bad_request("continue key is not valid") from None
            if not start.startswith(prefix):
                raise bad_request("continue key is not valid")
        try:
            rev, kvs, _, _ = await self.etcd.range(start, range_end=prefix_end(prefix),
                                                   revision=revision)
        except Compacted:
            raise gone("The provided continue parameter is too old to display a consistent "
                       "list result. You can start a new list without the continue "
                       "parameter.") from None
        items: list[Obj] = []
        meta: Obj = {"resourceVersion": str(revision or rev)}
        for kv in kvs:
            obj = decode(kv)
            if match is not None and not match(obj):
                continue
            if limit and len(items) == limit:
                token = {"rv": revision or rev, "start": kv.key}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                break
            items.append(obj)
        return {"kind": f"{res.kind}List", "apiVersion": res.group_version, "metadata": meta,
                "items": items}

    async def check_namespace(self, ns: str) -> None:
        _, kv = await self.etcd.get(BY_PLURAL["namespaces"].key(None, ns))
        if kv is None:
            raise namespace_not_found(ns)
        if json.loads(kv.value).get("metadata", {}).get("deletionTimestamp"):
            raise forbidden(f"unable to create new content in namespace {ns} because it is "
                            f"being terminated")

    # -- create ----------------------------------------------------------------------
    async def create(self, res: Resource, ns: str | None, obj: Obj, dry_run: bool = False) -> Obj:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request is not an object")
        obj["apiVersion"], obj["kind"] = res.group_version, res.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = ns = ns or meta.get("namespace") or "default"
            if res.kind != "Namespace":
                await self.check_namespace(ns)
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(ALNUM) for _ in range(5))
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "selfLink", "managedFields"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if res.generation:
            meta["generation"] = 1
        apply_defaults(res.kind, obj)
        strategies.prepare_create(res, obj)
        causes = validate(res, obj)
        if causes:
            raise invalid(res, meta.get("name", ""), causes)
        key = res.key(ns, meta["name"])
        if res.kind == "Service":
            async with self.alloc.lock:
                services = (await self.list(res, None))["items"]
                self.alloc.allocate(res, obj, services)
                return await self._put_new(res, key, obj, dry_run)
        return await self._put_new(res, key, obj, dry_run)

    async def _put_new(self, res: Resource, key: str, obj: Obj, dry_run: bool) -> Obj:
        if dry_run:
            _, kv = await self.etcd.get(key)
            if kv is not None:
                raise already_exists(res, obj["metadata"]["name"])
            return obj
        rev = await self.etcd.put_if(key, encode(obj), 0)
        if rev is None:
            raise already_exists(res, obj["metadata"]["name"])
        obj["metadata"]["resourceVersion"] = str(rev)
        return obj

    # -- update / patch ----------------------------------------------------------------
    async def update(self, res: Resource, ns: str | None, name: str, body: Obj,
                     sub: str = "", dry_run: bool = False) -> Obj:
        """PUT; a body without resourceVersion is an unconditional update."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not an object")
        bmeta = body.get("metadata") or {}
        if bmeta.get("name") and bmeta["name"] != name:
            raise bad_request(f'the name of the object ({bmeta["name"]}) does not match the '
                              f'name on the URL ({name})')
        # A PUT is a patch that replaces the whole object: one read-commit-retry loop.
        return await self.patch(res, ns, name, lambda _cur: copy.deepcopy(body), sub, dry_run)

    async def patch(self, res: Resource, ns: str | None, name: str,
                    apply: Callable[[Obj], Obj], sub: str = "", dry_run: bool = False) -> Obj:
        """Read, apply the patch function to the current object (or its Scale), commit;
        retried when another write came in between, unless the result pins a
        resourceVersion (then a lost race is a 409 Conflict, as for a PUT carrying one)."""
        for _ in range(20):
            old, rev = await self.read(res, ns, name)
            cur = strategies.to_scale(old) if sub == "scale" else copy.deepcopy(old)
            new = apply(cur)
            if not isinstance(new, dict):
                raise bad_request("the patch did not produce an object")
            pinned = (new.get("metadata") or {}).get("resourceVersion")
            explicit = bool(pinned) and pinned != str(rev)
            if sub == "scale":
                new = strategies.from_scale(res, old, new)
            try:
                return await self.commit(res, ns, name, new, old, rev, sub, dry_run)
            except _Lost:
                if explicit:
                    raise conflict(res, name) from None
        raise conflict(res, name)

    async def commit(self, res: Resource, ns: str | None, name: str, new: Obj, old: Obj,
                     rev: int, sub: str, dry_run: bool) -> Obj:
        """Write ``new`` over ``old`` (read at ``rev``): the shared end of update and patch."""
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv and rv != str(rev):
            raise conflict(res, name)
        if sub == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        new["apiVersion"], new["kind"] = res.group_version, res.kind
        meta = new.setdefault("metadata", {})
        ometa = old["metadata"]
        for k in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation"):
            if k in ometa:
                meta[k] = ometa[k]
            else:
                meta.pop(k, None)
        if sub != "status":
            keep = "status" in res.subresources and res.kind != "Node" or sub == "scale"
            if keep and sub != "binding":  # a binding also sets the PodScheduled condition
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            apply_defaults(res.kind, new)
            strategies.prepare_update(res, new, old)
            if res.generation and new.get("spec") != old.get("spec"):
                meta["generation"] = int(ometa.get("generation", 1)) + 1
            causes = validate_update(res, new, old)
            if causes:
                raise invalid(res, name, causes)
            if res.kind == "Service" and new["spec"].get("type") in ("NodePort", "LoadBalancer"):
                async with self.alloc.lock:
                    others = [s for s in (await self.list(res, None))["items"]
                              if s["metadata"]["uid"] != ometa["uid"]]
                    used = {p.get("nodePort") for s in others
                            for p in (s.get("spec") or {}).get("ports") or []}
                    self.alloc._node_ports(res, name, new["spec"], used)
        meta["resourceVersion"] = str(rev)
        if dry_run:
            return new
        key = res.key(ns, name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and \
                not meta.get("deletionGracePeriodSeconds") and res.kind != "Namespace":
            if await self.etcd.delete_if(key, rev) is None:
                raise _Lost()
            return new
        data = encode(new)
        if data == encode(old):
            return old  # a no-op write changes nothing, not even the resourceVersion
        new_rev = await self.etcd.put_if(key, data, rev)
        if new_rev is None:
            raise _Lost()
        meta["resourceVersion"] = str(new_rev)
        return new

    # -- delete ------------------------------------------------------------------------
    async def delete(self, res: Resource, ns: str | None, name: str, options: Obj | None = None,
                     dry_run: bool = False) -> tuple[Obj, bool]:
        """Delete or mark for deletion; (object, gone now)."""
        options = options or {}
        if res.kind == "Namespace" and name in SYSTEM_NAMESPACES:
            raise forbidden(f'namespaces "{name}" is forbidden: this namespace may not be '
                            f'deleted')
        policy = options.get("propagationPolicy")
        if options.get("orphanDependents") is True and not policy:
            policy = "Orphan"
        for _ in range(20):
            obj, rev = await self.read(res, ns, name)
            meta = obj["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise conflict(res, name, f"Precondition failed: UID in precondition: "
                               f"{pre['uid']}, UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != str(rev):
                raise conflict(res, name)
            finalizers = list(meta.get("finalizers") or [])
            extra = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(policy or "")
            if extra and extra not in finalizers:
                finalizers.append(extra)
            grace = 0
            if res.kind == "Pod":
                grace = strategies.pod_grace(obj, options.get("gracePeriodSeconds"))
                old_grace = meta.get("deletionGracePeriodSeconds")
                if old_grace is not None and grace > old_grace:
                    grace = old_grace
            if res.kind == "Namespace":
                finalizers = finalizers or ["kubernetes"]  # our namespace deleter finalizes
            if not finalizers and grace == 0:
                if dry_run:
                    return obj, True
                drev = await self.etcd.delete_if(res.key(ns, name), rev)
                if drev is None:
                    continue
                meta["resourceVersion"] = str(drev)
                return obj, True
            new = copy.deepcopy(obj)
            nmeta = new["metadata"]
            stamp = datetime.datetime.now(datetime.UTC) + \
                datetime.timedelta(seconds=grace)
            old_grace = nmeta.get("deletionGracePeriodSeconds")
            if not nmeta.get("deletionTimestamp") or old_grace is not None and grace < old_grace:
                # a second delete only ever shortens the grace period, as upstream
                nmeta["deletionTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
                nmeta["deletionGracePeriodSeconds"] = grace
            if finalizers and res.kind != "Namespace":
                nmeta["finalizers"] = finalizers
            if res.kind == "Namespace":
                new.setdefault("status", {})["phase"] = "Terminating"
            if dry_run:
                return new, False
            if new == obj:
                return obj, False
            nrev = await self.etcd.put_if(res.key(ns, name), encode(new), rev)
            if nrev is None:
                continue
            nmeta["resourceVersion"] = str(nrev)
            return new, False
        raise conflict(res, name)

    async def remove(self, res: Resource, ns: str | None, name: str) -> None:
        """Delete outright, whatever its finalizers (the namespace deleter's last step)."""
        await self.etcd.delete(res.key(ns, name))

