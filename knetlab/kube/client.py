"""A small Kubernetes API client for knetlab's own components (controllers, kubelets, add-ons).

Standard library only, so that a kubelet per node starts in tens of milliseconds: HTTPS with
the lab's CA and bearer token (from the kubeconfig ``knetlab up`` writes, or, in a pod, from
the service-account files and ``KUBERNETES_SERVICE_*`` as client-go's
``rest.InClusterConfig`` reads them: ``KubeClient.in_cluster``), one keep-alive
connection per thread, JSON in and out. On top of it the two client-go pieces every
controller is built from: ``Informer`` (list, then watch from the list's resourceVersion,
relist on 410 Gone, a local cache, event handlers) and ``WorkQueue`` (deduplicated keys, one
worker per key at a time, delayed re-adds for back-off).

Users and tests talk to the lab with the official ``kubernetes`` client or kubectl instead.
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from knetlab.errors import KnetlabError
from knetlab.kube.transport import Connection

log = logging.getLogger("knetlab.kube.client")

#: plural resource -> (API path prefix, namespaced). The lab's API serves exactly these.
RESOURCES: dict[str, tuple[str, bool]] = {
    "namespaces": ("/api/v1", False),
    "nodes": ("/api/v1", False),
    "pods": ("/api/v1", True),
    "services": ("/api/v1", True),
    "endpoints": ("/api/v1", True),
    "configmaps": ("/api/v1", True),
    "secrets": ("/api/v1", True),
    "events": ("/api/v1", True),
    "serviceaccounts": ("/api/v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", True),
    "deployments": ("/apis/apps/v1", True),
    "replicasets": ("/apis/apps/v1", True),
    "daemonsets": ("/apis/apps/v1", True),
    "statefulsets": ("/apis/apps/v1", True),
    "controllerrevisions": ("/apis/apps/v1", True),
    "jobs": ("/apis/batch/v1", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", True),
    "ingresses": ("/apis/networking.k8s.io/v1", True),
    "ingressclasses": ("/apis/networking.k8s.io/v1", False),
    "leases": ("/apis/coordination.k8s.io/v1", True),
}

#: kind -> plural resource, for manifests
KINDS = {"Namespace": "namespaces", "Node": "nodes", "Pod": "pods", "Service": "services",
         "Endpoints": "endpoints", "ConfigMap": "configmaps", "Secret": "secrets",
         "Event": "events", "ServiceAccount": "serviceaccounts",
         "EndpointSlice": "endpointslices", "Deployment": "deployments",
         "ReplicaSet": "replicasets", "DaemonSet": "daemonsets", "StatefulSet": "statefulsets",
         "ControllerRevision": "controllerrevisions", "Job": "jobs",
         "NetworkPolicy": "networkpolicies", "Ingress": "ingresses",
         "IngressClass": "ingressclasses", "Lease": "leases"}

#: where the kubelet mounts a pod's service-account token, CA and namespace
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

PATCH_TYPES = {"merge": "application/merge-patch+json",
               "strategic": "application/strategic-merge-patch+json",
               "json": "application/json-patch+json"}


class ApiError(KnetlabError):
    """A non-2xx answer of the API server; ``status`` is its ``Status`` object."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        self.code = code
        self.status = status
        self.reason = status.get("reason", "")
        super().__init__(f"{code} {self.reason}: {status.get('message', '')}".strip())


class NotInClusterError(KnetlabError):
    """``KubeClient.in_cluster`` outside a pod (client-go's ``ErrNotInCluster``)."""


#: a dial's limit (then reads wait the client's own timeout): see ``transport.Connection``
CONNECT_TIMEOUT = 5.0


