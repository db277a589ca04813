"""Server-side printing: ``meta.k8s.io/v1 Table`` for every resource, as kubectl shows it.

Columns follow kube-apiserver's printers (pkg/printers/internalversion): priority 0
columns are the default view, priority 1 only with ``-o wide``. The pod STATUS column is
computed as kubectl users know it (ContainerCreating, CrashLoopBackOff, Completed,
Init:0/1, Terminating, ...). Ages are ``HumanDuration`` strings computed now.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from .strategies import selector_string

Obj = dict[str, Any]
Row = list[Any]


def human(seconds: float) -> str:
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m" if s % 60 == 0 else f"{m}m{s % 60}s"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h" if m % 60 == 0 else f"{h}h{m % 60}m"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d" if h % 24 == 0 else f"{h // 24}d{h % 24}h"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        dy = (h // 24) % 365
        return f"{h // 24 // 365}y" if dy == 0 else f"{h // 24 // 365}y{dy}d"
    return f"{h // 24 // 365}y"


def _ts(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def since(value: str | None) -> str:
    t = _ts(value)
    if t is None:
        return "<unknown>"
    return human((datetime.datetime.now(datetime.UTC) - t).total_seconds())


def age(o: Obj) -> str:
    return since(o.get("metadata", {}).get("creationTimestamp"))


def _containers(spec: Obj) -> tuple[str, str]:
    cs = spec.get("containers") or []
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _tmpl(o: Obj) -> Obj:
    return ((o.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_status(pod: Obj) -> tuple[str, int, int, int, str]:
    """(STATUS, ready, total, restarts, last restart) as kubectl's printPod computes."""
    spec, st = pod.get("spec") or {}, pod.get("status") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    total = len(spec.get("containers") or [])
    ready = restarts = 0
    last = None
    inits = spec.get("initContainers") or []
    initializing = False
    for i, cs in enumerate(st.get("initContainerStatuses") or []):
        restarts += cs.get("restartCount", 0)
        state = cs.get("state") or {}
        term, wait = state.get("terminated"), state.get("waiting")
        if term and term.get("exitCode") == 0:
            continue
        if term:
            reason = "Init:" + (term.get("reason") or (f"Signal:{term['signal']}"
                                if term.get("signal") else f"ExitCode:{term.get('exitCode')}"))
        elif wait and wait.get("reason") and wait["reason"] != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(inits)}"
        initializing = True
        break
    if not initializing:
        has_running = False
        for cs in reversed(st.get("containerStatuses") or []):
            restarts += cs.get("restartCount", 0)
            lt = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
            if lt and (last is None or lt > last):
                last = lt
            state = cs.get("state") or {}
            wait, term = state.get("waiting"), state.get("terminated")
            if wait and wait.get("reason"):
                reason = wait["reason"]
            elif term and term.get("reason"):
                reason = term["reason"]
            elif term:
                reason = (f"Signal:{term['signal']}" if term.get("signal")
                          else f"ExitCode:{term.get('exitCode')}")
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
            reason = "Running" if conds.get("Ready") == "True" else "NotReady"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Unknown" if st.get("reason") == "NodeLost" else "Terminating"
    return reason, ready, total, restarts, (f" ({since(last)} ago)" if last else "")


def pod_row(o: Obj) -> Row:
    status, ready, total, restarts, last = pod_status(o)
    st, spec = o.get("status") or {}, o.get("spec") or {}
    gates = spec.get("readinessGates") or []
    if gates:
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        ok = sum(1 for g in gates if conds.get(g.get("conditionType")) == "True")
        gates_cell = f"{ok}/{len(gates)}"
    else:
        gates_cell = "<none>"
    return [o["metadata"]["name"], f"{ready}/{total}", status, f"{restarts}{last}", age(o),
            st.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            st.get("nominatedNodeName") or "<none>", gates_cell]


def deploy_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    c, i = _containers(_tmpl(o))
    return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(o), c, i,
            selector_string(spec.get("selector")) or "<none>"]


def rs_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    c, i = _containers(_tmpl(o))
    return [o["metadata"]["name"], spec.get("replicas", 0), st.get("replicas", 0),
            st.get("readyReplicas", 0), age(o), c, i,
            selector_string(spec.get("selector")) or "<none>"]


def ds_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    c, i = _containers(_tmpl(o))
    ns = _tmpl(o).get("nodeSelector") or {}
    return [o["metadata"]["name"], st.get("desiredNumberScheduled", 0),
            st.get("currentNumberScheduled", 0), st.get("numberReady", 0),
            st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0),
            ",".join(f"{k}={v}" for k, v in ns.items()) or "<none>", age(o), c, i,
            selector_string(spec.get("selector")) or "<none>"]


def sts_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    c, i = _containers(_tmpl(o))
    return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            age(o), c, i]


