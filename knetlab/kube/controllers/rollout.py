"""The Deployment controller's decisions, as pure functions of cached objects.

ReplicaSets per template (``<deploy>-<pod-template-hash>``), revisions, one RollingUpdate
step (kube's arithmetic: surge rounds up, unavailable down, both 0 means unavailable 1;
the new RS grows while the total stays within replicas + maxSurge, old ones shrink while
available pods stay at or above replicas - maxUnavailable, their unavailable pods first),
proportional scaling of a rollout in flight, revisionHistoryLimit cleanup and the status
with its Available / Progressing conditions.
"""

from __future__ import annotations

import copy

from knetlab.kube.controllers.util import (
    Obj,
    condition,
    deleting,
    fmt_time,
    meta,
    now,
    owner_ref,
    parse_time,
    resolve_int_or_percent,
    template_hash,
)

REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX = "deployment.kubernetes.io/max-replicas"
HASH = "pod-template-hash"
NOT_COPIED = {REVISION, DESIRED, MAX, "deployment.kubernetes.io/revision-history",
              "kubectl.kubernetes.io/last-applied-configuration",
              "deprecated.deployment.rollback.to"}


def replicas_of(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def st(obj: Obj, field: str) -> int:
    return int((obj.get("status") or {}).get(field) or 0)


def revision(rs: Obj) -> int:
    try:
        return int((meta(rs).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def strip_hash(template: Obj) -> Obj:
    t = copy.deepcopy(template)
    (t.get("metadata") or {}).get("labels", {}).pop(HASH, None)
    return t


def find_new_rs(deploy: Obj, rss: list[Obj]) -> Obj | None:
    """The oldest RS whose template equals the Deployment's, ignoring pod-template-hash."""
    want = strip_hash((deploy.get("spec") or {}).get("template") or {})
    for rs in sorted(rss, key=lambda r: (meta(r).get("creationTimestamp", ""),
                                          meta(r)["name"])):
        if strip_hash((rs.get("spec") or {}).get("template") or {}) == want:
            return rs
    return None


def surge_unavailable(deploy: Obj) -> tuple[int, int]:
    spec = deploy.get("spec") or {}
    strat = spec.get("strategy") or {}
    if strat.get("type") == "Recreate":
        return 0, 0
    ru = strat.get("rollingUpdate") or {}
    want = replicas_of(deploy)
    surge = resolve_int_or_percent(ru.get("maxSurge"), want, True, "25%")
    unavail = resolve_int_or_percent(ru.get("maxUnavailable"), want, False, "25%")
    if surge == 0 and unavail == 0:
        unavail = 1
    return surge, min(unavail, want)


def rolling_step(deploy: Obj, new: Obj, olds: list[Obj]) -> dict[str, int]:
    """One step of a rolling update: {rs name: new spec.replicas}; empty when waiting."""
    want = replicas_of(deploy)
    surge, unavail = surge_unavailable(deploy)
    all_rs = [new, *olds]
    total = sum(replicas_of(r) for r in all_rs)
    # Scale the new ReplicaSet up (or down to the wanted count).
    if replicas_of(new) > want:
        return {meta(new)["name"]: want}
    if replicas_of(new) < want and total < want + surge:
        up = min(want + surge - total, want - replicas_of(new))
        return {meta(new)["name"]: replicas_of(new) + up}
    old_total = sum(replicas_of(r) for r in olds)
    if old_total == 0:
        return {}
    min_available = want - unavail
    new_unavailable = replicas_of(new) - st(new, "availableReplicas")
    max_down = total - min_available - new_unavailable
    if max_down <= 0:
        return {}
    plan: dict[str, int] = {}
    by_age = sorted(olds, key=lambda r: (meta(r).get("creationTimestamp", ""),
                                         meta(r)["name"]))
    # First the old ReplicaSets' unavailable pods: removing them costs no availability.
    cleaned = 0
    for rs in by_age:
        if cleaned >= max_down:
            break
        unhealthy = replicas_of(rs) - st(rs, "availableReplicas")
        if unhealthy <= 0 or replicas_of(rs) == 0:
            continue
        n = min(unhealthy, max_down - cleaned, replicas_of(rs))
        plan[meta(rs)["name"]] = replicas_of(rs) - n
        cleaned += n
    if plan:
        return plan
    available = sum(st(r, "availableReplicas") for r in all_rs)
    down = available - min_available
    for rs in by_age:
        if down <= 0:
            break
        n = min(replicas_of(rs), down)
        if n > 0:
            plan[meta(rs)["name"]] = replicas_of(rs) - n
            down -= n
    return plan


def proportional_scale(deploy: Obj, new: Obj | None, olds: list[Obj]) -> dict[str, int]:
    """Spread a replicas change over the active ReplicaSets (kube's proportional
    scaling): every RS keeps its share of replicas + maxSurge."""
    want = replicas_of(deploy)
    active = [r for r in ([new] if new else []) + olds if replicas_of(r) > 0]
    if not active:
        return {meta(new)["name"]: want} if new else {}
    if len(active) == 1:
        return {meta(active[0])["name"]: want}
    if new is not None and all(r is new for r in active):
        return {meta(new)["name"]: want}
    surge, _ = surge_unavailable(deploy)
    allowed = want + surge
    total = sum(replicas_of(r) for r in active)
    diff = allowed - total
    if diff == 0:
        return {meta(r)["name"]: replicas_of(r) for r in active}
    # Scaling up, the biggest and newest RS gets the rounding leftover; down, the oldest.
    created = {meta(r)["name"]: meta(r).get("creationTimestamp", "") for r in active}
    order = sorted(active, key=lambda r: (-replicas_of(r), _neg(created[meta(r)["name"]])
                                          if diff > 0 else created[meta(r)["name"]]))
    sizes = {meta(r)["name"]: replicas_of(r) for r in active}
    added = 0
    for r in order:
        share = replicas_of(r) * allowed // total - replicas_of(r) if total else 0
        share = max(share, diff - added) if diff < 0 else min(share, diff - added)
        sizes[meta(r)["name"]] += share
        added += share
    sizes[meta(order[0])["name"]] += diff - added
    return {k: max(0, v) for k, v in sizes.items()}


def _neg(s: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in s)


def deployment_status(deploy: Obj, new: Obj | None, olds: list[Obj]) -> Obj:
    """Counts, observedGeneration and the Available / Progressing conditions."""
    spec = deploy.get("spec") or {}
    want = replicas_of(deploy)
    all_rs = ([new] if new else []) + olds
    replicas = sum(st(r, "replicas") for r in all_rs)
    updated = st(new, "replicas") if new else 0
    available = sum(st(r, "availableReplicas") for r in all_rs)
    status: Obj = {
        "observedGeneration": meta(deploy).get("generation", 1),
        "replicas": replicas, "updatedReplicas": updated,
        "readyReplicas": sum(st(r, "readyReplicas") for r in all_rs),
        "availableReplicas": available,
        "unavailableReplicas": max(want - available, 0),
    }
    old_status = deploy.get("status") or {}
    if old_status.get("collisionCount") is not None:
        status["collisionCount"] = old_status["collisionCount"]
    _, unavail = surge_unavailable(deploy)
    ts = fmt_time()
    avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") \
        if available >= want - unavail else \
        ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    rs_name = meta(new)["name"] if new else meta(deploy)["name"]
    complete = new is not None and updated == want and replicas == want and available == want
    counts_changed = any(old_status.get(k) != status[k] for k in
                         ("replicas", "updatedReplicas", "availableReplicas"))
    prev = condition(deploy, "Progressing")
    if spec.get("paused"):
        prog = ("Unknown", "DeploymentPaused", "Deployment is paused")
    elif complete:
        prog = ("True", "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.')
    else:
        prog = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        deadline = int(spec.get("progressDeadlineSeconds") or 600)
        last = parse_time((prev or {}).get("lastUpdateTime"))
        if prev is not None and prev.get("reason") == "ProgressDeadlineExceeded" \
                and not counts_changed:
            prog = (prev["status"], prev["reason"], prev.get("message", ""))
        elif not counts_changed and last is not None and \
                (now() - last).total_seconds() > deadline:
            prog = ("False", "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.')
    status["conditions"] = [
        _cond(deploy, "Available", *avail, ts, touch=False),
        _cond(deploy, "Progressing", *prog, ts, touch=counts_changed)]
    return status


def _cond(obj: Obj, ctype: str, status: str, reason: str, message: str, ts: str,
          touch: bool) -> Obj:
    prev = condition(obj, ctype)
    same = prev is not None and prev.get("status") == status
    unchanged = same and prev.get("reason") == reason and prev.get("message") == message
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": prev.get("lastTransitionTime", ts) if same and prev else ts,
            "lastUpdateTime": prev.get("lastUpdateTime", ts)
            if unchanged and prev and not touch else ts}


def cleanup_plan(deploy: Obj, olds: list[Obj]) -> list[Obj]:
    """Old, empty ReplicaSets beyond revisionHistoryLimit (oldest revisions first)."""
    limit = int((deploy.get("spec") or {}).get("revisionHistoryLimit", 10))
    empty = [r for r in olds if replicas_of(r) == 0 and st(r, "replicas") == 0
             and not deleting(r)]
    empty.sort(key=revision)
    return empty[:max(0, len(empty) - limit)]


def is_scaling_event(deploy: Obj, rss: list[Obj]) -> bool:
    want = str(replicas_of(deploy))
    return any((meta(r).get("annotations") or {}).get(DESIRED, want) != want
               for r in rss if replicas_of(r) > 0)


def new_rs_object(deploy: Obj, replicas: int, rev: int) -> Obj:
    spec = deploy.get("spec") or {}
    h = template_hash(spec.get("template") or {},
                      (deploy.get("status") or {}).get("collisionCount"))
    tmpl = copy.deepcopy(spec.get("template") or {})
    tmpl.setdefault("metadata", {}).setdefault("labels", {})[HASH] = h
    sel = copy.deepcopy(spec.get("selector") or {})
    sel.setdefault("matchLabels", {})[HASH] = h
    m = meta(deploy)
    surge, _ = surge_unavailable(deploy)
    ann = {k: v for k, v in (m.get("annotations") or {}).items() if k not in NOT_COPIED}
    ann.update({REVISION: str(rev), DESIRED: str(replicas_of(deploy)),
                MAX: str(replicas_of(deploy) + surge)})
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{m['name']}-{h}", "namespace": m["namespace"],
                         "labels": dict(tmpl["metadata"]["labels"]), "annotations": ann,
                         "ownerReferences": [owner_ref(deploy, "Deployment", "apps/v1")]},
            "spec": {"replicas": replicas, "minReadySeconds": spec.get("minReadySeconds", 0),
                     "selector": sel, "template": tmpl}}


