"""The routing model: what the ingress controller derives from the API, before any nginx.

A pure function of the API objects (Ingress, IngressClass, Service, EndpointSlice, Secret),
like ingress-nginx's ``getConfiguration`` (``internal/ingress/controller/controller.go``):

- **Class.** An Ingress is ours when ``spec.ingressClassName`` names an IngressClass whose
  ``spec.controller`` is ours; or it names no class and one of our classes carries
  ``ingressclass.kubernetes.io/is-default-class: "true"``; or (legacy) its
  ``kubernetes.io/ingress.class`` annotation names one of our classes. Others are ignored.
- **Order.** Ingresses are taken oldest first (creationTimestamp, then namespace/name): when
  two claim the same host and path, the older one wins, as in ingress-nginx.
- **Paths.** ``Exact`` and ``Prefix`` paths must match ``^/[A-Za-z0-9._/-]*$`` (ingress-nginx's
  strict path validation); an Ingress with a bad path, a bad host or a missing pathType is
  rejected as a whole and the others are served. ``Prefix`` is element-wise and ignores a
  trailing slash (``/foo`` and ``/foo/`` both match ``/foo``, ``/foo/``, ``/foo/bar``, not
  ``/foobar``); ``ImplementationSpecific`` here means nginx's plain string prefix (``/foo``
  also matches ``/foobar``), which is what ingress-nginx does without its regex annotation.
- **Hosts.** An exact host, or ``*.example.com`` matching exactly one more label. Rules without
  a host, and requests for unknown hosts, go to the catch-all server.
- **Backends.** Straight to the ready endpoints of the Service port (from EndpointSlices);
  an unknown Service or port, or no ready endpoint, answers 503. The default backend is
  ``spec.defaultBackend`` (per host: of the oldest Ingress naming that host that has one;
  catch-all: of the oldest Ingress that has one, preferring Ingresses without rules), else 404.
- **TLS.** ``spec.tls`` hosts are (also) served on the HTTPS port with the Secret's certificate
  (``kubernetes.io/tls``, same namespace); a missing or invalid Secret falls back to the
  default (self-signed) certificate and is reported. HTTP requests to a TLS host are
  redirected (308) to HTTPS unless ``nginx.ingress.kubernetes.io/ssl-redirect: "false"``.

Problems are collected per Ingress (reason, message), to be reported as Events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
CONTROLLER = "k8s.io/ingress-nginx"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SSL_REDIRECT_ANNOTATION = "nginx.ingress.kubernetes.io/ssl-redirect"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CATCH_ALL = "_"
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")

#: ingress-nginx's ``validPathType`` (internal/ingress/inspector/rules.go)
STRICT_PATH = re.compile(r"^/[A-Za-z0-9._\-/]*$")
#: an ImplementationSpecific path still lands in nginx.conf: nothing that could break out
UNSAFE_PATH = re.compile(r"[\s;{}\"'\\$#]")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


@dataclass
class Backend:
    """One Service port as nginx reaches it: straight to its ready endpoints."""

    namespace: str
    service: str
    port: str                    # the Service port as the Ingress names it (number or name)
    endpoints: list[str] = field(default_factory=list)   # "ip:port", sorted
    problem: str = ""            # why it answers 503 ("" when it has endpoints)

    @property
    def upstream(self) -> str:
        return f"{self.namespace}-{self.service}-{self.port}"

    def describe(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass
class Location:
    path: str
    path_type: str               # Exact | Prefix | ImplementationSpecific
    backend: Backend
    ingress: str                 # namespace/name it came from


@dataclass
class Server:
    host: str                    # CATCH_ALL for rules without host and unknown hosts
    locations: list[Location] = field(default_factory=list)
    default: Backend | None = None        # requests no location matches (None: 404)
    default_from: str = ""
    tls: bool = False
    cert: str = ""               # certificate name in the cert store ("" = default cert)
    ssl_redirect: bool = False
    ingresses: list[str] = field(default_factory=list)


@dataclass
class Routing:
    servers: dict[str, Server] = field(default_factory=dict)
    #: Ingresses of our class that are served, namespace/name -> object
    served: dict[str, Obj] = field(default_factory=dict)
    #: Ingresses of our class refused as a whole, namespace/name -> object
    rejected: dict[str, Obj] = field(default_factory=dict)
    #: namespace/name -> [(reason, message)], every Ingress of ours with something to report
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def upstreams(self) -> dict[str, Backend]:
        out: dict[str, Backend] = {}
        for srv in self.servers.values():
            for b in [loc.backend for loc in srv.locations] + [srv.default]:
                if b is not None and b.endpoints:
                    out.setdefault(b.upstream, b)
        return out

    def table(self) -> list[dict[str, Any]]:
        """The routing table as ``knetlab ingress show`` prints it: one row per match."""
        rows = []
        for host in sorted(self.servers, key=lambda h: (h == CATCH_ALL, h)):
            srv = self.servers[host]
            for loc in srv.locations:
                rows.append(_row(srv, loc.path, loc.path_type, loc.backend, loc.ingress))
            rows.append(_row(srv, "(default)", "", srv.default, srv.default_from))
        return rows


def _row(srv: Server, path: str, ptype: str, b: Backend | None, ing: str) -> dict[str, Any]:
    return {"host": "*" if srv.host == CATCH_ALL else srv.host, "path": path, "pathType": ptype,
            "tls": srv.tls, "backend": b.describe() if b else "404 (no default backend)",
            "endpoints": b.endpoints if b else [], "problem": b.problem if b else "",
            "ingress": ing}


# -- class selection ----------------------------------------------------------------------

def our_classes(classes: list[Obj], controller: str = CONTROLLER) -> tuple[set[str], bool]:
    """Names of the IngressClasses of ``controller``, and whether one of them is default."""
    names, default = set(), False
    for ic in classes:
        if (ic.get("spec") or {}).get("controller") != controller:
            continue
        names.add(ic["metadata"]["name"])
        ann = ic["metadata"].get("annotations") or {}
        default |= ann.get(DEFAULT_CLASS_ANNOTATION) == "true"
    return names, default


def is_ours(ing: Obj, names: set[str], default: bool) -> bool:
    cls = (ing.get("spec") or {}).get("ingressClassName")
    if cls:
        return cls in names
    legacy = (ing["metadata"].get("annotations") or {}).get(LEGACY_CLASS_ANNOTATION)
    if legacy:
        return legacy in names
    return default


# -- validation --------------------------------------------------------------------------

def path_problem(path: str, ptype: str | None) -> str:
    """Why a path cannot be served with its pathType ("" when it can)."""
    if ptype is None:
        return f"path {path or '/'!r}: pathType is required (Exact, Prefix or " \
               "ImplementationSpecific)"
    if ptype not in PATH_TYPES:
        return f"path {path!r}: pathType {ptype!r} is not one of {', '.join(PATH_TYPES)}"
    if ptype != "ImplementationSpecific":
        if not STRICT_PATH.match(path):
            return (f"path {path!r} cannot be used with pathType {ptype}: it must start with "
                    "'/' and hold only letters, digits, '.', '_', '-' and '/'")
        return ""
    if path and (not path.startswith("/") or UNSAFE_PATH.search(path)):
        return (f"path {path!r} is not an absolute path without spaces, quotes, ';', '{{', "
                "'}', '$' or '#'")
    return ""


def host_problem(host: str) -> str:
    if HOST.match(host) and len(host) <= 253:
        return ""
    return (f"host {host!r} is not a DNS name (lowercase labels, a leading '*.' for a "
            "wildcard of one label)")


def ingress_problems(ing: Obj) -> list[str]:
    """Everything that makes the API server (or ingress-nginx's admission) refuse it."""
    spec = ing.get("spec") or {}
    out = []
    for rule in spec.get("rules") or []:
        host = rule.get("host") or ""
        if host and (p := host_problem(host)):
            out.append(p)
        for hp in (rule.get("http") or {}).get("paths") or []:
            if p := path_problem(hp.get("path") or "", hp.get("pathType")):
                out.append(p)
            if not (hp.get("backend") or {}).get("service"):
                out.append(f"path {hp.get('path') or '/'!r}: backend.service is required "
                           "(resource backends are not supported)")
    for tls in spec.get("tls") or []:
        for host in tls.get("hosts") or []:
            if p := host_problem(host):
                out.append(f"tls: {p}")
    return out


# -- the build ---------------------------------------------------------------------------

def _created(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta["name"])


def _key(obj: Obj) -> str:
    return f"{obj['metadata'].get('namespace') or 'default'}/{obj['metadata']['name']}"


class _Resolver:
    """Service backends -> endpoints, from Services and EndpointSlices."""

    def __init__(self, services: list[Obj], slices: list[Obj]) -> None:
        self.services = {_key(s): s for s in services}
        self.slices: dict[str, list[Obj]] = {}
        for sl in slices:
            svc = (sl["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
            if svc and sl.get("addressType", "IPv4") == "IPv4":
                ns = sl["metadata"].get("namespace") or "default"
                self.slices.setdefault(f"{ns}/{svc}", []).append(sl)

    def backend(self, namespace: str, ref: Obj) -> Backend:
        svc_ref = ref.get("service") or {}
        name = svc_ref.get("name") or ""
        port_ref = svc_ref.get("port") or {}
        want = port_ref.get("number") or port_ref.get("name") or ""
        b = Backend(namespace, name, str(want))
        svc = self.services.get(f"{namespace}/{name}")
        if svc is None:
            b.problem = f"service {namespace}/{name} not found"
            return b
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            b.problem = f"service {namespace}/{name} is an ExternalName service (not supported)"
            return b
        port = next((p for p in spec.get("ports") or []
                     if want and (p.get("port") == want or p.get("name") == want)), None)
        if port is None:
            b.problem = f"service {namespace}/{name} has no port {want or '(none given)'}"
            return b
        eps = set()
        for sl in self.slices.get(f"{namespace}/{name}", []):
            sport = next((p for p in sl.get("ports") or []
                          if (p.get("name") or "") == (port.get("name") or "")), None)
            if sport is None or not sport.get("port"):
                continue
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                eps.update(f"{ip}:{sport['port']}" for ip in ep.get("addresses") or [])
        b.endpoints = sorted(eps)
        if not b.endpoints:
            b.problem = f"service {namespace}/{name} has no ready endpoints"
        return b


def build(ingresses: list[Obj], classes: list[Obj], services: list[Obj], slices: list[Obj],
          secrets: list[Obj], cert_for: Callable[[Obj], str],
          controller: str = CONTROLLER) -> Routing:
    """The routing of every Ingress of ours. ``cert_for(secret)`` stores a TLS Secret's
    certificate and returns its name, or raises ValueError saying why it is unusable."""
    names, default = our_classes(classes, controller)
    resolve = _Resolver(services, slices)
    secret_by_key = {_key(s): s for s in secrets}
    r = Routing()
    r.servers[CATCH_ALL] = Server(CATCH_ALL)
    catch_all_default: tuple[bool, Backend, str] | None = None
    for ing in sorted(ingresses, key=_created):
        if not is_ours(ing, names, default) or ing["metadata"].get("deletionTimestamp"):
            continue
        key, ns = _key(ing), ing["metadata"].get("namespace") or "default"
        problems = r.problems.setdefault(key, [])
        bad = ingress_problems(ing)
        if bad:
            r.rejected[key] = ing
            problems += [("Rejected", f"{p}; this Ingress is not served") for p in bad]
            continue
        r.served[key] = ing
        spec = ing.get("spec") or {}
        default_backend = None
        if spec.get("defaultBackend"):
            default_backend = resolve.backend(ns, spec["defaultBackend"])
            # catch-all: the oldest Ingress with only a default backend, else the oldest
            cand = (bool(spec.get("rules")), default_backend, key)
            if catch_all_default is None or (catch_all_default[0] and not cand[0]):
                catch_all_default = cand
        backends: list[Backend] = []
        for rule in spec.get("rules") or []:
            srv = _server(r, rule.get("host") or CATCH_ALL, key)
            if default_backend is not None and srv.default is None and srv.host != CATCH_ALL:
                srv.default, srv.default_from = default_backend, key
            for hp in (rule.get("http") or {}).get("paths") or []:
                path, ptype = hp.get("path") or "/", hp["pathType"]
                if ptype == "Prefix" and path != "/":
                    path = path.rstrip("/") or "/"   # the spec: a trailing slash is ignored
                if any(loc.path == path and loc.path_type == ptype for loc in srv.locations):
                    problems.append(("Conflict", f"host {srv.host} path {path} ({ptype}) is "
                                     "already served by an older Ingress; ignored here"))
                    continue
                loc = Location(path, ptype, resolve.backend(ns, hp["backend"]), key)
                srv.locations.append(loc)
                backends.append(loc.backend)
        _tls(r, ing, key, ns, secret_by_key, cert_for, problems)
        _backend_problems(backends + ([default_backend] if default_backend else []), problems)
    if catch_all_default is not None:
        r.servers[CATCH_ALL].default, r.servers[CATCH_ALL].default_from = \
            catch_all_default[1], catch_all_default[2]
    for srv in r.servers.values():  # longest first, Exact before Prefix on equal length
        srv.locations.sort(key=lambda loc: (-len(loc.path), PATH_TYPES.index(loc.path_type)))
    r.problems = {k: v for k, v in r.problems.items() if v}
    return r


def _server(r: Routing, host: str, key: str) -> Server:
    srv = r.servers.get(host)
    if srv is None:
        srv = r.servers[host] = Server(host)
    if key not in srv.ingresses:
        srv.ingresses.append(key)
    return srv


def _tls(r: Routing, ing: Obj, key: str, ns: str, secrets: dict[str, Obj],
         cert_for: Callable[[Obj], str], problems: list[tuple[str, str]]) -> None:
    spec = ing.get("spec") or {}
    redirect = (ing["metadata"].get("annotations") or {}).get(SSL_REDIRECT_ANNOTATION,
                                                               "true") != "false"
    rule_hosts = [rule.get("host") for rule in spec.get("rules") or [] if rule.get("host")]
    for tls in spec.get("tls") or []:
        hosts = tls.get("hosts") or rule_hosts
        cert = ""
        secret_name = tls.get("secretName") or ""
        if secret_name:
            secret = secrets.get(f"{ns}/{secret_name}")
            if secret is None:
                problems.append(("SecretNotFound", f"secret {ns}/{secret_name} not found; "
                                 f"{', '.join(hosts)} served with the default certificate"))
            else:
                try:
                    cert = cert_for(secret)
                except ValueError as exc:
                    problems.append(("InvalidSecret", f"secret {ns}/{secret_name}: {exc}; "
                                     f"{', '.join(hosts)} served with the default certificate"))
        for host in hosts:
            srv = _server(r, host, key)
            if srv.tls and srv.cert:
                continue  # an older Ingress already gave this host its certificate
            srv.tls, srv.cert = True, cert
            srv.ssl_redirect = srv.ssl_redirect or redirect


def _backend_problems(backends: list[Backend], problems: list[tuple[str, str]]) -> None:
    seen = set()
    for b in backends:
        if b.problem and b.problem not in seen:
            seen.add(b.problem)
            if "endpoints" in b.problem:
                continue  # normal while pods start: shown by `ingress show`, not an Event
            reason = "ServiceNotFound" if "not found" in b.problem else "InvalidBackend"
            problems.append((reason, f"{b.problem}; requests for it get 503"))
