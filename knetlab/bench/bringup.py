"""Bring-up benchmark: time and memory to build N nodes x M pods on one segment and
pass ``check`` (sampled), for the sizes issue 2 names. Goal: 100 x 10 in < 60 s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.topologies.schema import load_topology

#: (nodes, pods per node, data plane): host-gw runs a flannel agent per node; vpc-routes
#: is static (routes on the segment's router), the floor of what the foundation costs.
SIZES = [(20, 5, "host-gw"), (100, 10, "host-gw"), (100, 10, "vpc-routes")]
GOAL_S = 60.0


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def measure(nodes: int, pods: int, plane: str, out_dir: Path) -> dict[str, Any]:
    topo = out_dir / f"bringup-{nodes}x{pods}-{plane}.yaml"
    topo.write_text(f"name: bench-{nodes}x{pods}\ndataplane: {plane}\nunderlay:\n  type: segment\n"
                    f"  cidr: 192.168.0.0/24\nnodes: {{count: {nodes}}}\n"
                    f"pods: {{perNode: {pods}}}\n")
    cluster = Cluster(load_topology(topo))
    avail0 = _mem_available_kib()
    t0 = time.monotonic()
    cluster.up()
    try:
        up_s = time.monotonic() - t0
        report = cluster.check(sample=5)
        ready_s = time.monotonic() - t0
        pids = [e["pid"] for e in cluster.rundir.owned() if e.get("kind") == "pid"]
        row = {
            "dataplane": plane, "nodes": nodes, "pods": nodes * pods, "up_s": round(up_s, 2),
            "check_ready_s": round(ready_s, 2), "check_ok": report.ok,
            "probes": len(report.probes),
            "ms_per_pod": round(1000 * up_s / (nodes * pods), 1),
            "lab_pss_mib": round(_pss_kib(pids) / 1024, 1),
            "mem_used_mib": round((avail0 - _mem_available_kib()) / 1024, 1),
            **{f"t_{k}_s": round(v, 2) for k, v in cluster.timings.items()},
        }
    finally:
        cluster.down()
    return row


def run(out_dir: Path) -> dict[str, Any]:
    rows = [measure(n, p, plane, out_dir) for n, p, plane in SIZES]
    write_csv(out_dir / "bringup.csv", rows)
    md = ["## Bring-up (one segment, linuxbridge)", "",
          "| data plane | nodes | pods | up (s) | up + check (s) | ms/pod | lab PSS (MiB) | "
          "MemAvailable drop (MiB) | check |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['dataplane']} | {r['nodes']} | {r['pods']} | {r['up_s']} | "
                  f"{r['check_ready_s']} | "
                  f"{r['ms_per_pod']} | {r['lab_pss_mib']} | {r['mem_used_mib']} | "
                  f"{'ok' if r['check_ok'] else 'FAILED'} ({r['probes']} probes) |")
    md.append("")
    for big in (r for r in rows if r["pods"] == 1000):
        md.append(f"Goal: 100 x 10 up and check-ready in < {GOAL_S:.0f} s with "
                  f"{big['dataplane']}: {'met' if big['check_ready_s'] < GOAL_S else 'NOT met'}"
                  f" ({big['check_ready_s']} s).")
    (out_dir / "bringup.md").write_text("\n".join(md) + "\n")
    return {"rows": rows}
