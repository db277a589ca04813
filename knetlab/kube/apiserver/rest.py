"""The REST verbs over the registry: bodies in (JSON, protobuf, YAML), objects or Tables out.

``Rest`` is what the app's dispatcher calls once the URL is parsed: get, list (with
selectors, limit/continue, Table), watch (chunked JSON lines fed by the cacher), create,
update, patch (merge, strategic, JSON patch, and a simple server-side apply), delete and
deletecollection, the status/scale subresources and pod binding/eviction.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from typing import Any

import yaml
from aiohttp import web

from ..etcd import Compacted, EtcdError
from . import tables
from .errors import (
    StatusError,
    bad_request,
    conflict,
    gone,
    status_success,
    too_large,
    unsupported_media,
)
from .namespaces import NamespaceDeleter
from .registry import Registry
from .resources import BY_PLURAL, Resource
from .selectors import matcher
from .watch import Cacher, Watcher, etcd_events

log = logging.getLogger("knetlab.kube.apiserver.rest")
Obj = dict[str, Any]
MAX_BODY = 3 * 1024 * 1024
BOOKMARK_EVERY = 60.0  # kube's cacher: bookmarkFrequency = time.Minute
# An idle watch stream wakes this often to see whether its client went away (aiohttp tells a
# handler nothing when its client closes between writes): every wake-up of every watch is
# the API server's idle cost, so not every 2 s; a gone client costs only a queue meanwhile.
IDLE_CHECK = 15.0
PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json",
               "application/json-patch+json", "application/apply-patch+yaml")


def schema() -> Any:
    """The schema package (decode_protobuf, patches, unknown_fields, openapi), or None."""
    try:
        from knetlab.kube import schema as s
    except ImportError:
        return None
    return s


def json_merge(orig: Any, patch: Any) -> Any:
    """RFC 7386, used when the schema package is missing."""
    if not isinstance(patch, dict):
        return patch
    out = dict(orig) if isinstance(orig, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge(out.get(k), v)
    return out


def prune(obj: Any, path: str) -> None:
    """Delete the field at a dotted path like ``.spec.containers[0].imagee``."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    cur = obj
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part.startswith("["):
            idx = int(part[1:-1])
            if not isinstance(cur, list) or idx >= len(cur):
                return
            cur = cur[idx]
        elif isinstance(cur, dict) and part in cur:
            if last:
                del cur[part]
                return
            cur = cur[part]
        else:
            return


def wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json",
                        headers=headers)


