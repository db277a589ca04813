"""Kubernetes benchmark: the lab's API server, controllers and kubelets under load.

Two labs (``kubernetes: true``, flannel host-gw, one segment, no topology pods):

- ``bench-kube-10`` (10 nodes): **pod startup** (create's return -> first watch event with
  phase Running and a pod IP) of 100 pause pods, three ways: a burst from 8 threads placed
  by the scheduler, the same with ``nodeName`` preset (the difference is the scheduler's
  share), and paced at 10 creates/s (clusterloader2's way: latency, not queueing); then
  **watch delivery** of 500 ConfigMap creates, one after another, to a raw-HTTP watch.
- ``bench-kube-100`` (100 nodes): bring-up, a **1,000-replica Deployment** of pause (the
  cheapest image) until ``readyReplicas == 1000``, then at 1,000 pods **``kubectl get pods
  -A``** (the venv's kubectl, median of 5, also ``-o wide``) and the **memory** (RSS, PSS).

CPU seconds per component (/proc/PID/stat) are sampled around each phase, so a missed goal
says where the time went. Percentiles are nearest-rank (p99 of 100 = the 99th smallest).
Watchers run in this process beside the creating threads: latencies include our GIL share.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.errors import KnetlabError
from knetlab.kube.client import KubeClient
from knetlab.topologies.schema import load_topology

log = logging.getLogger("knetlab.bench.kube")
PAUSE = "registry.k8s.io/pause:3.10"
GOALS = {"pod_p50_ms": 100.0, "pod_p99_ms": 500.0, "deploy_s": 60.0, "kubectl_s": 0.5,
         "watch_p99_ms": 10.0}
SMALL_NODES, BIG_NODES, STARTUP_PODS, CREATE_THREADS = 10, 100, 100, 8
CONFIGMAPS, REPLICAS, DEPLOY_DEADLINE_S = 500, 1000, 150.0
MARKS = (1, 100, 250, 500, 750, 900, 1000)  # the Deployment's timeline is shown at these pods
VENV_KUBECTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kubectl"
TICK = os.sysconf("SC_CLK_TCK")


# -- statistics ----------------------------------------------------------------------
def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: the ceil(q/100 * n)-th smallest sample."""
    s = sorted(samples)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)] if s else float("nan")


def summary(samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "p50": round(pct(samples, 50), 1),
            "p90": round(pct(samples, 90), 1), "p99": round(pct(samples, 99), 1),
            "max": round(max(samples), 1) if samples else float("nan")}


# -- the lab's processes ---------------------------------------------------------------
def _daemon_pids(rundir: Path) -> dict[str, list[int]]:
    """Component -> pids, from the daemons' pid files (kubelets grouped as one)."""
    out: dict[str, list[int]] = {}
    for f in sorted((rundir / "daemons").glob("*/*/*.pid")):
        name = f.parent.name
        if f.parent.parent.name == "control-plane" or name == "kubelet":
            with contextlib.suppress(OSError, ValueError, IndexError):
                out.setdefault(name, []).append(int(f.read_text().split()[0]))
    return out


def _cpu_s(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of one process."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def cpu_snapshot(rundir: Path) -> dict[str, float]:
    snap: dict[str, float] = {}
    daemons = _daemon_pids(rundir)
    for name, pids in daemons.items():
        own = [_cpu_s(p) for p in pids]
        snap[name] = sum(o for o, _ in own)
        snap[f"{name} children"] = sum(c for _, c in own)
    # pauses and containers still alive: their start (sandbox.py before its exec of sleep,
    # nsenter) is not in the kubelets' reaped-children time
    snap["live pod processes"] = sum(_cpu_s(p)[0] for p in _children(
        set(daemons.get("kubelet", []))))
    snap["bench client"] = sum(os.times()[:2])
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    snap["whole machine"] = (sum(ticks) - ticks[3] - ticks[4]) / TICK  # all but idle, iowait
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after
            if after[k] - before.get(k, 0.0) >= 0.005}


