"""The EndpointSlice controller (and the legacy Endpoints controller): which pods back each
Service with a selector.

One endpoint per selected pod that has an IPv4 address and has not finished: conditions
``ready`` (Ready and not terminating, or publishNotReadyAddresses), ``serving`` (Ready, even
while terminating), ``terminating`` (deletionTimestamp set), nodeName and targetRef. Ports
are the Service's by name with targetPort resolved per pod (a named targetPort is looked up
in the pod's containerPorts), so pods that resolve differently land in different slices;
at most 100 endpoints per slice. Slices carry ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by``, are owned by the Service, and are recomputed
from the whole pod set on every sync (as kube-proxy renders its rules): desired slices are
matched to existing ones by port set, changed ones rewritten, extra ones deleted. The
Endpoints object of the same name lists ready pods in ``addresses`` and the others in
``notReadyAddresses`` (terminating pods only with publishNotReadyAddresses).
"""

from __future__ import annotations

import copy
import json
import logging

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller, ignore_missing
from knetlab.kube.controllers.util import (
    Obj,
    deleting,
    labels,
    map_selector_matches,
    meta,
    owner_ref,
    phase,
    pod_ready,
)

log = logging.getLogger("knetlab.kube.controllers.endpointslice")

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
MAX_PER_SLICE = 100


def pod_ipv4(pod: Obj) -> str:
    status = pod.get("status") or {}
    for ip in [status.get("podIP")] + [i.get("ip") for i in status.get("podIPs") or []]:
        if ip and ":" not in ip:
            return ip
    return ""


def resolve_ports(svc: Obj, pod: Obj) -> list[Obj]:
    """The Service's ports as this pod serves them (targetPort resolved)."""
    out = []
    containers = (pod.get("spec") or {}).get("containers") or []
    for sp in (svc.get("spec") or {}).get("ports") or []:
        proto = sp.get("protocol", "TCP")
        tp = sp.get("targetPort", sp.get("port"))
        port = None
        if isinstance(tp, int) or str(tp).isdigit():
            port = int(tp)
        else:
            for c in containers:
                for cp in c.get("ports") or []:
                    if cp.get("name") == tp and cp.get("protocol", "TCP") == proto:
                        port = int(cp["containerPort"])
        if port is None:
            continue
        entry = {"name": sp.get("name", ""), "port": port, "protocol": proto}
        if sp.get("appProtocol"):
            entry["appProtocol"] = sp["appProtocol"]
        out.append(entry)
    return out


def selected_pods(svc: Obj, pods: list[Obj]) -> list[Obj]:
    sel = (svc.get("spec") or {}).get("selector") or {}
    ns = meta(svc).get("namespace")
    return sorted((p for p in pods if meta(p).get("namespace") == ns and sel
                   and map_selector_matches(sel, labels(p)) and pod_ipv4(p)
                   and phase(p) not in ("Succeeded", "Failed")),
                  key=lambda p: meta(p)["name"])


def endpoint(svc: Obj, pod: Obj) -> Obj:
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    serving, terminating = pod_ready(pod), deleting(pod)
    m, spec = meta(pod), pod.get("spec") or {}
    ep: Obj = {"addresses": [pod_ipv4(pod)],
               "conditions": {"ready": publish or (serving and not terminating),
                              "serving": serving or publish, "terminating": terminating},
               "targetRef": {"kind": "Pod", "namespace": m["namespace"], "name": m["name"],
                             "uid": m.get("uid", "")}}
    if spec.get("nodeName"):
        ep["nodeName"] = spec["nodeName"]
    if spec.get("hostname") and spec.get("subdomain") == meta(svc)["name"]:
        ep["hostname"] = spec["hostname"]
    return ep


def ports_key(ports: list[Obj]) -> str:
    return json.dumps(sorted(ports, key=lambda p: (p.get("name", ""), p["port"])),
                      sort_keys=True)


