"""The ingress controller: watch the API, render nginx's routes, reload on change.

The controller half of an ingress-nginx pod (``pod.py`` runs it beside its nginx). The loop
of ingress-nginx's ``syncIngress`` (``internal/ingress/controller/nginx.go``),
level-triggered: informers on Ingresses, IngressClasses, Services, EndpointSlices, Secrets
and the controller's own pods only enqueue one key; a single worker computes the whole
routing model (``model.build``), renders it (``render.render``) and, only if the text differs
from what nginx runs, checks it with ``nginx -t`` and then swaps the file and sends SIGHUP to
the nginx master by pid. A text nginx refuses is never installed: the last good one stays
and the error is kept in ``routes.json`` (what ``knetlab ingress show`` prints).

A second thread writes to the API what the routing implies, on the leader only
(``leader.py``): each served Ingress's ``status.loadBalancer`` (the node addresses of the
running controller pods, as ingress-nginx reports hostNetwork pods), Events for what is
wrong with an Ingress, and the EndpointSlice of the exposure Service; a thousand status
writes never delay the next reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from knetlab.addons.ingress import model, nginx
from knetlab.addons.ingress.certs import CertStore
from knetlab.addons.ingress.leader import LeaderElector
from knetlab.addons.ingress.render import render
from knetlab.kube.client import ApiError, Informer, KubeClient, WorkQueue

log = logging.getLogger("knetlab.addons.ingress")
KEY = "sync"
MIN_INTERVAL = 0.1   # seconds between two syncs: a burst of changes is one reload
RESYNC = 30.0        # periodic full sync (repairs a status someone changed)
COMPONENT = "nginx-ingress-controller"
NAMESPACE = "ingress-nginx"
EXPOSE_SERVICE = "ingress-nginx-controller"
SLICE_MANAGER = "knetlab.io/ingress-nginx"
RESOURCES = ("ingresses", "ingressclasses", "services", "endpointslices", "secrets")
POD_LABELS = {"app.kubernetes.io/name": "ingress-nginx",
              "app.kubernetes.io/component": "controller"}
ELECTION_ID = "ingress-nginx-leader"
HEALTH_PORT = 10254   # ingress-nginx's /healthz port


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _served_part(ing: dict[str, Any]) -> tuple[Any, ...]:
    meta = ing["metadata"]
    return (ing.get("spec"), meta.get("annotations"), meta.get("deletionTimestamp"),
            meta.get("generation"))


class Controller:
    def __init__(self, client: KubeClient, directory: Path, http_port: int,
                 https_port: int, identity: str = "", health_port: int = HEALTH_PORT) -> None:
        self.client, self.dir, self.identity = client, directory, identity
        self.http_port, self.https_port, self.health_port = http_port, https_port, health_port
        self.routes = directory / "routes.conf"
        self.nginx_pid_file = directory / "nginx.pid"
        self.certs = CertStore(directory / "certs")
        self.default_cert = self.certs.ensure_default()
        self.informers = {r: Informer(client, r) for r in RESOURCES}
        self.informers["pods"] = Informer(client, "pods", NAMESPACE, label_selector=",".join(
            f"{k}={v}" for k, v in POD_LABELS.items()))
        self.elector = LeaderElector(client, NAMESPACE, ELECTION_ID, identity,
                                     self._leadership)
        self.queue = WorkQueue()
        for name, inf in self.informers.items():
            inf.add_handler(self._ingress_changed if name == "ingresses"
                            else lambda _kind, _obj, _old: self.queue.add(KEY))
        self.applied = self.routes.read_text() if self.routes.exists() else ""
        self.reloads, self.last_reload_s, self.last_error = 0, 0.0, ""
        self.syncs = 0
        self.refused = ""   # the last text nginx -t refused: not checked again until it changes
        self.emitted: set[tuple[str, ...]] = set()
        self.prev_certs: set[str] = set()
        self.stop = threading.Event()
        self._pending: tuple[model.Routing, list[dict[str, Any]]] | None = None
        self._pending_lock = threading.Lock()
        self._pending_set = threading.Event()

    def _ingress_changed(self, kind: str, obj: dict[str, Any],
                         old: dict[str, Any] | None) -> None:
        """Our own status writes come back as MODIFIED events: they change nothing served."""
        if kind == "MODIFIED" and old is not None and _served_part(obj) == _served_part(old):
            return
        self.queue.add(KEY)

    def _leadership(self, leader: bool) -> None:
        if leader:
            self.emitted.clear()  # what an earlier leader wrote is not known here
            self.queue.add(KEY)

    # -- inputs ----------------------------------------------------------------------
    def instances(self) -> list[dict[str, Any]]:
        """Where nginx serves: the nodes of the running controller pods (hostNetwork)."""
        out = {}
        for pod in self.informers["pods"].items():
            st = pod.get("status") or {}
            if st.get("phase") == "Running" and st.get("hostIP") and \
                    not pod["metadata"].get("deletionTimestamp"):
                out[st["hostIP"]] = {"node": (pod.get("spec") or {}).get("nodeName", ""),
                                     "ip": st["hostIP"]}
        return [out[ip] for ip in sorted(out)]

    def items(self, resource: str) -> list[dict[str, Any]]:
        return self.informers[resource].items()

    # -- one sync ---------------------------------------------------------------------
    def sync(self) -> None:
        self.syncs += 1
        instances = self.instances()
        self.certs.start_round()
        routing = model.build(self.items("ingresses"), self.items("ingressclasses"),
                              self.items("services"), self.items("endpointslices"),
                              self.items("secrets"), self.certs.cert_for)
        text = render(routing, http_port=self.http_port, https_port=self.https_port,
                      cert_dir=str(self.certs.dir), default_cert=str(self.default_cert),
                      health_port=self.health_port)
        if text not in (self.applied, self.refused):
            self.install(text)
        # a certificate file goes once two rounds in a row did not use it: nginx may still
        # be reading the previous config when this round ends
        used = set(self.certs.used)
        self.certs.used |= self.prev_certs
        self.certs.prune()
        self.prev_certs = used
        self.write_table(routing, instances)
        with self._pending_lock:  # API writes must not hold up the next reload
            self._pending = (routing, instances)
        self._pending_set.set()

    def write_back(self) -> None:
        """The status writer: Ingress status, Events and the exposure EndpointSlice for the
        latest routing (a newer routing replaces one not yet written)."""
        while not self.stop.is_set():
            self._pending_set.wait(1.0)
            with self._pending_lock:
                pending, self._pending = self._pending, None
                self._pending_set.clear()
            if pending is None or not self.elector.leader:
                continue
            routing, instances = pending
            try:
                self.write_status(routing, instances)
                self.report(routing)
                self.expose(instances)
            except Exception:  # noqa: BLE001 - the next routing retries
                log.exception("writing status")

    def install(self, text: str) -> None:
        t0 = time.monotonic()
        candidate = self.dir / "routes.conf.new"
        candidate.write_text(text)
        check_dir = self.dir / "check"
        check_dir.mkdir(exist_ok=True)
        conf = check_dir / "nginx.conf"
        conf.write_text(nginx.main_conf(check_dir, candidate, "configuration check"))
        ok, why = nginx.check(conf)
        if not ok:
            self.last_error = f"{_ts()} nginx -t refused the new configuration (kept the " \
                              f"last good one): {why}"
            log.error("%s", self.last_error)
            self.refused = text
            return
        candidate.replace(self.routes)
        self.applied = text
        if not nginx.reload(self.nginx_pid_file, str(self.dir)):
            log.warning("nginx is not running: not reloaded")
        self.reloads += 1
        self.last_reload_s = time.monotonic() - t0
        self.last_error = ""
        log.info("configuration changed: nginx reloaded (%d) in %.3f s", self.reloads,
                 self.last_reload_s)

    # -- outputs -----------------------------------------------------------------------
    def write_status(self, routing: model.Routing, instances: list[dict[str, Any]]) -> None:
        """status.loadBalancer.ingress of every Ingress of ours: the nginx addresses when
        served, nothing when rejected."""
        addresses = [{"ip": ip} for ip in sorted({i["ip"] for i in instances})]
        for want, ings in ((addresses, routing.served), ([], routing.rejected)):
            for ing in ings.values():
                meta = ing["metadata"]
                have = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") \
                    or []
                if have == want:
                    continue
                try:
                    self.client.patch("ingresses", meta["name"],
                                      {"status": {"loadBalancer": {"ingress": want or None}}},
                                      meta.get("namespace"), subresource="status")
                except ApiError as exc:
                    if exc.code != 404:
                        log.warning("status of ingress %s: %s", meta["name"], exc)

    def report(self, routing: model.Routing) -> None:
        """Events on the Ingresses, once per (Ingress generation, reason, message)."""
        for key, ing in {**routing.served, **routing.rejected}.items():
            meta = ing["metadata"]
            gen = str(meta.get("generation", ""))
            events = [("Warning", r, m) for r, m in routing.problems.get(key, [])]
            if key in routing.served:
                events.insert(0, ("Normal", "Sync", "Scheduled for sync"))
            for etype, reason, message in events:
                mark = (meta.get("uid", ""), gen, reason, message)
                if mark in self.emitted:
                    continue
                self.emitted.add(mark)
                self.event(ing, etype, reason, message)

    def event(self, ing: dict[str, Any], etype: str, reason: str, message: str) -> None:
        meta = ing["metadata"]
        ns = meta.get("namespace") or "default"
        ts = _ts()
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": ns},
              "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                 "name": meta["name"], "namespace": ns,
                                 "uid": meta.get("uid", ""),
                                 "resourceVersion": meta.get("resourceVersion", "")},
              "reason": reason, "message": message, "type": etype, "count": 1,
              "firstTimestamp": ts, "lastTimestamp": ts, "source": {"component": COMPONENT},
              "reportingComponent": COMPONENT, "reportingInstance": COMPONENT}
        try:
            self.client.create("events", ev, ns)
        except ApiError as exc:
            log.warning("event %s on ingress %s: %s", reason, meta["name"], exc)

    def expose(self, instances: list[dict[str, Any]]) -> None:
        """The Service ``ingress-nginx/ingress-nginx-controller`` (made by the add-on when
        kube-proxy runs) has no selector: its EndpointSlice lists the nginx nodes."""
        if self.informers["services"].get(EXPOSE_SERVICE, NAMESPACE) is None:
            return
        name = f"{EXPOSE_SERVICE}-hostnetwork"
        want = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                    model.SERVICE_NAME_LABEL: EXPOSE_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [i["ip"]], "nodeName": i["node"],
                               "conditions": {"ready": True, "serving": True,
                                              "terminating": False}}
                              for i in sorted(instances, key=lambda i: i["ip"])],
                "ports": [{"name": "http", "port": self.http_port, "protocol": "TCP"},
                          {"name": "https", "port": self.https_port, "protocol": "TCP"}]}
        have = self.informers["endpointslices"].get(name, NAMESPACE)
        if have is not None and have.get("endpoints") == want["endpoints"] and \
                have.get("ports") == want["ports"]:
            return
        try:
            if have is None:
                self.client.create("endpointslices", want, NAMESPACE)
            else:
                want["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
                self.client.update("endpointslices", want, NAMESPACE)
        except ApiError as exc:
            log.warning("endpointslice %s: %s", name, exc)

    def write_table(self, routing: model.Routing, instances: list[dict[str, Any]]) -> None:
        write_json(self.dir / "routes.json", {
            "addresses": [{"node": i["node"], "ip": i["ip"], "http": self.http_port,
                           "https": self.https_port} for i in instances],
            "routes": routing.table(),
            "problems": routing.problems,
            "rejected": sorted(routing.rejected),
            "syncs": self.syncs, "reloads": self.reloads,
            "lastReloadSeconds": round(self.last_reload_s, 4),
            "lastError": self.last_error,
            "configSha256": hashlib.sha256(self.applied.encode()).hexdigest()[:16],
            "syncedAt": _ts()})

    # -- running -----------------------------------------------------------------------
    def run(self, ready_file: Path | None) -> None:
        for inf in self.informers.values():
            inf.start()
        threading.Thread(target=self.write_back, name="status", daemon=True).start()
        self.elector.start()
        # No sync (so no /healthz: not ready) before every informer has listed: an empty
        # cache would install a table that 404s everything. Until kube-proxy routes the
        # kubernetes Service on this node the lists fail and the informers back off.
        for name, inf in self.informers.items():
            while not inf.wait_synced(10):
                if self.stop.is_set():
                    return
                log.warning("waiting for the %s informer (API not reachable yet?)", name)
        self.queue.add(KEY)
        first = True
        while not self.stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            t0 = time.monotonic()
            try:
                self.sync()
                if first and ready_file is not None:
                    ready_file.write_text("ok\n")
                first = False
                self.queue.add_after(KEY, RESYNC)
            except Exception:  # noqa: BLE001 - keep serving the last good config; retry
                log.exception("sync failed")
                self.queue.add_after(KEY, 1.0)
            finally:
                self.queue.done(key)
            self.stop.wait(max(0.0, MIN_INTERVAL - (time.monotonic() - t0)))

    def shutdown(self) -> None:
        self.stop.set()
        self.elector.stop()
        self.queue.shutdown()
        for inf in self.informers.values():
            inf.stop()

