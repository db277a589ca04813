"""Pure helpers the controllers share: label selectors, node matching, pod state, owner
references, template hashes and time stamps.

No I/O here: every function takes API objects (plain dicts as the API serves them) and
returns values, so the controllers' decisions can be unit-tested without a server.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

Obj = dict[str, Any]

# -- time -----------------------------------------------------------------------------


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime | None = None) -> str:
    """RFC 3339 to the second, as the API serves metav1.Time."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


# -- metadata -------------------------------------------------------------------------


def meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def uid(obj: Obj) -> str:
    return meta(obj).get("uid", "")


def labels(obj: Obj) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def deleting(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def controller_ref(obj: Obj) -> Obj | None:
    """The ownerReference with ``controller: true`` (at most one exists)."""
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def owned_by(obj: Obj, owner: Obj) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == uid(owner)


def owner_ref(owner: Obj, kind: str, api_version: str) -> Obj:
    m = meta(owner)
    return {"apiVersion": api_version, "kind": kind, "name": m["name"], "uid": m["uid"],
            "controller": True, "blockOwnerDeletion": True}


# -- selectors --------------------------------------------------------------------------


def _expr_matches(expr: Obj, values: dict[str, str]) -> bool:
    key, op = expr.get("key", ""), expr.get("operator", "")
    vals = expr.get("values") or []
    if op == "In":
        return key in values and values[key] in vals
    if op == "NotIn":
        return key not in values or values[key] not in vals
    if op == "Exists":
        return key in values
    if op == "DoesNotExist":
        return key not in values
    if op in ("Gt", "Lt") and key in values and vals:
        try:
            have, want = int(values[key]), int(vals[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def selector_matches(selector: Obj | None, lbls: dict[str, str]) -> bool:
    """A metav1.LabelSelector: None selects nothing, {} selects everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if lbls.get(k) != v:
            return False
    return all(_expr_matches(e, lbls) for e in selector.get("matchExpressions") or [])


def map_selector_matches(selector: dict[str, str] | None, lbls: dict[str, str]) -> bool:
    """A Service's or nodeSelector's plain map; empty selects everything."""
    return all(lbls.get(k) == v for k, v in (selector or {}).items())


def selector_string(selector: Obj | None) -> str:
    """matchLabels as a labelSelector query (expressions are checked client-side)."""
    return ",".join(f"{k}={v}" for k, v in sorted(((selector or {}).get("matchLabels")
                                                    or {}).items()))


def node_matches_pod(node: Obj, pod_spec: Obj) -> bool:
    """nodeSelector and required node affinity of a pod spec against a Node."""
    nl = labels(node)
    if not map_selector_matches(pod_spec.get("nodeSelector"), nl):
        return False
    req = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = req.get("nodeSelectorTerms") or []
    if not terms:
        return True
    fields = {"metadata.name": meta(node).get("name", "")}
    for term in terms:  # terms are ORed, expressions within a term ANDed
        exprs, fexprs = term.get("matchExpressions") or [], term.get("matchFields") or []
        if not exprs and not fexprs:
            continue
        if all(_expr_matches(e, nl) for e in exprs) and all(
                _expr_matches(e, fields) for e in fexprs):
            return True
    return False


# -- nodes ------------------------------------------------------------------------------


def condition(obj: Obj, ctype: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def node_ready(node: Obj) -> bool:
    c = condition(node, "Ready")
    return c is not None and c.get("status") == "True"


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
                taint.get("value") or ""):
            return True
    return False


def untolerated_taint(node: Obj, tolerations: list[Obj]) -> Obj | None:
    """The first NoSchedule/NoExecute taint the tolerations do not cover."""
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
                tolerations, taint):
            return taint
    return None


# -- pods ---------------------------------------------------------------------------------


def phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def pod_ready(pod: Obj) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def pod_available(pod: Obj, min_ready_seconds: int, at: dt.datetime | None = None) -> bool:
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and (at or now()) - since >= dt.timedelta(
        seconds=min_ready_seconds)


def pod_active(pod: Obj) -> bool:
    """client-go's IsPodActive: not finished and not being deleted."""
    return phase(pod) not in ("Succeeded", "Failed") and not deleting(pod)


def restarts(pod: Obj) -> int:
    return sum(int(cs.get("restartCount") or 0)
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def deletion_rank(pod: Obj) -> tuple[Any, ...]:
    """Sort key: pods to delete first come first (kube's ActivePods ranking, reduced):
    unscheduled, then Pending < Unknown < Running, not ready, ready for less time, more
    restarts, newer."""
    scheduled = bool((pod.get("spec") or {}).get("nodeName"))
    ph = {"Pending": 0, "Unknown": 1, "Running": 2}.get(phase(pod), 0)
    ready = pod_ready(pod)
    ready_since = (condition(pod, "Ready") or {}).get("lastTransitionTime") or ""
    created = meta(pod).get("creationTimestamp") or ""
    # Later timestamps sort first: invert by sorting on the negated ordinal of each char.
    return (scheduled, ph, ready, _desc(ready_since) if ready else (), -restarts(pod),
            _desc(created), meta(pod).get("name", ""))


def _desc(s: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in s) + (1,)


def pod_from_template(template: Obj, owner_reference: Obj | None, namespace: str,
                      generate_name: str = "", name: str = "",
                      extra_labels: dict[str, str] | None = None) -> Obj:
    tmeta = template.get("metadata") or {}
    md: Obj = {"namespace": namespace,
               "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})}}
    if tmeta.get("annotations"):
        md["annotations"] = dict(tmeta["annotations"])
    if name:
        md["name"] = name
    else:
        md["generateName"] = generate_name
    if owner_reference:
        md["ownerReferences"] = [owner_reference]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": copy.deepcopy(template.get("spec") or {})}


# -- hashes ---------------------------------------------------------------------------------

_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery rand.SafeEncodeString alphabet


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: Obj, collision_count: int | None = None) -> str:
    """A stable short hash of a pod template (pod-template-hash, controller-revision-hash):
    FNV-32a of its canonical JSON (plus the collision count), safe-encoded as upstream."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return "".join(_SAFE[ord(c) % len(_SAFE)] for c in f"{fnv32a(data):x}")


def resolve_int_or_percent(value: Any, total: int, round_up: bool, default: Any) -> int:
    """maxSurge / maxUnavailable: an int, or "N%" of total rounded up (surge) or down."""
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    s = str(value)
    if s.endswith("%"):
        pct = int(s[:-1])
        num = total * pct
        return -(-num // 100) if round_up else num // 100
    return int(s)