def desired_slices(svc: Obj, pods: list[Obj]) -> list[tuple[list[Obj], list[Obj]]]:
    """[(ports, endpoints)] with at most MAX_PER_SLICE endpoints each; one empty slice when
    no pod is selected (kube's placeholder)."""
    groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
    for pod in selected_pods(svc, pods):
        ports = resolve_ports(svc, pod)
        groups.setdefault(ports_key(ports), (ports, []))[1].append(endpoint(svc, pod))
    out = []
    for k in sorted(groups):
        ports, eps = groups[k]
        for i in range(0, len(eps), MAX_PER_SLICE):
            out.append((ports, eps[i:i + MAX_PER_SLICE]))
    return out or [([], [])]


def endpoints_subsets(svc: Obj, pods: list[Obj]) -> list[Obj]:
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    groups: dict[str, Obj] = {}
    for pod in selected_pods(svc, pods):
        if deleting(pod) and not publish:
            continue
        ports = [{k: v for k, v in p.items() if k != "name" or v} for p in
                 resolve_ports(svc, pod)]
        sub = groups.setdefault(ports_key(ports), {"ports": ports})
        ep = endpoint(svc, pod)
        addr = {"ip": ep["addresses"][0], "targetRef": ep["targetRef"]}
        if ep.get("nodeName"):
            addr["nodeName"] = ep["nodeName"]
        if ep.get("hostname"):
            addr["hostname"] = ep["hostname"]
        field = "addresses" if publish or pod_ready(pod) else "notReadyAddresses"
        sub.setdefault(field, []).append(addr)
    return [groups[k] for k in sorted(groups) if groups[k]["ports"]]


def slice_labels(svc: Obj) -> dict[str, str]:
    out = {**labels(svc), SERVICE_NAME: meta(svc)["name"], MANAGED_BY: CONTROLLER}
    if (svc.get("spec") or {}).get("clusterIP") == "None":
        out["service.kubernetes.io/headless"] = ""
    return out


def _norm(x: object) -> object:
    """Drop empty values, so defaults the server adds or omits do not look like changes."""
    if isinstance(x, dict):
        return {k: n for k, v in x.items() if (n := _norm(v)) not in (None, "", {}, [])}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


