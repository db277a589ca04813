"""The Job controller: runs pods until ``completions`` succeed or the Job fails.

Up to ``parallelism`` pods run at once (never more than the completions still missing).
Failed pods count against ``backoffLimit`` (restartPolicy OnFailure: container restarts
count); past it the Job gets FailureTarget + Failed (reason BackoffLimitExceeded) and its
running pods are deleted. ``activeDeadlineSeconds`` fails it with DeadlineExceeded. A
finished Job gets SuccessCriteriaMet + Complete and a completionTime, as kube 1.31+ writes
them. Pods carry ``job-name``, ``batch.kubernetes.io/job-name``, ``controller-uid`` and
``batch.kubernetes.io/controller-uid`` (the API server puts them on the template).
``plan_job`` is the pure decision.
"""

from __future__ import annotations

import logging
from typing import Any

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.util import (
    Obj,
    condition,
    deleting,
    deletion_rank,
    fmt_time,
    labels,
    meta,
    now,
    owner_ref,
    parse_time,
    phase,
    pod_from_template,
    pod_ready,
    restarts,
    selector_matches,
)

log = logging.getLogger("knetlab.kube.controllers.job")


def finished(job: Obj) -> bool:
    return any((c := condition(job, t)) is not None and c.get("status") == "True"
               for t in ("Complete", "Failed"))


def plan_job(job: Obj, pods: list[Obj], at: Any = None) -> Obj:
    """What to do: {"create": n, "delete": [pods], "status": {...} (counts and conditions)}."""
    spec = job.get("spec") or {}
    old = job.get("status") or {}
    at = at or now()
    parallelism = int(spec.get("parallelism", 1))
    completions = spec.get("completions")
    backoff = int(spec.get("backoffLimit", 6))
    active = [p for p in pods if phase(p) not in ("Succeeded", "Failed") and not deleting(p)]
    succeeded = max(int(old.get("succeeded") or 0),
                    sum(1 for p in pods if phase(p) == "Succeeded"))
    failed = max(int(old.get("failed") or 0), sum(1 for p in pods if phase(p) == "Failed"))
    status: Obj = {"active": len(active), "succeeded": succeeded, "failed": failed,
                   "ready": sum(1 for p in active if pod_ready(p)),
                   "terminating": sum(1 for p in pods if deleting(p)),
                   "startTime": old.get("startTime") or fmt_time(at)}
    conditions = list(old.get("conditions") or [])
    result: Obj = {"create": 0, "delete": [], "status": status}
    if finished(job):
        status["conditions"] = conditions
        if old.get("completionTime"):
            status["completionTime"] = old["completionTime"]
        result["delete"] = active if condition(job, "Failed") else []
        return result
    template_spec = (spec.get("template") or {}).get("spec") or {}
    fail_reason = ""
    if failed > backoff or (template_spec.get("restartPolicy") == "OnFailure" and (
            sum(restarts(p) for p in active) >= max(backoff, 1) if backoff else
            sum(restarts(p) for p in active) > 0)):
        fail_reason, msg = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    deadline = spec.get("activeDeadlineSeconds")
    start = parse_time(status["startTime"])
    if not fail_reason and deadline is not None and start is not None and (
            at - start).total_seconds() >= int(deadline):
        fail_reason, msg = "DeadlineExceeded", "Job was active longer than specified deadline"
    ts = fmt_time(at)
    if fail_reason:
        for ctype in ("FailureTarget", "Failed"):
            conditions.append({"type": ctype, "status": "True", "reason": fail_reason,
                               "message": msg, "lastProbeTime": ts, "lastTransitionTime": ts})
        status["conditions"] = conditions
        result["delete"] = active
        return result
    done = (succeeded >= int(completions)) if completions is not None else (
        succeeded > 0 and not active)
    if done:
        for ctype in ("SuccessCriteriaMet", "Complete"):
            conditions.append({"type": ctype, "status": "True",
                               "reason": "CompletionsReached",
                               "message": "Reached expected number of succeeded pods",
                               "lastProbeTime": ts, "lastTransitionTime": ts})
        status["conditions"] = conditions
        status["completionTime"] = ts
        result["delete"] = active
        return result
    if spec.get("suspend"):
        want = 0
    elif completions is None:
        want = parallelism if succeeded == 0 else len(active)
    else:
        want = min(parallelism, int(completions) - succeeded)
    if len(active) < want:
        result["create"] = want - len(active)
    elif len(active) > want:
        result["delete"] = sorted(active, key=deletion_rank)[:len(active) - want]
    if conditions:
        status["conditions"] = conditions
    return result


class JobController(Controller):
    name = "job"
    batch = 0.05

    def setup(self) -> None:
        self.jobs = self.informer("jobs")
        self.ctx.informers.owner_index("pods")
        self.on("jobs", lambda _e, obj, _o: self.enqueue(obj))
        self.track_dependents("Job")

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        job = self.jobs.get(name, ns)
        if job is None:
            self.expectations.forget(key)
            return
        spec = job.get("spec") or {}
        selector = spec.get("selector")
        pods = self.claim(job, "Job", "batch/v1", lambda p: selector is not None
                          and selector_matches(selector, labels(p)))
        if deleting(job):
            return
        if not self.expectations.satisfied(key):
            return  # the pod watch has not shown our last creations/deletions yet
        plan = plan_job(job, pods)
        status = plan["status"]
        if plan["delete"]:
            self.expectations.expect(key, dels={key_of(p) for p in plan["delete"]})
            for p in plan["delete"]:
                self.delete_expected(key, p)
        if plan["create"]:
            self._create(job, key, plan["create"])
        was = {c.get("type") for c in (job.get("status") or {}).get("conditions") or []}
        for c in status.get("conditions", []):
            if c["type"] in ("Complete", "Failed") and c["type"] not in was:
                self.event(job, "Job", "Completed" if c["type"] == "Complete" else c["reason"],
                           c["message"], "Normal" if c["type"] == "Complete" else "Warning",
                           "batch/v1")
        self.patch_status("jobs", job, status)
        deadline = spec.get("activeDeadlineSeconds")
        start = parse_time(status.get("startTime"))
        if deadline is not None and start is not None and not finished(job):
            left = int(deadline) - (now() - start).total_seconds()
            self.queue.add_after(key, max(left, 0) + 0.1)

    def _create(self, job: Obj, key: str, n: int) -> None:
        m = meta(job)
        extra = {"job-name": m["name"], "batch.kubernetes.io/job-name": m["name"],
                 "controller-uid": m["uid"], "batch.kubernetes.io/controller-uid": m["uid"]}
        pod = pod_from_template((job.get("spec") or {}).get("template") or {},
                                owner_ref(job, "Job", "batch/v1"), m["namespace"],
                                generate_name=f"{m['name']}-", extra_labels=extra)
        self.expectations.expect(key, adds=n)
        for i in range(n):
            try:
                made = self.client.create("pods", pod, m["namespace"])
            except ApiError as exc:
                self.expectations.created(key, n - i)  # those will never show up
                self.event(job, "Job", "FailedCreate", f"Error creating: {exc}", "Warning",
                           "batch/v1")
                raise
            self.event(job, "Job", "SuccessfulCreate", f"Created pod: {meta(made)['name']}",
                       api_version="batch/v1")