def job_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    status = "Running"
    for t, label in (("Complete", "Complete"), ("Failed", "Failed"),
                     ("FailureTarget", "FailureTarget"), ("SuccessCriteriaMet",
                                                          "SuccessCriteriaMet"),
                     ("Suspended", "Suspended")):
        if conds.get(t) == "True":
            status = label
            break
    if o.get("metadata", {}).get("deletionTimestamp"):
        status = "Terminating"
    comp = spec.get("completions")
    completions = f"{st.get('succeeded', 0)}/{comp}" if comp is not None else \
        f"{st.get('succeeded', 0)}/1 of {spec.get('parallelism', 1)}"
    start, end = _ts(st.get("startTime")), _ts(st.get("completionTime"))
    if start is None:
        duration = ""
    else:
        stop = end or datetime.datetime.now(datetime.UTC)
        duration = human((stop - start).total_seconds())
    c, i = _containers(_tmpl(o))
    return [o["metadata"]["name"], status, completions, duration, age(o), c, i,
            selector_string(spec.get("selector")) or "<none>"]


def cronjob_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    tspec = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get(
        "spec") or {}
    c, i = _containers(tspec)
    last = st.get("lastScheduleTime")
    return [o["metadata"]["name"], spec.get("schedule", ""), spec.get("timeZone") or "<none>",
            str(bool(spec.get("suspend"))), len(st.get("active") or []),
            since(last) if last else "<none>", age(o), c, i, "<none>"]


