"""The API server process: HTTPS on loopback, bearer-token auth, routing to the REST verbs.

One aiohttp application with a single catch-all route: URLs are parsed here
(``/api/v1/namespaces/N/pods/P/log``, ``/apis/apps/v1/watch/deployments``, ...) and
dispatched by method to ``Rest`` (objects), ``discovery`` (documents) and ``streams``
(logs, exec, port-forward). Every error leaves as a ``Status``: handlers raise
``StatusError``; anything unexpected becomes a 500 Status, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..etcd import EtcdClient, client_ssl, wait_ready
from . import discovery
from .errors import StatusError, internal, method_not_allowed, unauthorized
from .namespaces import NamespaceDeleter, bootstrap
from .registry import Registry
from .resources import Resource, lookup
from .rest import Rest, dumps, reply, schema
from .watch import Cacher

log = logging.getLogger("knetlab.kube.apiserver")
PUBLIC = ("/healthz", "/readyz", "/livez", "/version")


@dataclass
class Target:
    res: Resource
    ns: str | None
    name: str | None
    sub: str
    watch: bool


def parse(path: str) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3:
        return None
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = bool(rest) and rest[0] == "watch"
    if watch:
        rest = rest[1:]
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = lookup(group, version, rest[0])
    if res is None or (ns is not None and not res.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in res.subresources:
        return None
    if res.namespaced and name is not None and ns is None:
        return None
    return Target(res, ns, name, sub, watch)


def aggregated_version(accept: str) -> str | None:
    """The apidiscovery version the client prefers, if it asked for aggregated discovery."""
    for entry in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in entry.split(";")[1:] if "=" in p)
        if params.get("as") == "APIGroupDiscoveryList" and \
                params.get("g") == "apidiscovery.k8s.io" and params.get("v") in ("v2", "v2beta1"):
            return params["v"]
        if entry.split(";")[0].strip() in ("application/json", "*/*"):
            return None
    return None


class ApiServer:
    def __init__(self, rundir: Path, etcd_url: str, port: int, service_cidr: str,
                 cluster_name: str, node_ports: tuple[int, int] = (30000, 32767),
                 host: str = "127.0.0.1") -> None:
        self.rundir, self.etcd_url, self.port, self.host = Path(rundir), etcd_url, port, host
        self.service_cidr, self.cluster_name, self.node_ports = service_cidr, cluster_name, \
            node_ports
        self.kube_dir = self.rundir / "kube"
        self.token = (self.kube_dir / "token").read_text().strip()
        self.openapi_cache: dict[str, Any] = {}
        self.ready = False

    async def start(self) -> web.AppRunner:
        tls = client_ssl(self.kube_dir) if self.etcd_url.startswith("https") else None
        await wait_ready(self.etcd_url, ssl_context=tls)
        self.etcd = EtcdClient(self.etcd_url, tls)
        self.reg = Registry(self.etcd, self.service_cidr, self.node_ports)
        self.cacher = Cacher(self.etcd, await self.etcd.revision())
        self.cacher.start()
        await bootstrap(self.reg, self.port)
        self.ns_deleter = NamespaceDeleter(self.reg)
        await self.ns_deleter.resume()
        self.rest = Rest(self.reg, self.cacher, self.ns_deleter)
        app = web.Application(middlewares=[self.errors, self.auth],
                              client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=0.3)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.kube_dir / "apiserver.crt", self.kube_dir / "apiserver.key")
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        self.ready = True
        return runner

    async def stop(self) -> None:
        await self.cacher.stop()
        await self.ns_deleter.stop()
        await self.etcd.close()

    # -- middlewares ---------------------------------------------------------------------
    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except StatusError as exc:
            return reply(exc.status(), exc.code)
        except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - a 500 Status, never a dropped connection
            log.exception("%s %s", request.method, request.path_qs)
            err = internal(f"{type(exc).__name__}: {exc}")
            return reply(err.status(), 500)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in PUBLIC:
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                raise unauthorized()
        return await handler(request)

    # -- routing -------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            if not self.ready:
                return web.Response(text="not ready", status=503)
            return web.Response(text="ok")
        if path == "/version":
            return reply(discovery.version())
        if path in ("/api", "/apis"):
            v = aggregated_version(request.headers.get("Accept", ""))
            if v:
                doc = discovery.aggregated(path == "/api", v)
                return web.Response(body=dumps(doc).encode(), headers={
                    "Content-Type": discovery.AGGREGATED.format(v=v)})
            return reply(discovery.api_versions() if path == "/api" else discovery.api_groups())
        if path.startswith("/openapi/"):
            return self.openapi(path)
        parts = [p for p in path.split("/") if p]
        if parts[0] == "apis" and len(parts) == 2:
            doc = discovery.api_group(parts[1])
            if doc:
                return reply(doc)
        if parts[0] in ("api", "apis") and len(parts) == (2 if parts[0] == "api" else 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            doc = discovery.resource_list(group, version)
            if doc:
                return reply(doc)
        t = parse(path)
        if t is None:
            raise StatusError(404, "NotFound", "the server could not find the requested "
                              "resource")
        return await self.dispatch(request, t)

    async def dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        rest, m, res, ns, name, sub = self.rest, request.method, t.res, t.ns, t.name, t.sub
        watch = t.watch or request.query.get("watch") in ("true", "1")
        if sub in ("log", "exec", "portforward", "attach"):
            from . import streams
            pod = await self.reg.get(res, ns, name or "")
            if sub == "log" and m == "GET":
                return await streams.logs(request, self.rundir, pod)
            if sub == "exec" and m in ("GET", "POST"):
                return await streams.exec_ws(request, self.rundir, pod)
            if sub == "portforward" and m in ("GET", "POST"):
                from .portforward import portforward_ws
                return await portforward_ws(request, self.rundir, pod)
            raise method_not_allowed()
        if res.kind == "Binding":
            if m != "POST" or name is not None:
                raise method_not_allowed()
            return await rest.binding(request, ns, None)
        if name is None:
            if m == "GET":
                return await (rest.watch(request, res, ns, None) if watch
                              else rest.list(request, res, ns))
            if m == "POST":
                return await rest.create(request, res, ns)
            if m == "DELETE":
                return await rest.delete_collection(request, res, ns)
            raise method_not_allowed()
        if m == "GET":
            if watch:
                return await rest.watch(request, res, ns, name)
            return await rest.get(request, res, ns, name, sub)
        if m == "POST" and sub == "binding":
            return await rest.binding(request, ns, name)
        if m == "POST" and sub == "eviction":
            return await rest.eviction(request, ns, name)
        if m == "PUT" and sub in ("", "status", "scale", "finalize"):
            return await rest.update(request, res, ns, name, "" if sub == "finalize" else sub)
        if m == "PATCH" and sub in ("", "status", "scale"):
            return await rest.patch(request, res, ns, name, sub)
        if m == "DELETE" and not sub:
            return await rest.delete(request, res, ns, name)
        raise method_not_allowed()

    def openapi(self, path: str) -> web.Response:
        s = schema()
        if path == "/openapi/v2" or s is None:
            raise StatusError(404, "NotFound", "the server could not find the requested "
                              "resource")
        if path == "/openapi/v3":
            if "index" not in self.openapi_cache:
                self.openapi_cache["index"] = s.openapi_v3_index(discovery.gv_paths())
            return reply(self.openapi_cache["index"])
        gv = path[len("/openapi/v3/"):]
        if gv not in discovery.gv_paths():
            raise StatusError(404, "NotFound", "the server could not find the requested "
                              "resource")
        if gv not in self.openapi_cache:
            parts = gv.split("/")
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            self.openapi_cache[gv] = dumps(s.openapi_v3(
                group, version, discovery.openapi_resources(group, version)))
        return web.Response(text=self.openapi_cache[gv], content_type="application/json")