def _mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    kib = {w[0]: int(w[1]) for w in (line.split() for line in lines) if len(w) == 3}
    return kib.get("Rss:", 0), kib.get("Pss:", 0)


def _children(pids: set[int]) -> list[int]:
    """Every descendant of ``pids`` (the kubelets' pauses and containers)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], set(pids)
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier}
        found += kids
        frontier = kids
    return found


def memory(rundir: Path) -> list[dict[str, Any]]:
    pids = _daemon_pids(rundir)
    groups = {n: pids.get(n, []) for n in ("kube-apiserver", "kube-controller-manager", "etcd",
                                            "kubelet")}
    groups["pod processes (kubelets' descendants)"] = _children(set(groups["kubelet"]))
    rows = []
    for name, group in groups.items():
        mems = [_mem_kib(p) for p in group]
        rows.append({"process": name, "count": len(mems),
                     "rss_mib": round(sum(r for r, _ in mems) / 1024, 1),
                     "pss_mib": round(sum(p for _, p in mems) / 1024, 1)})
    return rows


# -- labs -------------------------------------------------------------------------------
def lab(out_dir: Path, name: str, nodes: int) -> Cluster:
    topo = out_dir / f"{name}.yaml"
    topo.write_text(f"name: {name}\ndataplane: host-gw\nkubernetes: true\nunderlay:\n"
                    f"  type: segment\n  cidr: 192.168.0.0/24\nnodes: {{count: {nodes}}}\n"
                    "pods: {perNode: 0}\n")
    return Cluster(load_topology(topo))


def _namespace(client: KubeClient, name: str) -> None:
    client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": name}})


def pause_pod(name: str, node: str = "") -> dict[str, Any]:
    spec = {"containers": [{"name": "pause", "image": PAUSE}],
            "terminationGracePeriodSeconds": 0, **({"nodeName": node} if node else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


class Stamper:
    """A watch in a thread that timestamps, per criterion and object name, the first event
    whose object the criterion accepts. Opened from a list's resourceVersion, so nothing
    created after the constructor returns is missed."""

    def __init__(self, client: KubeClient, resource: str, namespace: str,
                 **criteria: Callable[[dict[str, Any]], bool]) -> None:
        self.client, self.resource, self.namespace = client, resource, namespace
        self.criteria = criteria
        self.seen: dict[str, dict[str, float]] = {k: {} for k in criteria}
        self.cond = threading.Condition()
        self.stopped = False
        rv = client.list(resource, namespace)["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        try:
            while not self.stopped:
                for ev in self.client.watch(self.resource, self.namespace, resource_version=rv,
                                            timeout_seconds=600):
                    rv = self._note(ev, time.monotonic()) or rv
                    if self.stopped:
                        return
        except (OSError, KnetlabError):
            if not self.stopped:  # else the lab went away under a stopped stamper: fine
                raise

    def _note(self, ev: dict[str, Any], t: float) -> str:
        meta = ev["object"].get("metadata", {})
        if ev["type"] != "BOOKMARK":
            with self.cond:
                for k, accept in self.criteria.items():
                    if meta.get("name", "") not in self.seen[k] and accept(ev["object"]):
                        self.seen[k][meta["name"]] = t
                self.cond.notify_all()
        return str(meta.get("resourceVersion", ""))

    def wait(self, names: set[str], deadline: float) -> bool:
        """Until the first criterion has seen every name, or the deadline."""
        seen = self.seen[next(iter(self.criteria))]
        with self.cond:
            return self.cond.wait_for(lambda: names <= seen.keys(),
                                      max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self.stopped = True  # a daemon thread: its watch ends at the next event or the lab's end


def running(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and bool(st.get("podIP"))


def create_many(client: KubeClient, resource: str, namespace: str,
                objs: list[dict[str, Any]], threads: int, rate: float = 0.0
                ) -> dict[str, tuple[float, float]]:
    """Create from ``threads`` threads, all at once or ``rate`` per second on a fixed
    schedule (each call at its slot, however long the others take); name -> (before the
    call, after it returned)."""
    start = time.monotonic()

    def one(i: int) -> tuple[str, float, float]:
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))  # the schedule's slot
        t0 = time.monotonic()
        client.create(resource, objs[i], namespace)
        return objs[i]["metadata"]["name"], t0, time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        return {n: (a, b) for n, a, b in pool.map(one, range(len(objs)))}


# -- the measurements -------------------------------------------------------------------
#: pod startup variants (namespace bench-<name>): nodeName preset?, creates per second (0: burst)
VARIANTS = {"burst-scheduled": (False, 0.0), "burst-bound": (True, 0.0),
            "paced-scheduled": (False, 10.0)}


def pod_startup(c: Cluster, variant: str, nodes: list[str]) -> list[dict[str, Any]]:
    """100 pause pods: a burst from 8 threads, or paced (the clusterloader2 way); nodeName
    unset (the scheduler binds) or preset. Stamps the first event with a node (bound) and
    the first Running with a pod IP."""
    assert c.control
    preset, rate = VARIANTS[variant]
    client = c.control.client
    ns = f"bench-{variant}"
    _namespace(client, ns)
    stamps = Stamper(client, "pods", ns, running=running,
                     bound=lambda p: bool((p.get("spec") or {}).get("nodeName")))
    create_many(client, "pods", ns, [pause_pod("warmup", nodes[0])], 1)
    if not stamps.wait({"warmup"}, time.monotonic() + 30):
        raise TimeoutError(f"warm-up pod in {ns} not Running in 30 s")
    objs = [pause_pod(f"p-{i:03d}", nodes[i % len(nodes)] if preset else "")
            for i in range(STARTUP_PODS)]
    created = create_many(client, "pods", ns, objs, CREATE_THREADS, rate)
    stamps.wait(set(created), time.monotonic() + 60)
    stamps.stop()
    rows, start = [], min(a for a, _ in created.values())
    for name, (t0, t1) in sorted(created.items()):
        t, tb = stamps.seen["running"].get(name), stamps.seen["bound"].get(name)
        rows.append({"variant": variant, "pod": name, "created_at_s": round(t0 - start, 3),
                     "create_call_ms": round(1000 * (t1 - t0), 2),
                     "bound_ms": round(1000 * (tb - t1), 2) if tb else "",
                     "startup_ms": round(1000 * (t - t1), 2) if t else "",
                     "from_call_ms": round(1000 * (t - t0), 2) if t else ""})
    return rows


def watch_latency(c: Cluster) -> list[dict[str, Any]]:
    """Sequential ConfigMap creates, one raw-HTTP watch: delivery latency per event."""
    assert c.control
    client = c.control.client
    _namespace(client, "bench-watch")
    stamps = Stamper(client, "configmaps", "bench-watch", added=lambda o: True)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "warmup"},
          "data": {"k": "v"}}
    client.create("configmaps", cm, "bench-watch")
    if not stamps.wait({"warmup"}, time.monotonic() + 10):
        raise TimeoutError("configmap watch delivered nothing in 10 s")
    times = {}
    for i in range(CONFIGMAPS):
        name = f"cm-{i:03d}"
        t0 = time.monotonic()
        client.create("configmaps", {**cm, "metadata": {"name": name}}, "bench-watch")
        times[name] = (t0, time.monotonic())
    stamps.wait(set(times), time.monotonic() + 30)
    stamps.stop()
    seen = stamps.seen["added"]
    return [{"configmap": n, "create_call_ms": round(1000 * (t1 - t0), 3),
             "from_call_ms": round(1000 * (seen[n] - t0), 3) if n in seen else "",
             "from_return_ms": round(1000 * (seen[n] - t1), 3) if n in seen else ""}
            for n, (t0, t1) in times.items()]


def deployment(c: Cluster) -> dict[str, Any]:
    """Apply a 1,000-replica pause Deployment: seconds until readyReplicas == 1000 (None on
    timeout), the status's progress, and each pod's creation and Running time (a second
    watch, on the pods, shows what the Deployment's status reports late)."""
    assert c.control
    client = c.control.client
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "bench", "namespace": "default"},
           "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "bench"}},
                    "template": {"metadata": {"labels": {"app": "bench"}},
                                 "spec": {"terminationGracePeriodSeconds": 0,
                                          "containers": [{"name": "pause", "image": PAUSE}]}}}}
    rv = client.list("deployments", "default")["metadata"]["resourceVersion"]
    pods = Stamper(client, "pods", "default", created=lambda p: True, running=running)
    t0 = time.monotonic()
    c.apply(dep)
    deadline = t0 + DEPLOY_DEADLINE_S
    progress = [{"t_s": 0.0, "ready": 0, "available": 0, "updated": 0}]
    res: dict[str, Any] = {"deploy_s": None, "progress": progress}
    while time.monotonic() < deadline and res["deploy_s"] is None:
        left = int(deadline - time.monotonic()) + 1
        for ev in client.watch("deployments", "default", resource_version=rv,
                               field_selector="metadata.name=bench", timeout_seconds=left):
            rv = ev["object"]["metadata"]["resourceVersion"]
            st = ev["object"].get("status") or {}
            ready = st.get("readyReplicas", 0)
            if ev["type"] == "MODIFIED" and ready != progress[-1]["ready"]:
                progress.append({"t_s": round(time.monotonic() - t0, 2), "ready": ready,
                                 "available": st.get("availableReplicas", 0),
                                 "updated": st.get("updatedReplicas", 0)})
            if ready >= REPLICAS:
                res["deploy_s"] = time.monotonic() - t0
            if res["deploy_s"] or time.monotonic() > deadline:
                break
    pods.stop()
    with pods.cond:
        res["pod_times"] = [{"pod": n, "created_s": round(t - t0, 3),
                             "running_s": round(pods.seen["running"][n] - t0, 3)
                             if n in pods.seen["running"] else ""}
                            for n, t in sorted(pods.seen["created"].items(), key=lambda x: x[1])]
    return res