def svc_ports(spec: Obj) -> str:
    out = []
    for p in spec.get("ports") or []:
        s = f"{p.get('port')}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}"
        out.append(f"{s}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def svc_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    typ = spec.get("type", "ClusterIP")
    ext = list(spec.get("externalIPs") or [])
    if typ == "LoadBalancer":
        ing = [i.get("ip") or i.get("hostname") for i in
               (st.get("loadBalancer") or {}).get("ingress") or []]
        ext = ext + [i for i in ing if i] or ["<pending>"]
    elif typ == "ExternalName":
        ext = [spec.get("externalName", "")]
    sel = spec.get("selector") or {}
    return [o["metadata"]["name"], typ, spec.get("clusterIP") or "<none>",
            ",".join(ext) or "<none>", svc_ports(spec), age(o),
            ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"]


def ep_row(o: Obj) -> Row:
    eps = []
    for s in o.get("subsets") or []:
        for a in s.get("addresses") or []:
            for p in s.get("ports") or [{}]:
                eps.append(f"{a.get('ip')}:{p['port']}" if p.get("port") else a.get("ip"))
    text = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
    return [o["metadata"]["name"], text or "<none>", age(o)]


def slice_row(o: Obj) -> Row:
    ports = ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>"
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    text = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    return [o["metadata"]["name"], o.get("addressType", ""), ports, text or "<unset>", age(o)]


def node_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    status = {"True": "Ready", "False": "NotReady"}.get(conds.get("Ready", ""), "Unknown")
    if spec.get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = o["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels
                   if k.startswith("node-role.kubernetes.io/") and "/" in k)
    addrs = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
    info = st.get("nodeInfo") or {}
    return [o["metadata"]["name"], status, ",".join(roles) or "<none>", age(o),
            info.get("kubeletVersion", ""), addrs.get("InternalIP") or "<none>",
            addrs.get("ExternalIP") or "<none>", info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def event_row(o: Obj) -> Row:
    inv = o.get("involvedObject") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    first = o.get("firstTimestamp") or o.get("eventTime") or last
    src = o.get("source") or {}
    return [since(last), o.get("type", ""), o.get("reason", ""),
            f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}", o.get("message", ""),
            inv.get("fieldPath", ""), src.get("component", "") + (
                f", {src['host']}" if src.get("host") else ""), since(first),
            o.get("count", 1), o["metadata"]["name"]]


def ingress_row(o: Obj) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    hosts = [r.get("host") for r in spec.get("rules") or [] if r.get("host")]
    addrs = [i.get("ip") or i.get("hostname") for i in
             (st.get("loadBalancer") or {}).get("ingress") or []]
    return [o["metadata"]["name"], spec.get("ingressClassName") or "<none>",
            ",".join(hosts) or "*", ",".join(a for a in addrs if a),
            "80, 443" if spec.get("tls") else "80", age(o)]


def simple(*fields: Callable[[Obj], Any]) -> Callable[[Obj], Row]:
    return lambda o: [o["metadata"]["name"], *(f(o) for f in fields), age(o)]


def _count(key: str) -> Callable[[Obj], int]:
    return lambda o: len(o.get(key) or {}) + (len(o.get("binaryData") or {})
                                              if key == "data" else 0)


C = tuple[str, str, int]  # name, type, priority
NAME: C = ("Name", "string", 0)
AGE: C = ("Age", "string", 0)
CONT = [("Containers", "string", 1), ("Images", "string", 1)]
SEL = [("Selector", "string", 1)]

PRINTERS: dict[str, tuple[list[C], Callable[[Obj], Row]]] = {
    "Pod": ([NAME, ("Ready", "string", 0), ("Status", "string", 0),
             ("Restarts", "string", 0), AGE, ("IP", "string", 1), ("Node", "string", 1),
             ("Nominated Node", "string", 1), ("Readiness Gates", "string", 1)], pod_row),
    "Deployment": ([NAME, ("Ready", "string", 0), ("Up-to-date", "integer", 0),
                    ("Available", "integer", 0), AGE, *CONT, *SEL], deploy_row),
    "ReplicaSet": ([NAME, ("Desired", "integer", 0), ("Current", "integer", 0),
                    ("Ready", "integer", 0), AGE, *CONT, *SEL], rs_row),
    "DaemonSet": ([NAME, ("Desired", "integer", 0), ("Current", "integer", 0),
                   ("Ready", "integer", 0), ("Up-to-date", "integer", 0),
                   ("Available", "integer", 0), ("Node Selector", "string", 0), AGE, *CONT,
                   *SEL], ds_row),
    "StatefulSet": ([NAME, ("Ready", "string", 0), AGE, *CONT], sts_row),
    "Job": ([NAME, ("Status", "string", 0), ("Completions", "string", 0),
             ("Duration", "string", 0), AGE, *CONT, *SEL], job_row),
    "CronJob": ([NAME, ("Schedule", "string", 0), ("Timezone", "string", 0),
                 ("Suspend", "boolean", 0), ("Active", "integer", 0),
                 ("Last Schedule", "string", 0), AGE, *CONT, *SEL], cronjob_row),
    "Service": ([NAME, ("Type", "string", 0), ("Cluster-IP", "string", 0),
                 ("External-IP", "string", 0), ("Port(s)", "string", 0), AGE, *SEL], svc_row),
    "Endpoints": ([NAME, ("Endpoints", "string", 0), AGE], ep_row),
    "EndpointSlice": ([NAME, ("AddressType", "string", 0), ("Ports", "string", 0),
                       ("Endpoints", "string", 0), AGE], slice_row),
    "Node": ([NAME, ("Status", "string", 0), ("Roles", "string", 0), AGE,
              ("Version", "string", 0), ("Internal-IP", "string", 1),
              ("External-IP", "string", 1), ("OS-Image", "string", 1),
              ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)], node_row),
    "Namespace": ([NAME, ("Status", "string", 0), AGE],
                  lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""),
                             age(o)]),
    "Event": ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0),
               ("Object", "string", 0), ("Message", "string", 0), ("Subobject", "string", 1),
               ("Source", "string", 1), ("First Seen", "string", 1), ("Count", "string", 1),
               ("Name", "string", 1)], event_row),
    "Ingress": ([NAME, ("Class", "string", 0), ("Hosts", "string", 0),
                 ("Address", "string", 0), ("Ports", "string", 0), AGE], ingress_row),
    "IngressClass": ([NAME, ("Controller", "string", 0), ("Parameters", "string", 0), AGE],
                     simple(lambda o: (o.get("spec") or {}).get("controller", ""),
                            lambda o: "<none>")),
    "NetworkPolicy": ([NAME, ("Pod-Selector", "string", 0), AGE],
                      simple(lambda o: selector_string((o.get("spec") or {}).get(
                          "podSelector")) or "<none>")),
    "ConfigMap": ([NAME, ("Data", "integer", 0), AGE], simple(_count("data"))),
    "Secret": ([NAME, ("Type", "string", 0), ("Data", "integer", 0), AGE],
               simple(lambda o: o.get("type", ""), _count("data"))),
    "ServiceAccount": ([NAME, ("Secrets", "integer", 0), AGE], simple(_count("secrets"))),
    "Lease": ([NAME, ("Holder", "string", 0), AGE],
              simple(lambda o: (o.get("spec") or {}).get("holderIdentity", ""))),
    "ControllerRevision": ([NAME, ("Controller", "string", 0), ("Revision", "integer", 0), AGE],
                           simple(lambda o: next((f"{r.get('kind', '').lower()}.apps/"
                                                  f"{r.get('name')}" for r in
                                                  o["metadata"].get("ownerReferences") or []),
                                                 "<none>"), lambda o: o.get("revision", 0))),
}
DEFAULT: tuple[list[C], Callable[[Obj], Row]] = ([NAME, AGE], simple())


def _partial(o: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata", {})}


def table(kind: str, objs: list[Obj], list_meta: Obj | None = None,
          include: str = "Metadata", headers: bool = True) -> Obj:
    cols, row = PRINTERS.get(kind, DEFAULT)
    rows = []
    for o in objs:
        obj = o if include == "Object" else (_partial(o) if include == "Metadata" else None)
        r: Obj = {"cells": row(o)}
        if obj is not None:
            r["object"] = obj
        rows.append(r)
    out: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": dict(list_meta or {}), "rows": rows}
    if headers:
        out["columnDefinitions"] = [
            {"name": n, "type": t, "format": "name" if n == "Name" and p == 0 else "",
             "description": "", "priority": p} for n, t, p in cols]
    else:
        out["columnDefinitions"] = []
    return out
