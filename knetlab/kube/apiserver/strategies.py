"""Per-kind strategy hooks of the generic registry (kube-apiserver's ``rest.*Strategy``).

The registry does the same steps for every resource; what differs per kind lives here:
what a create resets (status), what an update keeps (Service clusterIP and node ports),
the Job's generated selector, graceful deletion of pods, and the ``Scale`` view of the
apps kinds. Plus the ClusterIP / NodePort allocator (unique over the Services in etcd,
serialised by one lock: a single API server process owns allocation).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import random
from typing import Any

from .defaults import qos_class
from .errors import StatusError, invalid
from .resources import BY_PLURAL, Resource
from .validation import invalid as invalid_cause

Obj = dict[str, Any]
KEEP_STATUS_ON_CREATE = {"Node", "Event", "Lease", "EndpointSlice", "Endpoints"}


ZERO_STATUS: dict[str, Obj] = {
    "ReplicaSet": {"replicas": 0},
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "DaemonSet": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                  "numberMisscheduled": 0, "numberReady": 0},
}


def prepare_create(res: Resource, obj: Obj) -> None:
    kind = res.kind
    if kind == "Pod":
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj.get("spec") or {})}
    elif kind == "Namespace":
        obj["status"] = {"phase": "Active"}
    elif kind == "Service":
        obj["status"] = {"loadBalancer": {}}
    elif "status" in res.subresources and kind not in KEEP_STATUS_ON_CREATE:
        # The zero counts kube-apiserver always sends (they are required in the official
        # client's models: it rejects a StatefulSet whose status lacks "replicas").
        obj["status"] = dict(ZERO_STATUS.get(kind, {}))
    if kind == "Job":
        job_selector(obj)


def job_selector(obj: Obj) -> None:
    """Upstream generates a Job's selector from its uid unless manualSelector is set."""
    spec = obj.setdefault("spec", {})
    if spec.get("manualSelector"):
        return
    uid = obj["metadata"]["uid"]
    name = obj["metadata"]["name"]
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
    labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                   "controller-uid": uid, "job-name": name})


def prepare_update(res: Resource, new: Obj, old: Obj) -> None:
    if res.kind == "Service":
        ns, os_ = new.setdefault("spec", {}), old.get("spec") or {}
        if not ns.get("clusterIP") and os_.get("clusterIP"):
            ns["clusterIP"] = os_["clusterIP"]
            ns["clusterIPs"] = os_.get("clusterIPs", [os_["clusterIP"]])
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in os_.get("ports") or []}
        if ns.get("type") in ("NodePort", "LoadBalancer"):
            for p in ns.get("ports") or []:
                if not p.get("nodePort"):
                    p["nodePort"] = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
                    if not p["nodePort"]:
                        p.pop("nodePort")
    if res.kind == "Namespace":
        new["spec"] = old.get("spec", new.get("spec"))


def pod_grace(obj: Obj, requested: int | None) -> int:
    """Seconds of graceful deletion a pod gets; 0 deletes at once (unbound or finished)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return max(0, requested)
    return int(spec.get("terminationGracePeriodSeconds", 30))


# -- Scale subresource ---------------------------------------------------------------
def selector_string(sel: Obj | None) -> str:
    if not sel:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator")
        if op == "Exists":
            parts.append(e["key"])
        elif op == "DoesNotExist":
            parts.append("!" + e["key"])
        else:
            vals = ",".join(sorted(e.get("values") or []))
            parts.append(f"{e['key']} {'in' if op == 'In' else 'notin'} ({vals})")
    return ",".join(parts)


def to_scale(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                               "creationTimestamp") if k in meta},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": selector_string((obj.get("spec") or {}).get("selector"))}}


def from_scale(res: Resource, old: Obj, scale: Obj) -> Obj:
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or replicas < 0:
        raise invalid(BY_PLURAL["deployments"] if res.kind == "Deployment" else res,
                      old["metadata"]["name"],
                      [invalid_cause("spec.replicas", replicas,
                                     "must be greater than or equal to 0")])
    new = copy.deepcopy(old)
    new.setdefault("spec", {})["replicas"] = replicas
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    if rv:
        new["metadata"]["resourceVersion"] = rv
    return new


# -- allocation ----------------------------------------------------------------------
class Allocator:
    """ClusterIPs from the service CIDR and node ports from their range, unique across
    the Services that exist (so a deleted Service's addresses are free again)."""

    def __init__(self, service_cidr: str, node_ports: tuple[int, int]) -> None:
        self.net = ipaddress.ip_network(service_cidr, strict=False)
        self.node_ports = node_ports
        self.lock = asyncio.Lock()

    @property
    def first_ip(self) -> str:
        return str(self.net.network_address + 1)

    def allocate(self, res: Resource, svc: Obj, services: list[Obj]) -> None:
        name = svc["metadata"].get("name", "")
        spec = svc.setdefault("spec", {})
        used_ips = {s["spec"].get("clusterIP") for s in services if s.get("spec")}
        used_ports = {p.get("nodePort") for s in services
                      for p in (s.get("spec") or {}).get("ports") or []}
        if spec.get("type") == "ExternalName":
            return
        ip = spec.get("clusterIP") or ((spec.get("clusterIPs") or [""])[0])
        if ip == "None":
            spec["clusterIPs"] = ["None"]
        elif ip:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise invalid(res, name, [invalid_cause("spec.clusterIPs[0]", ip,
                                                        "must be a valid IP address")]) from None
            if addr not in self.net:
                raise invalid(res, name, [invalid_cause(
                    "spec.clusterIPs", [ip], f"failed to allocate IP {ip}: the provided IP "
                    f"({ip}) is not in the valid range. The range of valid IPs is "
                    f"{self.net}")])
            if ip in used_ips:
                raise invalid(res, name, [invalid_cause(
                    "spec.clusterIPs", [ip], f"failed to allocate IP {ip}: provided IP is "
                    "already allocated")])
        else:
            size = self.net.num_addresses - 2
            start = random.randrange(size)
            for i in range(size):
                cand = str(self.net.network_address + 1 + (start + i) % size)
                if cand not in used_ips and cand != self.first_ip or \
                        name == "kubernetes" and cand == self.first_ip:
                    ip = cand
                    break
            if not ip:
                raise StatusError(500, "InternalError", "range is full")
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        if ip != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            self._node_ports(res, name, spec, used_ports)

    def _node_ports(self, res: Resource, name: str, spec: Obj, used: set[Any]) -> None:
        lo, hi = self.node_ports
        for i, p in enumerate(spec.get("ports") or []):
            want = p.get("nodePort")
            if want:
                if not lo <= want <= hi:
                    raise invalid(res, name, [invalid_cause(
                        f"spec.ports[{i}].nodePort", want,
                        f"provided port is not in the valid range. The range of valid ports "
                        f"is {lo}-{hi}")])
                if want in used:
                    raise invalid(res, name, [invalid_cause(
                        f"spec.ports[{i}].nodePort", want, "provided port is already allocated")])
            else:
                start = random.randrange(hi - lo + 1)
                for j in range(hi - lo + 1):
                    cand = lo + (start + j) % (hi - lo + 1)
                    if cand not in used:
                        want = cand
                        break
                p["nodePort"] = want
            used.add(want)