def kubectl_times(c: Cluster, wide: bool) -> tuple[list[float], int]:
    argv = [str(VENV_KUBECTL), "--kubeconfig", str(c.kubeconfig), "get", "pods", "-A"]
    argv += ["-o", "wide"] if wide else []
    times, lines = [], 0
    for _ in range(5):  # run directly, not through shell.run: its logging is not kubectl's
        t0 = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        times.append(time.monotonic() - t0)
        lines = len(out.stdout.splitlines()) - 1  # minus the header
    return times, lines


# -- the two labs -----------------------------------------------------------------------
def small_lab(out_dir: Path) -> dict[str, Any]:
    c = lab(out_dir, "bench-kube-10", SMALL_NODES)
    t0 = time.monotonic()
    c.up()
    res: dict[str, Any] = {"up_s": round(time.monotonic() - t0, 2)}
    try:
        rundir, nodes = c.rundir.path, sorted(c.nodes)
        cpu, res["startup"], res["cpu"] = cpu_snapshot(rundir), [], {}
        for variant in VARIANTS:
            res["startup"] += pod_startup(c, variant, nodes)
            now = cpu_snapshot(rundir)
            res["cpu"][f"pods {variant}"], cpu = cpu_delta(cpu, now), now
        res["watch"] = watch_latency(c)
        res["cpu"]["configmap watch"] = cpu_delta(cpu, cpu_snapshot(rundir))
    finally:
        c.down()
    return res


