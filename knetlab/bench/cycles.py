"""Leftover benchmark: repeated bring-ups and teardowns, and ``kill -9`` mid-bring-up, must
leave nothing behind (issue 10: 100 ``up``/``down`` cycles and 20 kills).

Each run records what the lab owned while it lived (its ``owned.jsonl``: processes and
namespaces) and, after ``down`` or after ``clean`` of a killed lab, counts what is still
there: recorded processes alive, recorded namespaces still held by any process, links and
OVS bridges with the lab's tag, mounts under its run directory, the run directory itself.
The machine-wide counts (root routes, root nftables and iptables lines) are taken before
and after the whole series: knetlab never writes the root namespace's rules or routes.

Cycles rotate over data planes with ``kubernetes: false`` (the data plane's objects are
what leaks); the kills run with Kubernetes on (etcd, API server, controllers and kubelets
are started and must be found too), each at a random moment of the bring-up.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.bench import write_csv
from knetlab.clean import clean_all, root_links
from knetlab.cluster import Cluster
from knetlab.rundir import PREFIX, RunDir, pid_alive

CYCLES, KILLS = 100, 20
PLANES = ["host-gw", "flannel-vxlan", "calico-bgp", "ovs-vxlan"]
LAB = "bench-cycles"


def _topology(out_dir: Path, plane: str, kubernetes: bool) -> Path:
    path = out_dir / f"cycles-{plane}-{'kube' if kubernetes else 'plain'}.yaml"
    path.write_text(f"name: {LAB}\ndataplane: {plane}\nnodes: {{count: 2}}\n"
                    f"pods: {{perNode: 2}}\nkubernetes: {str(kubernetes).lower()}\n")
    return path


def _net_inodes() -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.add(os.stat(f"/proc/{entry}/ns/net").st_ino)
            except OSError:
                continue
    return out


def _ovs_bridges(tag: str) -> list[str]:
    p = shell.run(["ovs-vsctl", "--timeout=5", "list-br"], check=False)
    return [b for b in p.stdout.split() if b.startswith(tag)] if p.returncode == 0 else []


def _mounts(path: Path) -> int:
    return sum(1 for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if str(path) in line)


def leftovers(rd: RunDir, owned: list[dict[str, Any]]) -> dict[str, int]:
    """What of the lab is still on the machine, by kind."""
    pids = [e for e in owned if e.get("kind") == "pid"]
    inodes = {e["inode"] for e in owned if e.get("kind") == "netns"}
    return {
        "processes": sum(1 for e in pids if pid_alive(e["pid"], e["match"])),
        "namespaces": len(inodes & _net_inodes()),
        "links": len(root_links(re.compile(rf"^{rd.tag}"))),
        "ovs_bridges": len(_ovs_bridges(rd.tag)),
        "mounts": _mounts(rd.path),
        "rundir": int(rd.exists()),
    }


def machine() -> dict[str, int]:
    """Root-namespace rule and route counts (knetlab must leave them as they were)."""
    def lines(argv: list[str]) -> int:
        # Routes of knetlab's own root links (a switch's bridge) come and go with those links
        # (other labs run beside this one); counted as links above.
        p = shell.run(argv, check=False)
        return len([x for x in p.stdout.splitlines()
                    if x and not x.startswith("#") and f"dev {PREFIX}" not in x])
    return {"routes": lines(["ip", "route", "show", "table", "all"]),
            "nft_lines": lines(["nft", "list", "ruleset"]),
            "iptables_lines": lines(["iptables-save"])}


def cycle(topo: Path) -> tuple[float, dict[str, int]]:
    """One up and down; the counts while up prove the counting sees the lab at all."""
    rd = RunDir(LAB)
    t0 = time.monotonic()
    c = Cluster.load(topo)
    c.up()
    owned = rd.owned()
    live = leftovers(rd, owned)
    c.down()
    left = leftovers(rd, owned)
    return time.monotonic() - t0, {**left, "up_processes": live["processes"],
                                   "up_namespaces": live["namespaces"], "up_links": live["links"]}


def kill_mid_bring_up(topo: Path, at: float) -> tuple[str, dict[str, int]]:
    """Start the lab under its supervisor, SIGKILL it ``at`` seconds in, clean it."""
    rd = RunDir(LAB)
    sup = subprocess.Popen([sys.executable, "-m", "knetlab.supervisor", str(topo)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    time.sleep(at)
    state = rd.read_state() or {}
    phase = str(state.get("phase", "starting"))
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    owned = rd.owned()
    clean_all(LAB)
    return phase, leftovers(rd, owned)


def _least(rows: list[dict[str, Any]], key: str) -> int:
    return min((r[key] for r in rows if key in r), default=0)


def bring_up_seconds(topo: Path) -> float:
    """How long the supervisor takes to bring the lab to ``running`` (the kill window)."""
    rd = RunDir(LAB)
    t0 = time.monotonic()
    sup = subprocess.Popen([sys.executable, "-m", "knetlab.supervisor", str(topo)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        while time.monotonic() - t0 < 120 and sup.poll() is None:
            if (rd.read_state() or {}).get("phase") == "running":
                break
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        clean_all(LAB)


def run(out_dir: Path, cycles: int = CYCLES, kills: int = KILLS) -> dict[str, Any]:
    clean_all(LAB)
    before = machine()
    rows: list[dict[str, Any]] = []
    for i in range(cycles):
        plane = PLANES[i % len(PLANES)]
        seconds, left = cycle(_topology(out_dir, plane, kubernetes=False))
        rows.append({"run": "up/down", "i": i, "plane": plane, "seconds": round(seconds, 2),
                     **left})
    rng = random.Random(10)
    kube_topo = _topology(out_dir, "host-gw", kubernetes=True)
    window = bring_up_seconds(kube_topo)
    for i in range(kills):
        at = rng.uniform(0.1, window)
        phase, left = kill_mid_bring_up(kube_topo, at)
        rows.append({"run": "kill -9", "i": i, "plane": "host-gw", "seconds": round(at, 2),
                     "phase": phase, **left})
    after = machine()
    kinds = ["processes", "namespaces", "links", "ovs_bridges", "mounts", "rundir"]
    write_csv(out_dir / "cycles.csv", rows, ["run", "i", "plane", "seconds", "phase", *kinds,
                                             "up_processes", "up_namespaces", "up_links"])
    totals = {run: {k: sum(r[k] for r in rows if r["run"] == run) for k in kinds}
              for run in ("up/down", "kill -9")}
    updown = sorted(r["seconds"] for r in rows if r["run"] == "up/down")
    result = {"cycles": cycles, "kills": kills, "kill_window_s": round(window, 2),
              "leftovers": totals, "machine_before": before, "machine_after": after,
              "cycle_seconds_median": updown[len(updown) // 2] if updown else None}
    md = ["## Leftovers after up/down cycles and kill -9 mid-bring-up", "",
          f"{cycles} `up`/`down` cycles of a 2-node, 4-pod lab rotating over "
          f"{', '.join(PLANES)} (no Kubernetes; median cycle {result['cycle_seconds_median']} s), "
          f"and {kills} `kill -9` of the supervisor at a random moment (0.1-{window:.1f} s, "
          "the time it took to bring the lab up) of a "
          "Kubernetes lab's bring-up, each followed by `knetlab clean --cluster`. "
          "Counted after each: the lab's recorded processes still alive, its recorded "
          "namespaces still held, links and OVS bridges with its tag, mounts under its run "
          "directory, the run directory. While each lab was up the same counters saw "
          f"{_least(rows, 'up_processes')}+ processes and {_least(rows, 'up_namespaces')}+ "
          "namespaces (the counting sees a live lab).", "",
          "| run | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for run_, t in totals.items():
        md.append(f"| {run_} | " + " | ".join(str(t[k]) for k in kinds) + " |")
    md += ["", f"Root namespace before: {json.dumps(before)}; after: {json.dumps(after)} "
           "(other programs on the machine may change these; knetlab writes none of them).",
           "", "Per-run rows: `cycles.csv` (the kill's `phase` is the lab's state-file phase "
           "when it was killed).", ""]
    (out_dir / "cycles.md").write_text("\n".join(md))
    return result
