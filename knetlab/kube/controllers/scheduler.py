"""The scheduler: binds each pending pod (no ``spec.nodeName``, schedulerName
default-scheduler) to a node through the ``pods/binding`` subresource.

Filters, as kube-scheduler's default plugins reduced: the node is Ready and not
unschedulable, matches the pod's nodeSelector and required node affinity, has no
NoSchedule/NoExecute taint the pod does not tolerate, and no pod on it already uses one
of the pod's hostPorts. Score: spreading, the node with the fewest pods wins, ties by
name. Pods bound but not yet seen bound in the pod cache are "assumed" on their node, so
a burst of 1,000 pods spreads evenly before the watch catches up. A pod no node fits gets
the PodScheduled=False/Unschedulable condition and is retried when nodes change.
``choose_node`` is the pure decision.
"""

from __future__ import annotations

import logging
import threading

from knetlab.kube.client import ApiError, key_of
from knetlab.kube.controllers.base import Controller
from knetlab.kube.controllers.util import (
    Obj,
    condition,
    deleting,
    fmt_time,
    labels,
    meta,
    node_matches_pod,
    node_ready,
    phase,
    untolerated_taint,
)

log = logging.getLogger("knetlab.kube.controllers.scheduler")

SCHEDULER = "default-scheduler"
RETRY = 30.0  # unschedulable pods are also retried this often, whatever happens


def host_ports(pod: Obj) -> set[tuple[str, int, str]]:
    return {(cp.get("hostIP") or "0.0.0.0", int(cp["hostPort"]), cp.get("protocol", "TCP"))
            for c in (pod.get("spec") or {}).get("containers") or []
            for cp in c.get("ports") or [] if cp.get("hostPort")}


def ports_conflict(a: set[tuple[str, int, str]], b: set[tuple[str, int, str]]) -> bool:
    return any(pa == pb and proto_a == proto_b and (ia == ib or "0.0.0.0" in (ia, ib))
               for ia, pa, proto_a in a for ib, pb, proto_b in b)


def filter_node(pod: Obj, node: Obj, ports_on_node: set[tuple[str, int, str]]) -> str:
    """Why the pod cannot go to the node ("" if it can)."""
    spec = pod.get("spec") or {}
    if not node_ready(node):
        return "node(s) were not ready"
    if (node.get("spec") or {}).get("unschedulable"):
        return "node(s) were unschedulable"
    if not node_matches_pod(node, spec):
        return "node(s) didn't match Pod's node affinity/selector"
    taint = untolerated_taint(node, spec.get("tolerations") or [])
    if taint is not None:
        return (f"node(s) had untolerated taint {{{taint.get('key')}: "
                f"{taint.get('value', '')}}}")
    wanted = host_ports(pod)
    if wanted and ports_conflict(wanted, ports_on_node):
        return "node(s) didn't have free ports for the requested pod ports"
    return ""


def choose_node(pod: Obj, nodes: list[Obj], pods_per_node: dict[str, int],
                ports_per_node: dict[str, set[tuple[str, int, str]]]) -> tuple[str, str]:
    """(node name, "") or ("", the Unschedulable message)."""
    fits, why = [], {}
    for node in nodes:
        name = meta(node)["name"]
        reason = filter_node(pod, node, ports_per_node.get(name, set()))
        if reason:
            why[reason] = why.get(reason, 0) + 1
        else:
            fits.append(name)
    if fits:
        return min(fits, key=lambda n: (pods_per_node.get(n, 0), n)), ""
    detail = ", ".join(f"{n} {r}" for r, n in sorted(why.items()))
    return "", f"0/{len(nodes)} nodes are available: {detail}." if nodes else \
        "no nodes available to schedule pods"