def big_lab(out_dir: Path) -> dict[str, Any]:
    c = lab(out_dir, "bench-kube-100", BIG_NODES)
    t0 = time.monotonic()
    c.up()
    res: dict[str, Any] = {"up_s": round(time.monotonic() - t0, 2),
                           "up_timings": {k: round(v, 2) for k, v in c.timings.items()}}
    try:
        assert c.control
        rundir = c.rundir.path
        cpu0 = cpu_snapshot(rundir)
        res.update(deployment(c))
        res["cpu"] = {"deployment": cpu_delta(cpu0, cpu_snapshot(rundir))}
        pods = c.control.client.list("pods")["items"]
        res["pods"], res["pods_running"] = len(pods), sum(1 for p in pods if running(p))
        for wide in (False, True):
            times, lines = kubectl_times(c, wide)
            res["kubectl_wide" if wide else "kubectl"] = {
                "median_s": round(statistics.median(times), 3),
                "runs_s": [round(t, 3) for t in times], "rows": lines}
        res["memory"] = memory(rundir)
    finally:
        logs = out_dir / "kube-logs"  # the control plane's logs outlive the lab, for digging
        logs.mkdir(exist_ok=True)
        for f in (c.rundir.path / "daemons" / "control-plane").glob("*/*.log"):
            shutil.copy(f, logs / f.name)
        t0 = time.monotonic()
        c.down()
        res["down_s"] = round(time.monotonic() - t0, 2)
    return res