class KubeClient:
    def __init__(self, server: str, token: str, ca_data: bytes, timeout: float = 30,
                 token_file: Path | None = None) -> None:
        url = urllib.parse.urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self._token, self.ca_data = token, ca_data
        self.timeout = timeout
        self.ssl = ssl.create_default_context(cadata=ca_data.decode())
        self._local = threading.local()
        # A projected token is rotated by the kubelet: re-read the file when it changes
        # (client-go re-reads it every minute), keyed by (inode, mtime) so a stat per
        # request is all it costs. No stamp yet: the first request reads the file again, so
        # a rotation between reading ``token`` and this point is not missed.
        self.token_file = token_file
        self._token_stamp: tuple[int, int] | None = None

    @property
    def token(self) -> str:
        if self.token_file is not None:
            stamp = self._stamp()
            if stamp != self._token_stamp and stamp is not None:
                try:
                    self._token = self.token_file.read_text().strip()
                    self._token_stamp = stamp
                except OSError as exc:  # mid-rotation: the old token until the next request
                    log.debug("re-reading %s: %s", self.token_file, exc)
        return self._token

    def _stamp(self) -> tuple[int, int] | None:
        if self.token_file is None:
            return None
        try:
            st = self.token_file.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    @classmethod
    def in_cluster(cls, sa_dir: str | Path = SERVICE_ACCOUNT_DIR,
                   environ: dict[str, str] | None = None) -> KubeClient:
        """The client of a program running in a pod, as client-go's ``rest.InClusterConfig``
        builds it: the ``kubernetes`` Service's address from ``KUBERNETES_SERVICE_HOST`` and
        ``_PORT`` (the kubelet's env), the bearer token and CA the kubelet mounted at
        ``sa_dir``. Nothing is dialled here: the first request may find the Service not yet
        routed on this node (kube-proxy still syncing), which callers retry like any other
        unreachable API (``Informer`` backs off)."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise NotInClusterError("unable to load in-cluster configuration: "
                                    "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must "
                                    "be set (the kubelet sets them in every container)")
        sa = Path(sa_dir)
        try:
            token = (sa / "token").read_text().strip()
            ca = (sa / "ca.crt").read_bytes()
        except OSError as exc:
            raise NotInClusterError(f"unable to load in-cluster configuration: {exc} (the "
                                    f"kubelet mounts the service-account token and CA at "
                                    f"{sa})") from None
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address in a URL
        return cls(f"https://{host}:{port}", token, ca, token_file=sa / "token")

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> KubeClient:
        cfg = read_kubeconfig(path)
        try:
            ctx_name = cfg["current-context"]
            ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
            cluster = next(c["cluster"] for c in cfg["clusters"]
                           if c["name"] == ctx["cluster"])
            user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
            return cls(cluster["server"], user["token"],
                       base64.b64decode(cluster["certificate-authority-data"]))
        except (KeyError, TypeError, StopIteration, ValueError) as exc:
            raise KnetlabError(
                f"kubeconfig {path}: cannot use it ({type(exc).__name__}: {exc}); this client "
                f"needs current-context naming a context whose cluster has server and "
                f"certificate-authority-data and whose user has a token (as the lab's "
                f"kubeconfig has: `knetlab kubeconfig` prints its path)") from None

    # -- paths -------------------------------------------------------------------
    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str = "",
             subresource: str = "") -> str:
        try:
            prefix, namespaced = RESOURCES[resource]
        except KeyError:
            raise KnetlabError(f"unknown resource {resource!r}") from None
        p = prefix
        if namespaced and namespace:
            p += f"/namespaces/{namespace}"
        p += f"/{resource}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    # -- transport -----------------------------------------------------------------
    def _new_conn(self, timeout: float | None) -> Connection:
        return Connection(self.host, self.port, self.ssl, timeout, CONNECT_TIMEOUT)

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_conn(self.timeout)
        return conn

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json",
                query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items()
                                                  if v not in (None, "")})
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):  # a kept-alive connection the server closed: one retry
            conn = self._conn()
            try:
                resp = conn.request(method, path, headers, data)
                raw = resp.read()
                break
            except OSError:  # the transport's errors are OSErrors too (WireError)
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        payload = json.loads(raw) if raw else None
        if resp.status >= 300:
            status = payload if isinstance(payload, dict) else {"message": raw.decode()}
            raise ApiError(resp.status, status)
        return payload

    # -- verbs -----------------------------------------------------------------------
    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", self.path(resource, namespace, name))

    def list(self, resource: str, namespace: str | None = None, label_selector: str = "",
             field_selector: str = "") -> dict[str, Any]:
        return self.request("GET", self.path(resource, namespace),
                            query={"labelSelector": label_selector,
                                   "fieldSelector": field_selector})

    def create(self, resource: str, obj: dict[str, Any],
               namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return self.request("POST", self.path(resource, ns), obj)

    def update(self, resource: str, obj: dict[str, Any], namespace: str | None = None,
               subresource: str = "") -> dict[str, Any]:
        meta = obj["metadata"]
        ns = namespace or meta.get("namespace")
        return self.request("PUT", self.path(resource, ns, meta["name"], subresource), obj)

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
              subresource: str = "", kind: str = "merge") -> dict[str, Any]:
        return self.request("PATCH", self.path(resource, namespace, name, subresource), patch,
                            content_type=PATCH_TYPES[kind])

    def delete(self, resource: str, name: str, namespace: str | None = None,
               grace_period: int | None = None, propagation: str | None = None,
               uid: str | None = None) -> dict[str, Any] | None:
        opts: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period is not None:
            opts["gracePeriodSeconds"] = grace_period
        if propagation:
            opts["propagationPolicy"] = propagation
        if uid:
            opts["preconditions"] = {"uid": uid}
        return self.request("DELETE", self.path(resource, namespace, name), opts)

    def apply(self, obj: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        """Create the object, or patch it to the manifest if it exists (a client-side apply
        without kubectl's last-applied bookkeeping: fields removed from a manifest stay)."""
        kind = obj.get("kind", "")
        try:
            resource = KINDS[kind]
        except KeyError:
            raise KnetlabError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})") from None
        ns = obj.get("metadata", {}).get("namespace") or namespace
        try:
            return self.create(resource, obj, ns)
        except ApiError as exc:
            if exc.code != 409:
                raise
        return self.patch(resource, obj["metadata"]["name"], obj, ns, kind="strategic")

    def post_subresource(self, resource: str, name: str, subresource: str, body: Any,
                         namespace: str | None = None) -> dict[str, Any]:
        return self.request("POST", self.path(resource, namespace, name, subresource), body)

    def watch(self, resource: str, namespace: str | None = None, resource_version: str = "",
              label_selector: str = "", field_selector: str = "",
              timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """Yield watch events ({"type", "object"}) until the server ends the watch; raise
        ApiError(410) when ``resource_version`` is too old (relist)."""
        query = {"watch": "true", "allowWatchBookmarks": "true",
                 "resourceVersion": resource_version, "labelSelector": label_selector,
                 "fieldSelector": field_selector, "timeoutSeconds": str(timeout_seconds)}
        path = self.path(resource, namespace) + "?" + urllib.parse.urlencode(
            {k: v for k, v in query.items() if v})
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        # The watch takes this thread's idle kept-alive connection (an informer's: the one
        # its list just used) instead of dialling another: a TLS handshake less per informer
        # start, for the client and the API server (three informers on each node's agents).
        # Taken, not shared: a handler that makes a request meanwhile dials its own.
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        try:
            if conn is not None:
                conn.settimeout(timeout_seconds + 30)
                try:
                    resp = conn.request("GET", path, headers)
                except OSError:  # the server closed the idle connection: dial a fresh one
                    conn.close()
                    conn = None
            if conn is None:
                conn = self._new_conn(timeout_seconds + 30)
                resp = conn.request("GET", path, headers)
            if resp.status >= 300:
                raw = resp.read()
                raise ApiError(resp.status, json.loads(raw) if raw else {})
            for line in resp.lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), status)
                yield event
            if conn.sock is not None and getattr(self._local, "conn", None) is None:
                conn.settimeout(self.timeout)  # ended cleanly and still open: keep it
                self._local.conn, conn = conn, None
        finally:
            if conn is not None:
                conn.close()


