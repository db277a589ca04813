"""Defaulting, as kube-apiserver's ``SetDefaults_*`` functions and admission do it.

Applied to every create and update body, so ``kubectl describe``, ``rollout status`` and the
official Python client (whose models reject missing required fields) see what they would
see from a real cluster: container ``terminationMessagePath``, ``imagePullPolicy``,
``protocol: TCP``, pod ``restartPolicy``/``dnsPolicy``/``schedulerName``, Deployment
strategy 25%/25%, Service ``sessionAffinity``, Job ``backoffLimit``, ... Only fields that are
absent are filled; defaulting twice is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def _sd(d: Obj, key: str, value: Any) -> Any:
    if d.get(key) is None:
        d[key] = value
    return d[key]


def pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    if ":" not in tail or tail.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def container(c: Obj) -> None:
    _sd(c, "terminationMessagePath", "/dev/termination-log")
    _sd(c, "terminationMessagePolicy", "File")
    _sd(c, "imagePullPolicy", pull_policy(c.get("image") or ""))
    _sd(c, "resources", {})
    for p in c.get("ports") or []:
        _sd(p, "protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        pr = c.get(probe)
        if isinstance(pr, dict):
            for k, v in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                         ("failureThreshold", 3)):
                _sd(pr, k, v)
            http = pr.get("httpGet")
            if isinstance(http, dict):
                _sd(http, "path", "/")
                _sd(http, "scheme", "HTTP")
    for e in c.get("env") or []:
        vf = e.get("valueFrom") or {}
        if isinstance(vf.get("fieldRef"), dict):
            _sd(vf["fieldRef"], "apiVersion", "v1")


def pod_spec(spec: Obj) -> None:
    _sd(spec, "restartPolicy", "Always")
    _sd(spec, "terminationGracePeriodSeconds", 30)
    _sd(spec, "dnsPolicy", "ClusterFirst")
    _sd(spec, "securityContext", {})
    _sd(spec, "schedulerName", "default-scheduler")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if isinstance(c, dict):
            container(c)
    for v in spec.get("volumes") or []:
        for src, field, default in (("configMap", "defaultMode", 420),
                                    ("secret", "defaultMode", 420)):
            if isinstance(v.get(src), dict):
                _sd(v[src], field, default)


def template(t: Obj | None) -> None:
    if isinstance(t, dict):
        pod_spec(_sd(t, "spec", {}))


def qos_class(spec: Obj) -> str:
    cs = spec.get("containers") or []
    reqs = [(c.get("resources") or {}) for c in cs]
    if not any(r.get("requests") or r.get("limits") for r in reqs):
        return "BestEffort"
    for r in reqs:
        lim, req = r.get("limits") or {}, r.get("requests") or {}
        for res in ("cpu", "memory"):
            if res not in lim or req.get(res, lim[res]) != lim[res]:
                return "Burstable"
    return "Guaranteed"


def pod(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    pod_spec(spec)
    _sd(spec, "enableServiceLinks", True)
    _sd(spec, "serviceAccountName", "default")
    _sd(spec, "serviceAccount", spec["serviceAccountName"])
    _sd(spec, "priority", 0)
    _sd(spec, "preemptionPolicy", "PreemptLowerPriority")
    tol = _sd(spec, "tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tol):
            tol.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                        "tolerationSeconds": 300})


def deployment(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "replicas", 1)
    strat = _sd(spec, "strategy", {})
    _sd(strat, "type", "RollingUpdate")
    if strat["type"] == "RollingUpdate":
        ru = _sd(strat, "rollingUpdate", {})
        _sd(ru, "maxUnavailable", "25%")
        _sd(ru, "maxSurge", "25%")
    _sd(spec, "revisionHistoryLimit", 10)
    _sd(spec, "progressDeadlineSeconds", 600)
    template(spec.get("template"))


def replicaset(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "replicas", 1)
    template(spec.get("template"))


def daemonset(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    us = _sd(spec, "updateStrategy", {})
    _sd(us, "type", "RollingUpdate")
    if us["type"] == "RollingUpdate":
        ru = _sd(us, "rollingUpdate", {})
        _sd(ru, "maxUnavailable", 1)
        _sd(ru, "maxSurge", 0)
    _sd(spec, "revisionHistoryLimit", 10)
    template(spec.get("template"))


def statefulset(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "replicas", 1)
    _sd(spec, "podManagementPolicy", "OrderedReady")
    us = _sd(spec, "updateStrategy", {})
    _sd(us, "type", "RollingUpdate")
    if us["type"] == "RollingUpdate":
        _sd(_sd(us, "rollingUpdate", {}), "partition", 0)
    _sd(spec, "revisionHistoryLimit", 10)
    _sd(spec, "persistentVolumeClaimRetentionPolicy",
        {"whenDeleted": "Retain", "whenScaled": "Retain"})
    template(spec.get("template"))


def job(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = spec["parallelism"] = 1
    _sd(spec, "parallelism", 1)
    _sd(spec, "backoffLimit", 6)
    _sd(spec, "completionMode", "NonIndexed")
    _sd(spec, "suspend", False)
    _sd(spec, "podReplacementPolicy", "TerminatingOrFailed")
    template(spec.get("template"))


def cronjob(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "concurrencyPolicy", "Allow")
    _sd(spec, "suspend", False)
    _sd(spec, "successfulJobsHistoryLimit", 3)
    _sd(spec, "failedJobsHistoryLimit", 1)
    jt = spec.get("jobTemplate")
    if isinstance(jt, dict):
        template((jt.get("spec") or {}).get("template"))


def service(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "type", "ClusterIP")
    _sd(spec, "sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        _sd(spec, "internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        _sd(spec, "externalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        _sd(p, "protocol", "TCP")
        if p.get("targetPort") in (None, 0, ""):
            p["targetPort"] = p.get("port")
    _sd(obj, "status", {"loadBalancer": {}})


def namespace(obj: Obj) -> None:
    name = obj.get("metadata", {}).get("name", "")
    labels = _sd(obj["metadata"], "labels", {})
    labels.setdefault("kubernetes.io/metadata.name", name)
    _sd(_sd(obj, "spec", {}), "finalizers", ["kubernetes"])
    _sd(_sd(obj, "status", {}), "phase", "Active")


def secret(obj: Obj) -> None:
    _sd(obj, "type", "Opaque")


def network_policy(obj: Obj) -> None:
    spec = _sd(obj, "spec", {})
    _sd(spec, "podSelector", {})
    if spec.get("policyTypes") is None:
        spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
        for p in rule.get("ports") or []:
            _sd(p, "protocol", "TCP")


def endpoint_slice(obj: Obj) -> None:
    for p in obj.get("ports") or []:
        _sd(p, "protocol", "TCP")


def endpoints(obj: Obj) -> None:
    for s in obj.get("subsets") or []:
        for p in s.get("ports") or []:
            _sd(p, "protocol", "TCP")


DEFAULTERS: dict[str, Callable[[Obj], None]] = {
    "Pod": pod, "Deployment": deployment, "ReplicaSet": replicaset, "DaemonSet": daemonset,
    "StatefulSet": statefulset, "Job": job, "CronJob": cronjob, "Service": service,
    "Namespace": namespace, "Secret": secret, "NetworkPolicy": network_policy,
    "EndpointSlice": endpoint_slice, "Endpoints": endpoints,
}


def apply_defaults(kind: str, obj: Obj) -> None:
    fn = DEFAULTERS.get(kind)
    if fn is not None:
        fn(obj)