# -- the report ---------------------------------------------------------------------------
def _row(figure: str, value: Any, goal: str, met: bool | None) -> str:
    verdict = "" if met is None else ("met" if met else "**NOT met**")
    return f"| {figure} | {value} | {goal} | {verdict} |"


def _startup_rows(startup: list[dict[str, Any]]) -> list[str]:
    md = []
    for v, (preset, rate) in VARIANTS.items():
        rows = [r for r in startup if r["variant"] == v]
        if not rows:
            continue
        s = summary([r["startup_ms"] for r in rows if r["startup_ms"] != ""])
        how = (f"{rate:.0f} creates/s" if rate else f"burst from {CREATE_THREADS} threads") + \
            (", nodeName preset" if preset else ", scheduler binds")
        md += [_row(f"pod startup p50, {how} (ms, n={s['n']} of {len(rows)})", s["p50"],
                    "< 100", s["p50"] < GOALS["pod_p50_ms"]),
               _row(f"pod startup p99, {how} (ms)", s["p99"], "< 500 (k8s SLO 5000)",
                    s["p99"] < GOALS["pod_p99_ms"] and s["n"] == len(rows)),
               _row(f"pod startup p90 / max, {how} (ms)", f"{s['p90']} / {s['max']}", "",
                    None)]
        if not preset:
            b = summary([r["bound_ms"] for r in rows if r["bound_ms"] != ""])
            md.append(_row(f"of which create -> bound by the scheduler p50 / p99, {how} (ms)",
                           f"{b['p50']} / {b['p99']}", "", None))
    return md