def read_kubeconfig(path: str | Path) -> dict[str, Any]:
    """A kubeconfig as a dict. The lab's is JSON (``pki.kubeconfig_text``; JSON is YAML, so
    kubectl and the official client read it too) and parsed with ``json``: importing ``yaml``
    cost every per-node agent ~9 ms of start-up CPU. Any other kubeconfig (one kubectl
    rewrote, a user's) is YAML, parsed with ``yaml`` imported only then."""
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML flow style, not JSON: let yaml read it
    try:
        import yaml  # lazy: see above
    except ImportError:
        # An agent runs with ``python -S`` (knetlab/pyagent.py), without site-packages;
        # a kubeconfig that kubectl rewrote as YAML must still work there, so add them.
        import site
        site.main()
        import yaml
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KnetlabError(f"kubeconfig {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise KnetlabError(f"kubeconfig {path} holds no mapping (a kubeconfig is one, with "
                           f"clusters, users, contexts and current-context)")
    return cfg


def key_of(obj: dict[str, Any]) -> str:
    """The work-queue key of an object: ``namespace/name`` (``name`` if cluster-scoped)."""
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else meta["name"]


def split_key(key: str) -> tuple[str | None, str]:
    ns, _, name = key.rpartition("/")
    return (ns or None), name


Handler = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]