class Rest:
    def __init__(self, reg: Registry, cacher: Cacher, ns_deleter: NamespaceDeleter) -> None:
        self.reg, self.cacher, self.ns_deleter = reg, cacher, ns_deleter

    # -- bodies ------------------------------------------------------------------------
    async def body(self, request: web.Request) -> tuple[Any, str]:
        """The decoded body and its media type."""
        if (request.content_length or 0) > MAX_BODY:
            raise too_large()
        try:  # the whole body (content.read(n) returns only what has arrived so far)
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large() from None
        if len(raw) > MAX_BODY:
            raise too_large()
        ctype = request.content_type or "application/json"
        if ctype not in PATCH_TYPES:
            # Clients label bodies loosely (the Python client may send JSON as
            # application/octet-stream): sniff the protobuf magic, else JSON, else YAML.
            if raw.startswith(b"k8s\x00"):
                ctype = "application/vnd.kubernetes.protobuf"
            elif raw.lstrip()[:1] in (b"{", b"[", b""):
                ctype = "application/json"
            else:
                ctype = "application/yaml"
        try:
            if ctype == "application/vnd.kubernetes.protobuf":
                s = schema()
                if s is None:
                    raise unsupported_media(ctype)
                return s.decode_protobuf(raw), ctype
            if ctype in ("application/yaml", "application/apply-patch+yaml", "text/yaml"):
                return yaml.safe_load(raw.decode() or "{}"), ctype
            if ctype.endswith("json") or ctype == "text/plain" or not ctype:
                return json.loads(raw or b"{}"), ctype
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the body of the request could not be decoded: {exc}") from None
        raise unsupported_media(ctype)

    def field_validation(self, request: web.Request, obj: Any,
                         headers: dict[str, str]) -> None:
        """Unknown fields: 400 under ``fieldValidation=Strict``; otherwise dropped from the
        object as upstream's typed decoding drops them, with a Warning unless Ignore."""
        mode = request.query.get("fieldValidation", "Warn")
        s = schema()
        if s is None or not isinstance(obj, dict):
            return
        unknown = s.unknown_fields(obj)
        if not unknown:
            return
        if mode == "Strict":
            raise bad_request("strict decoding error: " + ", ".join(
                f'unknown field "{u.lstrip(".")}"' for u in unknown))
        for path in unknown:
            prune(obj, path)
        if mode != "Ignore":
            headers["Warning"] = ", ".join(f'299 - "unknown field \\"{u.lstrip(".")}\\""'
                                           for u in unknown)

    # -- reads -------------------------------------------------------------------------
    async def get(self, request: web.Request, res: Resource, ns: str | None, name: str,
                  sub: str) -> web.Response:
        obj = await self.reg.get(res, ns, name)
        if sub == "scale":
            from .strategies import to_scale
            return reply(to_scale(obj))
        if wants_table(request) and not sub:
            return reply(tables.table(res.kind, [obj], {"resourceVersion": obj["metadata"].get(
                "resourceVersion", "")}, request.query.get("includeObject", "Metadata")))
        return reply(obj)

    async def list(self, request: web.Request, res: Resource, ns: str | None) -> web.Response:
        q = request.query
        match = matcher(q.get("labelSelector", ""), q.get("fieldSelector", ""))
        try:
            limit = int(q.get("limit", "0") or 0)
        except ValueError:
            raise bad_request("limit must be an integer") from None
        lst = await self.reg.list(res, ns, match, limit, q.get("continue", ""))
        if wants_table(request):
            return reply(tables.table(res.kind, lst["items"], lst["metadata"],
                                      q.get("includeObject", "Metadata")))
        return reply(lst)

    # -- watch -------------------------------------------------------------------------
    async def watch(self, request: web.Request, res: Resource, ns: str | None,
                    name: str | None) -> web.StreamResponse:
        q = request.query
        fsel = q.get("fieldSelector", "")
        if name:
            fsel = ",".join(filter(None, [fsel, f"metadata.name={name}"]))
        match = matcher(q.get("labelSelector", ""), fsel)
        rv = q.get("resourceVersion", "")
        try:
            timeout = float(q.get("timeoutSeconds", "") or 1800)
            start_rev = int(rv) if rv not in ("", "0") else 0
        except ValueError:
            raise bad_request(f"invalid resource version {rv!r}") from None
        as_table, include = wants_table(request), q.get("includeObject", "Metadata")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        initial = q.get("sendInitialEvents") == "true"
        w = Watcher(res.list_prefix(ns), match, start_rev)
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        pump: asyncio.Task[None] | None = None
        first = [True]

        async def send(typ: str, obj: Obj) -> None:
            if as_table and typ in ("ADDED", "MODIFIED", "DELETED"):
                obj = tables.table(res.kind, [obj], {"resourceVersion": obj["metadata"].get(
                    "resourceVersion", "")}, include, headers=first[0])
                first[0] = False
            await resp.write((dumps({"type": typ, "object": obj}) + "\n").encode())

        def bookmark(rev: int, extra: Obj | None = None) -> Obj:
            meta: Obj = {"resourceVersion": str(rev)}
            if extra:
                meta["annotations"] = extra
            return {"kind": res.kind, "apiVersion": res.group_version, "metadata": meta}

        try:
            if initial or not start_rev:
                self.cacher.add(w)
                lst = await self.reg.list(res, ns, match)
                w.min_rev = int(lst["metadata"]["resourceVersion"])
                await resp.prepare(request)
                for item in lst["items"]:
                    await send("ADDED", item)
                if initial:
                    await send("BOOKMARK", bookmark(w.min_rev,
                                                    {"k8s.io/initial-events-end": "true"}))
            elif not self.cacher.add(w, replay_after=start_rev):
                pump = asyncio.create_task(self._pump(w, start_rev))
            if not resp.prepared:
                await resp.prepare(request)
            await self._stream(request, w, send, bookmark if bookmarks else None,
                               time.monotonic() + timeout, pump is None)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.cacher.remove(w)
            if pump is not None:
                pump.cancel()
        return resp

    async def _pump(self, w: Watcher, from_rev: int) -> None:
        """Feed a watcher from its own etcd watch (resume point older than the buffer)."""
        try:
            async for typ, obj, rev in etcd_events(self.reg.etcd, w, from_rev):
                await w.queue.put((typ, obj, rev))
        except Compacted:
            status = gone(f"too old resource version: {from_rev}").status()
            await w.queue.put(("ERROR", status, 0))
        except EtcdError as exc:
            log.warning("etcd watch for %s: %s", w.prefix, exc)
        await w.queue.put(None)

    async def _stream(self, request: web.Request, w: Watcher, send: Any, bookmark: Any,
                      deadline: float, cached: bool) -> None:
        last_bookmark = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = await asyncio.wait_for(w.queue.get(), min(left, IDLE_CHECK))
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    return  # the client went away: free the watcher
                if bookmark and cached and time.monotonic() - last_bookmark > BOOKMARK_EVERY \
                        and self.cacher.rev > w.min_rev and w.queue.empty():
                    await send("BOOKMARK", bookmark(self.cacher.rev))
                    last_bookmark = time.monotonic()
                continue
            if item is None:
                return
            typ, obj, rev = item
            if typ != "ERROR" and rev <= w.min_rev:
                continue  # already in the initial list
            await send(typ, obj)
            if typ == "ERROR":
                return

    # -- writes ------------------------------------------------------------------------
    async def create(self, request: web.Request, res: Resource, ns: str | None) -> web.Response:
        obj, _ = await self.body(request)
        headers: dict[str, str] = {}
        self.field_validation(request, obj, headers)
        dry = request.query.get("dryRun") == "All"
        out = await self.reg.create(res, ns, obj, dry_run=dry)
        return reply(out, 201, headers)

    async def update(self, request: web.Request, res: Resource, ns: str | None, name: str,
                     sub: str) -> web.Response:
        obj, _ = await self.body(request)
        headers: dict[str, str] = {}
        if sub not in ("scale",):
            self.field_validation(request, obj, headers)
        dry = request.query.get("dryRun") == "All"
        out = await self.reg.update(res, ns, name, obj, sub, dry)
        if sub == "scale":
            from .strategies import to_scale
            out = to_scale(out)
        return reply(out, 200, headers)

    async def patch(self, request: web.Request, res: Resource, ns: str | None, name: str,
                    sub: str) -> web.Response:
        patch, ctype = await self.body(request)
        if ctype not in PATCH_TYPES:
            raise unsupported_media(ctype)
        s = schema()
        dry = request.query.get("dryRun") == "All"
        headers: dict[str, str] = {}

        def apply(cur: Obj) -> Obj:
            try:
                if ctype == "application/json-patch+json":
                    if s is None:
                        raise bad_request("json patch is not available")
                    return s.json_patch(cur, patch)
                if not isinstance(patch, dict):
                    raise bad_request("the patch must be a JSON object")
                if ctype == "application/merge-patch+json" or s is None:
                    out = s.json_merge(cur, patch) if s else json_merge(cur, patch)
                else:
                    out = s.strategic_merge(cur, patch)
            except StatusError:
                raise
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise StatusError(422, "Invalid", f"the server rejected our request due to "
                                  f"an error in our request: {exc}") from None
            if sub != "scale":
                self.field_validation(request, out, headers)
            return out

        if ctype == "application/apply-patch+yaml":
            return await self.server_side_apply(request, res, ns, name, patch, dry)
        out = await self.reg.patch(res, ns, name, apply, sub, dry)
        if sub == "scale":
            from .strategies import to_scale
            out = to_scale(out)
        return reply(out, 200, headers)

    async def server_side_apply(self, request: web.Request, res: Resource, ns: str | None,
                                name: str, body: Any, dry: bool) -> web.Response:
        """A simple server-side apply: create when absent, else a strategic merge of the
        applied configuration (no managedFields, no field ownership conflicts)."""
        if not isinstance(body, dict):
            raise bad_request("the apply configuration must be an object")
        body.setdefault("metadata", {}).setdefault("name", name)
        try:
            await self.reg.get(res, ns, name)
        except StatusError as exc:
            if exc.code != 404:
                raise
            return reply(await self.reg.create(res, ns, copy.deepcopy(body), dry), 201)
        s = schema()

        def apply(cur: Obj) -> Obj:
            b = copy.deepcopy(body)
            b.get("metadata", {}).pop("resourceVersion", None)
            return s.strategic_merge(cur, b) if s else json_merge(cur, b)
        return reply(await self.reg.patch(res, ns, name, apply, "", dry))

    async def delete(self, request: web.Request, res: Resource, ns: str | None,
                     name: str) -> web.Response:
        opts = await self.delete_options(request)
        dry = request.query.get("dryRun") == "All" or "All" in (opts.get("dryRun") or [])
        obj, done = await self.reg.delete(res, ns, name, opts, dry)
        if res.kind == "Namespace" and not dry:
            self.ns_deleter.start(name)
        return reply(obj, 200 if done else 202)

    async def delete_options(self, request: web.Request) -> Obj:
        opts: Obj = {}
        if request.can_read_body:
            body, _ = await self.body(request)
            if isinstance(body, dict):
                opts = body
        q = request.query
        if "gracePeriodSeconds" in q:
            try:
                opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            except ValueError:
                raise bad_request("gracePeriodSeconds must be an integer") from None
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if q.get("orphanDependents") in ("true", "false"):
            opts["orphanDependents"] = q["orphanDependents"] == "true"
        return opts

    async def delete_collection(self, request: web.Request, res: Resource,
                                ns: str | None) -> web.Response:
        opts = await self.delete_options(request)
        q = request.query
        match = matcher(q.get("labelSelector", ""), q.get("fieldSelector", ""))
        lst = await self.reg.list(res, ns, match)
        dry = q.get("dryRun") == "All"
        for obj in lst["items"]:
            try:
                await self.reg.delete(res, obj["metadata"].get("namespace"),
                                      obj["metadata"]["name"], opts, dry)
            except StatusError as exc:
                if exc.code != 404:
                    raise
        lst["metadata"].pop("continue", None)
        return reply(lst)

    # -- pod subresources ----------------------------------------------------------------
    async def binding(self, request: web.Request, ns: str | None,
                      name: str | None) -> web.Response:
        body, _ = await self.body(request)
        name = name or ((body or {}).get("metadata") or {}).get("name", "")
        node = ((body or {}).get("target") or {}).get("name", "")
        pods = BY_PLURAL["pods"]
        if not node:
            raise StatusError(422, "Invalid", "Binding target.name: Required value")

        def bind(cur: Obj) -> Obj:
            spec = cur.setdefault("spec", {})
            if cur["metadata"].get("deletionTimestamp"):
                raise conflict(pods, name, "pod is being deleted, cannot be assigned to a host")
            if spec.get("nodeName"):
                raise conflict(pods, name, f"pod {name} is already assigned to node "
                               f'"{spec["nodeName"]}"')
            spec["nodeName"] = node
            status = cur.setdefault("status", {})
            # Replaces an earlier PodScheduled=False (Unschedulable), as upstream does.
            status["conditions"] = [c for c in status.get("conditions", [])
                                    if c.get("type") != "PodScheduled"]
            status["conditions"].append({
                "type": "PodScheduled", "status": "True", "lastProbeTime": None,
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            return cur
        await self.reg.patch(pods, ns, name, bind, "binding")
        return reply(status_success(), 201)

    async def eviction(self, request: web.Request, ns: str | None, name: str) -> web.Response:
        body, _ = await self.body(request)
        opts = (body or {}).get("deleteOptions") or {}
        await self.reg.delete(BY_PLURAL["pods"], ns, name, opts)
        return reply(status_success(), 201)
