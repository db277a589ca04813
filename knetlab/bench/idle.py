"""What an idle lab costs: CPU and wake-ups per kind of process, for 2 and 10 nodes
(``python -m knetlab.bench --only idle``; one lab by hand: ``python -m knetlab.bench.idle
--cluster NAME [--seconds 60]``).

A lab's processes are its owner (the supervisor of a detached lab) and everything below
it, plus every pid recorded in ``owned.jsonl``. Per process, over the window:

- CPU from ``/proc/PID/task/*/schedstat`` (the scheduler's exact runtime, ns), summed over
  threads; ``/proc/PID/stat`` is tick-sampled (HZ=250 here) and misses short wake-ups. The
  children a process reaps in the window (``sleep``, ``ip``, ``iptables`` of a polling
  loop) are added from its ``cutime + cstime`` (ticks: coarse, but they are seen).
- wake-ups: the growth of ``voluntary_ctxt_switches`` over all threads (a thread that
  blocks and is woken counts one): a polling loop shows here even when it is cheap.

The lab is measured after ``up`` returned and its Kubernetes side settled, with no traffic
and no API calls from here, so what remains is timers: lease renewals, heartbeats, sync
periods, poll loops. Kinds are named by command line (``KINDS``); a per-node kind is
reported per process too, so growth with nodes reads as per-node cost x nodes.

What is left is what the real components do too, at their real periods: node Leases every
10 s, node status every 40 s, flannel's 10 s route check, the policy agent's 30 s resync,
the API server's 60 s watch bookmarks (and a 15 s look for gone clients), and etcd's raft
ticks (20 ms here, docs/store.md: most of the total). Fixed for issue 10: once-a-second or
faster loops that waited for nothing (kubelet pidfd monitor, kube-proxy's thread check,
the supervisor's accept and its watchdogs, the DNS pod's 1 s readiness probe, the API
server's 2 s look at every watch) and a repair pass that rewrote unchanged routes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.bench import write_csv
from knetlab.rundir import BASE

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
#: (substring of the command line, kind), first match wins
KINDS = [
    ("knetlab.supervisor", "supervisor"),
    ("etcd --name", "etcd"),
    ("knetlab.kube.apiserver", "kube-apiserver"),
    ("knetlab.kube.controllers", "controller-manager"),
    ("knetlab.kube.kubelet", "kubelet"),
    ("knetlab.addons.kubeproxy", "kube-proxy"),
    ("knetlab.addons.netpolicy", "policy-agent"),
    ("knetlab.addons.dns", "dns-controller"),
    ("unbound", "dns-unbound"),
    ("knetlab.addons.lbspeaker", "lbspeaker"),
    ("knetlab.overlays.flannel", "flanneld"),
    ("knetlab-pause", "pause"),
    ("mininet:", "mininet-shell"),
]


def kind_of(cmdline: str) -> str:
    for needle, kind in KINDS:
        if needle in cmdline:
            return kind
    return cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] or "?"


@dataclass
class ProcSample:
    pid: int
    kind: str
    runtime_ns: int   # live threads, exact
    reaped_ns: int    # children reaped so far (ticks)
    wakeups: int      # voluntary context switches, all threads


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _sample(pid: int) -> ProcSample | None:
    raw = _read(f"/proc/{pid}/cmdline")
    stat = _read(f"/proc/{pid}/stat")
    if not raw or not stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) * TICK_NS  # cutime, cstime
    runtime = wakeups = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        sched = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
        runtime += int(sched[0]) if sched else 0
        for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                wakeups += int(line.split()[1])
    return ProcSample(pid, kind_of(raw.replace("\0", " ")), runtime, reaped, wakeups)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:
                kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(d))
    return kids


def lab_pids(cluster: str) -> list[int]:
    """The lab's owner (unless it is this process: a lab built in-process is measured
    without its builder) and all its descendants, plus every recorded pid still alive."""
    path = BASE / cluster
    state = json.loads((path / "state.json").read_text())
    roots = {int(state["owner_pid"])}
    owned = path / "owned.jsonl"
    for line in owned.read_text().splitlines() if owned.exists() else []:
        rec = json.loads(line)
        if rec.get("kind") == "pid":
            roots.add(int(rec["pid"]))
    kids, seen = _children(), set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, []))
    seen.discard(os.getpid())
    return sorted(p for p in seen if os.path.exists(f"/proc/{p}"))


def measure(cluster: str, seconds: float) -> dict[str, Any]:
    """Idle cost of one lab over ``seconds``: per kind, cores (CPU s per s) and wake-ups/s,
    with the process count; a process that appears or dies inside the window is left out
    (its share cannot be told), and counted in ``churn``."""
    first = {p: s for p in lab_pids(cluster) if (s := _sample(p))}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    last = {p: s for p in lab_pids(cluster) if (s := _sample(p))}
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for pid, b in last.items():
        a = first.get(pid)
        if a is None or a.kind != b.kind:
            continue
        k = kinds[b.kind]
        k["processes"] += 1
        k["cpu"] += (b.runtime_ns - a.runtime_ns + b.reaped_ns - a.reaped_ns) / 1e9 / wall
        k["wakeups"] += (b.wakeups - a.wakeups) / wall
    churn = len(set(first) ^ set(last))
    total = {"cpu": sum(k["cpu"] for k in kinds.values()),
             "wakeups": sum(k["wakeups"] for k in kinds.values())}
    return {"seconds": round(wall, 1), "churn": churn, "total": total,
            "kinds": {n: dict(v) for n, v in sorted(kinds.items())}}


def format_table(result: dict[str, Any]) -> str:
    rows = [f"{'KIND':20} {'PROCS':>5} {'%CORE':>7} {'%/PROC':>7} {'WAKE/S':>8}"]
    for name, k in sorted(result["kinds"].items(), key=lambda kv: -kv[1]["cpu"]):
        n = int(k["processes"])
        rows.append(f"{name:20} {n:5d} {k['cpu'] * 100:7.2f} {k['cpu'] * 100 / n:7.2f} "
                    f"{k['wakeups']:8.1f}")
    t = result["total"]
    rows.append(f"{'total':20} {'':5} {t['cpu'] * 100:7.2f} {'':7} {t['wakeups']:8.1f}")
    return "\n".join(rows)


# -- the bench: 2 and 10 nodes, as `knetlab up -d` runs them --------------------------------
#: names of the bench's labs start with this (as in knetlab.bench.podcost)
LAB_PREFIX = os.environ.get("KNETLAB_BENCH_LAB", "bench")
SIZES, WINDOW_S, SETTLE_S = (2, 10), 60.0, 15.0
TOPOLOGY = """# knetlab.bench.idle: the default datacenter's shape, {nodes} nodes
name: {name}
dataplane: host-gw
switch: linuxbridge
underlay: {{type: segment, cidr: 192.168.0.0/24}}
nodes: {{count: {nodes}}}
pods: {{perNode: 2}}
"""


def idle_lab(out_dir: Path, nodes: int, seconds: float = WINDOW_S, name: str = ""
             ) -> dict[str, Any]:
    """Bring a lab up detached (``knetlab up -d``: the supervisor is measured too), let
    its add-ons settle (the DNS pod's start, first syncs), measure, take it down."""
    name = name or f"{LAB_PREFIX}-idle{nodes}"
    topo = out_dir / f"{name}.yaml"
    topo.write_text(TOPOLOGY.format(name=name, nodes=nodes))
    cli = [sys.executable, "-m", "knetlab.cli"]
    shell.run([*cli, "clean", "--cluster", name], check=False, timeout=120)
    t0 = time.monotonic()
    shell.run([*cli, "up", "-d", str(topo)], timeout=600, context=f"bench lab {name}")
    up_s = time.monotonic() - t0
    try:
        time.sleep(SETTLE_S)  # a settling window, not a readiness wait: up -d returned
        result = measure(name, seconds)
    finally:
        shell.run([*cli, "down", "--cluster", name], check=False, timeout=300)
    result.update(nodes=nodes, up_s=round(up_s, 1))
    return result


def rows_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for kind, k in sorted(r["kinds"].items(), key=lambda kv: -kv[1]["cpu"]):
            rows.append({"nodes": r["nodes"], "kind": kind, "processes": int(k["processes"]),
                         "cpu_pct": round(k["cpu"] * 100, 3),
                         "cpu_pct_per_process": round(k["cpu"] * 100 / k["processes"], 3),
                         "wakeups_per_s": round(k["wakeups"], 1)})
        rows.append({"nodes": r["nodes"], "kind": "total", "processes": "",
                     "cpu_pct": round(r["total"]["cpu"] * 100, 3), "cpu_pct_per_process": "",
                     "wakeups_per_s": round(r["total"]["wakeups"], 1)})
    return rows


def report(results: list[dict[str, Any]]) -> list[str]:
    kinds = sorted({k for r in results for k in r["kinds"]},
                   key=lambda k: -max(r["kinds"].get(k, {}).get("cpu", 0) for r in results))
    head = " | ".join(f"{r['nodes']} nodes: % of a core (wake-ups/s)" for r in results)
    md = ["## An idle lab's CPU", "",
          f"`knetlab up -d`, host-gw, Kubernetes on, {SETTLE_S:.0f} s after `up` returned, "
          f"then {WINDOW_S:.0f} s measured: runtime from /proc/PID/task/*/schedstat (+ "
          "reaped children), wake-ups = voluntary context switches, all threads.", "",
          f"| kind | {head} |", "|---|" + "---|" * len(results)]
    for kind in kinds:
        cells = []
        for r in results:
            k = r["kinds"].get(kind)
            cells.append("-" if k is None else
                         f"{k['cpu'] * 100:.2f} ({k['wakeups']:.1f}), {int(k['processes'])} proc")
        md.append(f"| {kind} | " + " | ".join(cells) + " |")
    md.append("| **total** | " + " | ".join(
        f"**{r['total']['cpu'] * 100:.2f}** ({r['total']['wakeups']:.0f})" for r in results)
        + " |")
    return md


def run(out_dir: Path) -> dict[str, Any]:
    results = [idle_lab(out_dir, n) for n in SIZES]
    write_csv(out_dir / "idle.csv", rows_of(results))
    (out_dir / "idle.md").write_text("\n".join(report(results)) + "\n")
    return {f"nodes_{r['nodes']}": r for r in results}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m knetlab.bench.idle")
    p.add_argument("--cluster", help="a running lab's name (default: build 2 and 10 nodes)")
    p.add_argument("--seconds", type=float, default=WINDOW_S)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args()
    if not args.cluster:
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        run(out)
        print((out / "idle.md").read_text())
        return 0
    result = measure(args.cluster, args.seconds)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