class EndpointSliceController(Controller):
    name = "endpointslice"
    batch = 0.1

    def setup(self) -> None:
        self.services = self.informer("services")
        self.pods = self.informer("pods")
        self.slices = self.informer("endpointslices")
        self.endpoints = self.informer("endpoints")
        # uid -> (resourceVersion our write returned, what we wrote): never rewrite an
        # object whose only difference is the server's normalisation of our own write.
        self._wrote: dict[str, tuple[str, object]] = {}
        self.on("services", lambda _e, obj, _o: self.enqueue(obj))
        self.on("pods", self._on_pod)
        self.on("endpointslices", self._on_slice)
        self.on("endpoints", lambda _e, obj, _o: self.enqueue(obj))

    def _on_pod(self, _event: str, pod: Obj, old: Obj | None) -> None:
        ns = meta(pod).get("namespace")
        lbls = [labels(pod)] + ([labels(old)] if old else [])
        for svc in self.services.items():
            sel = (svc.get("spec") or {}).get("selector")
            if meta(svc).get("namespace") == ns and sel and any(
                    map_selector_matches(sel, lb) for lb in lbls):
                self.enqueue_batched(key_of(svc))

    def _on_slice(self, event: str, sl: Obj, _old: Obj | None) -> None:
        lb = labels(sl)
        if lb.get(MANAGED_BY) != CONTROLLER or SERVICE_NAME not in lb:
            return
        key = f"{meta(sl).get('namespace')}/{lb[SERVICE_NAME]}"
        if event == "ADDED":
            self.expectations.created(key)
        elif event == "DELETED":
            self.expectations.deleted(key, key_of(sl))
            self._wrote.pop(meta(sl).get("uid", ""), None)
        self.queue.add(key)

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        svc = self.services.get(name, ns)
        mine = [s for s in self.slices.items() if meta(s).get("namespace") == ns
                and labels(s).get(SERVICE_NAME) == name
                and labels(s).get(MANAGED_BY) == CONTROLLER]
        if svc is None or not (svc.get("spec") or {}).get("selector") or deleting(svc):
            for s in mine:
                ignore_missing(lambda s=s: self.client.delete(
                    "endpointslices", meta(s)["name"], ns))
            ep = self.endpoints.get(name, ns)
            # Only a deleted Service loses its Endpoints: a selectorless one (``kubernetes``
            # among them) has Endpoints written by someone else.
            if svc is None and ep is not None and labels(ep).get(SKIP_MIRROR) == "true":
                ignore_missing(lambda: self.client.delete("endpoints", name, ns))
            self.expectations.forget(key)
            return
        pods = self.pods.items()
        self._sync_endpoints(svc, pods)
        if self.expectations.satisfied(key):
            self._sync_slices(svc, key, desired_slices(svc, pods), mine)

    def _sync_slices(self, svc: Obj, key: str, desired: list[tuple[list[Obj], list[Obj]]],
                     have: list[Obj]) -> None:
        ns, lbls = meta(svc)["namespace"], slice_labels(svc)
        pool: dict[str, list[Obj]] = {}
        for s in sorted(have, key=lambda s: meta(s)["name"]):
            pool.setdefault(ports_key(s.get("ports") or []), []).append(s)
        creates = []
        for ports, eps in desired:
            existing = pool.get(ports_key(ports)) or []
            if not existing:
                creates.append((ports, eps))
                continue
            s = existing.pop(0)
            want = _norm({"endpoints": eps, "ports": ports, "labels": lbls})
            if self._differs(s, want, {"endpoints": s.get("endpoints"),
                                       "ports": s.get("ports"), "labels": labels(s)}):
                new = copy.deepcopy(s)
                new["metadata"]["labels"] = lbls
                new["endpoints"], new["ports"] = eps, ports
                self._wrote_back(self.client.update("endpointslices", new, ns), want)
        leftovers = [s for ss in pool.values() for s in ss]
        self.expectations.expect(key, adds=len(creates),
                                 dels={key_of(s) for s in leftovers})
        for s in leftovers:
            self.delete_expected(key, s, "endpointslices")
        for i, (ports, eps) in enumerate(creates):
            obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"generateName": f"{meta(svc)['name']}-", "namespace": ns,
                                "labels": lbls,
                                "ownerReferences": [owner_ref(svc, "Service", "v1")]},
                   "addressType": "IPv4", "endpoints": eps, "ports": ports}
            try:
                self.client.create("endpointslices", obj, ns)
            except ApiError:
                self.expectations.created(key, len(creates) - i)
                raise

    def _sync_endpoints(self, svc: Obj, pods: list[Obj]) -> None:
        ns, name = meta(svc)["namespace"], meta(svc)["name"]
        subsets = endpoints_subsets(svc, pods)
        lbls = {**labels(svc), SKIP_MIRROR: "true"}
        have = self.endpoints.get(name, ns)
        if have is None:
            obj = {"apiVersion": "v1", "kind": "Endpoints",
                   "metadata": {"name": name, "namespace": ns, "labels": lbls},
                   "subsets": subsets}
            try:
                self.client.create("endpoints", obj, ns)
            except ApiError as exc:
                if exc.code != 409:  # exists: the cache is behind, the watch will tell
                    raise
            return
        want = _norm({"subsets": subsets, "labels": lbls})
        if self._differs(have, want, {"subsets": have.get("subsets"), "labels": labels(have)}):
            new = copy.deepcopy(have)
            new["metadata"]["labels"] = lbls
            new["subsets"] = subsets
            self._wrote_back(self.client.update("endpoints", new, ns), want)

    def _differs(self, obj: Obj, want: object, have: object) -> bool:
        if _norm(have) == want:
            return False
        last = self._wrote.get(meta(obj).get("uid", ""))
        return not (last and last == (meta(obj).get("resourceVersion"), want))

    def _wrote_back(self, written: Obj | None, want: object) -> None:
        if written:
            self._wrote[meta(written).get("uid", "")] = (
                meta(written).get("resourceVersion", ""), want)