class Informer:
    """List + watch one resource into a local cache and call handlers on every change.

    Level-triggered use: handlers enqueue keys; workers read the cache. After a relist the
    handlers see ADDED/MODIFIED for what is there and DELETED for what vanished meanwhile.
    """

    def __init__(self, client: KubeClient, resource: str, namespace: str | None = None,
                 field_selector: str = "", label_selector: str = "") -> None:
        self.client, self.resource, self.namespace = client, resource, namespace
        self.field_selector, self.label_selector = field_selector, label_selector
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_handler(self, fn: Handler) -> None:
        self._handlers.append(fn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float = 30) -> bool:
        return self._synced.wait(timeout)

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(f"{namespace}/{name}" if namespace else name)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def _emit(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        for fn in self._handlers:
            try:
                fn(kind, obj, old)
            except Exception:  # noqa: BLE001 - one bad handler must not stop the informer
                log.exception("%s informer handler failed", self.resource)

    def _relist(self) -> str:
        lst = self.client.list(self.resource, self.namespace, self.label_selector,
                               self.field_selector)
        fresh = {key_of(o): o for o in lst.get("items", [])}
        with self._lock:
            old, self._cache = self._cache, fresh
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._emit("ADDED", obj, None)
            elif prev["metadata"].get("resourceVersion") != obj["metadata"].get(
                    "resourceVersion"):
                self._emit("MODIFIED", obj, prev)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj, obj)
        self._synced.set()
        return lst["metadata"].get("resourceVersion", "")

    def _run(self) -> None:
        rv = ""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._relist()
                for ev in self.client.watch(self.resource, self.namespace, rv,
                                            self.label_selector, self.field_selector):
                    if self._stop.is_set():
                        return
                    rv = self._apply(ev) or rv
                backoff = 0.2
            except ApiError as exc:
                if exc.code == 410:
                    rv = ""  # too old: relist
                    continue
                log.warning("%s watch: %s", self.resource, exc)
                rv = ""
            except Exception as exc:  # noqa: BLE001 - API restarting: retry with back-off
                log.debug("%s watch broke: %s", self.resource, exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5)

    def _apply(self, ev: dict[str, Any]) -> str:
        kind, obj = ev["type"], ev["object"]
        rv = obj.get("metadata", {}).get("resourceVersion", "")
        if kind == "BOOKMARK":
            return rv
        key = key_of(obj)
        with self._lock:
            old = self._cache.get(key)
            if kind == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        if kind == "ADDED" and old is not None:
            kind = "MODIFIED"
        self._emit(kind, obj, old)
        return rv


class WorkQueue:
    """client-go's rate-limited work queue, reduced: a key is queued at most once, is never
    processed by two workers at once (re-added while in flight -> processed again after),
    and ``add_after`` re-queues it later (back-off, periodic resync)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._timers: list[tuple[float, int, str]] = []
        self._seq = 0
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            self._seq += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, key))
            self._cond.notify()

    def get(self) -> str | None:
        with self._cond:
            while True:
                if self._shutdown:
                    return None
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    key = heapq.heappop(self._timers)[2]
                    if key in self._processing:
                        self._dirty.add(key)
                    elif key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._timers[0][0] - now if self._timers else None
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._queued.add(key)
                    self._queue.append(key)
                    self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