def report(small: dict[str, Any], big: dict[str, Any]) -> list[str]:
    w = summary([r["from_call_ms"] for r in small.get("watch", []) if r["from_call_ms"] != ""])
    wr = summary([r["from_return_ms"] for r in small.get("watch", [])
                  if r["from_return_ms"] != ""])
    md = ["## Kubernetes in the lab", "", f"Labs: flannel host-gw on one segment, no topology "
          f"pods; image `{PAUSE}` (knetlab's pause: a sleep in the pod's namespaces, the "
          "cheapest image). Pod startup: create call's return -> first watch event with phase "
          f"Running and a pod IP, {STARTUP_PODS} pods on {SMALL_NODES} nodes per row group. "
          "Percentiles are nearest-rank (p99 of 100 samples = the 99th smallest).", "",
          "| figure | value | goal | |", "|---|---|---|---|", *_startup_rows(
              small.get("startup", []))]
    dep = big.get("deploy_s")
    md += [_row(f"{BIG_NODES}-node lab bring-up (s)", big.get("up_s"), "", None)]
    if "progress" in big:
        md.append(_row(f"Deployment of {REPLICAS} replicas: apply -> readyReplicas == "
                       f"{REPLICAS} (s)", round(dep, 1) if dep else
                       f"timeout ({DEPLOY_DEADLINE_S:.0f} s)", "< 60",
                       bool(dep and dep < GOALS["deploy_s"])))
    for key, label in (("kubectl", "`kubectl get pods -A`"),
                       ("kubectl_wide", "`kubectl get pods -A -o wide`")):
        k = big.get(key)
        if k:
            md.append(_row(f"{label}, {k['rows']} rows, median of 5 (s)", k["median_s"],
                           "< 0.5", k["median_s"] < GOALS["kubectl_s"]))
    md += [_row(f"watch delivery p50 / p99, from before create (ms, n={w['n']})",
                f"{w['p50']} / {w['p99']}", "p99 < 10", w["p99"] < GOALS["watch_p99_ms"]),
           _row("watch delivery p50 / p99, from create's return (ms)",
                f"{wr['p50']} / {wr['p99']}", "p99 < 10", wr["p99"] < GOALS["watch_p99_ms"]),
           ""]
    if big.get("memory"):
        md += [f"Memory at {big.get('pods')} pods ({big.get('pods_running')} Running):", "",
               "| process | count | RSS (MiB) | PSS (MiB) | PSS per process (MiB) |",
               "|---|---|---|---|---|"]
        md += [f"| {m['process']} | {m['count']} | {m['rss_mib']} | {m['pss_mib']} | "
               f"{round(m['pss_mib'] / max(1, m['count']), 1)} |" for m in big["memory"]] + [""]
    cpu = {**small.get("cpu", {}), **big.get("cpu", {})}
    if cpu:
        md += ["CPU seconds per component during each phase (utime+stime; `children` = "
               "processes the component ran and reaped: sandboxes, CNI plugins, `ip`; "
               "`whole machine` = all CPU time spent, other helpers' work included):", ""]
        md += [f"- {phase}: " + ", ".join(f"{k} {v}" for k, v in sorted(
            d.items(), key=lambda kv: -kv[1])) for phase, d in cpu.items()] + [""]
    if big.get("pod_times"):
        md.append("Deployment timeline, seconds from `apply` until the k-th pod was ...")
        lines = {what: sorted(r[f"{what}_s"] for r in big["pod_times"] if r[f"{what}_s"] != "")
                 for what in ("created", "running")}
        status: list[float] = []  # [k-1] = when the status first counted k ready replicas
        for p in big["progress"]:
            status += [p["t_s"]] * max(0, p["ready"] - len(status))
        lines["ready in the Deployment's status"] = status
        md += [f"- {what}: " + ", ".join(f"#{k} at {ts[k - 1]}" for k in MARKS if k <= len(ts))
               for what, ts in lines.items()] + [""]
    md.append(f"Lab bring-up: {SMALL_NODES} nodes {small.get('up_s')} s, {BIG_NODES} nodes "
              f"{big.get('up_s')} s ({big.get('up_timings')}); {BIG_NODES}-node teardown "
              f"with the pods {big.get('down_s')} s.")
    return md


def run(out_dir: Path) -> dict[str, Any]:
    labs: dict[str, dict[str, Any]] = {}
    for name, fn in (("small", small_lab), ("big", big_lab)):
        try:
            labs[name] = fn(out_dir)
        except Exception as exc:  # noqa: BLE001 - the other lab still runs; raised below
            log.exception("kube bench: %s lab failed", name)
            labs[name] = {"error": str(exc)}
    small, big = labs["small"], labs["big"]
    for key, part, csv in (("startup", small, "pod-startup"), ("watch", small, "watch"),
                           ("progress", big, "deployment"), ("pod_times", big, "deployment-pods"),
                           ("memory", big, "memory")):
        if part.get(key):
            write_csv(out_dir / f"kube-{csv}.csv", part[key])
    failed = [f"{n} lab: {r['error']}" for n, r in labs.items() if "error" in r]
    md = report(small, big) + [f"\n**The {f}**" for f in failed]
    (out_dir / "kube.md").write_text("\n".join(md) + "\n")
    if failed:
        raise KnetlabError("; ".join(failed))
    return {"small": {k: v for k, v in small.items() if k not in ("startup", "watch")},
            "big": {k: v for k, v in big.items() if k != "pod_times"}}