def wants_scheduling(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    return (not spec.get("nodeName") and not deleting(pod)
            and spec.get("schedulerName", SCHEDULER) == SCHEDULER
            and phase(pod) not in ("Succeeded", "Failed"))


class Scheduler(Controller):
    name = "scheduler"
    #: a bind is one API round trip (~45 ms on a busy API server), mostly waiting: a few
    #: workers overlap them; the choice itself is made under ``_lock`` (see ``_bind``)
    workers = 4

    def setup(self) -> None:
        self.pods = self.informer("pods")
        self.nodes = self.informer("nodes")
        self._lock = threading.Lock()
        self._ports_lock = threading.Lock()
        self._unschedulable: set[str] = set()
        self._bound: dict[str, str] = {}  # pod key -> node, for live bound pods
        self._counts: dict[str, int] = {}  # node -> live pods bound to it (cache + assumed)
        self.on("pods", self._on_pod)
        self.on("nodes", self._on_node)

    def _on_pod(self, event: str, pod: Obj, _old: Obj | None) -> None:
        key = key_of(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        live = event != "DELETED" and phase(pod) not in ("Succeeded", "Failed")
        with self._lock:
            if not live:
                self._count(key, None)
            elif node:
                self._count(key, node)
            # an unbound pod's event may predate our binding: keep what we assumed
        if event == "DELETED" or node:
            with self._lock:
                self._unschedulable.discard(key)
            return
        if wants_scheduling(pod):
            self.queue.add(key)

    def _on_node(self, _event: str, node: Obj, old: Obj | None) -> None:
        if old is not None and (old.get("spec"), labels(old), node_ready(old)) == (
                node.get("spec"), labels(node), node_ready(node)):
            return  # a heartbeat changes nothing the filters read
        with self._lock:
            waiting = list(self._unschedulable)
        for key in waiting:
            self.queue.add(key)

    def _count(self, key: str, node: str | None) -> None:
        """Move a pod's count to ``node`` (None: it counts nowhere). Holds ``_lock``."""
        prev = self._bound.pop(key, None)
        if prev is not None:
            self._counts[prev] -= 1
        if node is not None:
            self._bound[key] = node
            self._counts[node] = self._counts.get(node, 0) + 1

    def _ports(self, pod: Obj) -> dict[str, set[tuple[str, int, str]]]:
        """hostPorts in use per node; only computed for the rare pod asking for one."""
        ports: dict[str, set[tuple[str, int, str]]] = {}
        if not host_ports(pod):
            return ports
        with self._lock:
            assumed = dict(self._bound)  # bound by us, maybe not yet seen bound
        for p in self.pods.items():
            node = (p.get("spec") or {}).get("nodeName") or assumed.get(key_of(p))
            if node and phase(p) not in ("Succeeded", "Failed"):
                ports.setdefault(node, set()).update(host_ports(p))
        return ports

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        pod = self.pods.get(name, ns)
        with self._lock:
            assumed = key in self._bound
        if pod is None or not wants_scheduling(pod) or assumed:
            return
        if host_ports(pod):
            # Rare; serialised so that two workers never give one hostPort to two pods.
            with self._ports_lock:
                self._bind(pod, key, ns, name)
        else:
            self._bind(pod, key, ns, name)

    def _bind(self, pod: Obj, key: str, ns: str, name: str) -> None:
        nodes, ports = self.nodes.items(), self._ports(pod)
        with self._lock:
            # Choice and assumption in one step: the other workers' choices count at once,
            # so a burst spreads as evenly as one worker would spread it.
            node, why = choose_node(pod, nodes, self._counts, ports)
            if node:
                self._count(key, node)  # assumed there until the watch shows it bound
                self._unschedulable.discard(key)
        if not node:
            self._unschedulable_(pod, key, why)
            return
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": meta(pod).get("uid")},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            self.client.post_subresource("pods", name, "binding", body, ns)
        except ApiError as exc:
            with self._lock:
                self._count(key, None)
            if exc.code in (404, 409):  # gone, or bound already by someone else
                return
            raise
        self.event(pod, "Pod", "Scheduled", f"Successfully assigned {ns}/{name} to {node}")

    def _unschedulable_(self, pod: Obj, key: str, why: str) -> None:
        with self._lock:
            self._unschedulable.add(key)
        prev = condition(pod, "PodScheduled")
        if not (prev and prev.get("status") == "False" and prev.get("message") == why):
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": why, "lastProbeTime": None,
                    "lastTransitionTime": fmt_time()}
            others = [c for c in (pod.get("status") or {}).get("conditions") or []
                      if c.get("type") != "PodScheduled"]
            try:
                self.client.patch("pods", meta(pod)["name"],
                                  {"status": {"conditions": [*others, cond]}},
                                  meta(pod)["namespace"], subresource="status")
            except ApiError as exc:
                if exc.code != 404:
                    raise
            self.event(pod, "Pod", "FailedScheduling", why, "Warning")
        self.queue.add_after(key, RETRY)
