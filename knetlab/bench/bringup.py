"""Bring-up benchmark: time and memory to build N nodes x M pods on one segment and
pass ``check`` (sampled: CHECK_SAMPLE peers per pod and per node, not every pair; the
table says so), for the sizes issue 2 names. Goal: 100 x 10 in < 60 s.

Beside it, in the same run, the yardstick issue 10 compares a pod with: plain Mininet
(its own ``Host``, a shell in its namespaces, and ``Link``), 1,000 hosts on Linux bridges,
10 per bridge, no controller. Its bridges are knetlab's ``KernelBridge`` (made with ``ip``;
Mininet's ``LinuxBridge`` needs bridge-utils' brctl, which knetlab does not require)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.topologies.schema import load_topology

#: (nodes, pods per node, data plane): host-gw runs a flannel agent per node; vpc-routes
#: is static (routes on the segment's router), the floor of what the foundation costs.
#: The 4th item, when there, is the topology's ``cni:`` (else the data plane's default:
#: the reference plugins for both): knetlab's own Python plugins, for comparison.
SIZES: list[tuple[int, int, str] | tuple[int, int, str, str]] = [
    (20, 5, "host-gw"), (100, 10, "host-gw"), (100, 10, "vpc-routes"),
    (100, 10, "vpc-routes", "knetlab")]
MININET_HOSTS, MININET_PER_BRIDGE = 1000, 10
GOAL_S = 60.0
#: peers ``check`` probes from each pod and node (a full check of 1,000 pods is 1M probes)
CHECK_SAMPLE = 5


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


def measure(nodes: int, pods: int, plane: str, out_dir: Path, cni: str = ""
            ) -> dict[str, Any]:
    topo = out_dir / f"bringup-{nodes}x{pods}-{plane}{'-' + cni if cni else ''}.yaml"
    topo.write_text(f"name: bench-{nodes}x{pods}\ndataplane: {plane}\nunderlay:\n  type: segment\n"
                    f"  cidr: 192.168.0.0/24\nnodes: {{count: {nodes}}}\n"
                    f"pods: {{perNode: {pods}}}\n" + (f"cni: {cni}\n" if cni else ""))
    spec = load_topology(topo)
    cluster = Cluster(spec)
    avail0 = _mem_available_kib()
    t0 = time.monotonic()
    cluster.up()
    try:
        up_s = time.monotonic() - t0
        report = cluster.check(sample=CHECK_SAMPLE)
        ready_s = time.monotonic() - t0
        pids = [e["pid"] for e in cluster.rundir.owned() if e.get("kind") == "pid"]
        row = {
            "dataplane": plane, "cni": spec.cni, "nodes": nodes, "pods": nodes * pods,
            "up_s": round(up_s, 2),
            "check_ready_s": round(ready_s, 2), "check_ok": report.ok,
            "probes": len(report.probes), "check_sample": CHECK_SAMPLE,
            "ms_per_pod": round(1000 * up_s / (nodes * pods), 1),
            "lab_pss_mib": round(_pss_kib(pids) / 1024, 1),
            "mem_used_mib": round((avail0 - _mem_available_kib()) / 1024, 1),
            **{f"t_{k}_s": round(v, 2) for k, v in cluster.timings.items()},
        }
    finally:
        cluster.down()
    return row


def plain_mininet(hosts: int = MININET_HOSTS, per_bridge: int = MININET_PER_BRIDGE
                  ) -> dict[str, Any]:
    """Seconds to build and start plain Mininet hosts on Linux bridges (the yardstick)."""
    from mininet.net import Mininet

    from knetlab.topologies.underlay import KernelBridge
    net = Mininet(topo=None, switch=KernelBridge, controller=None, build=False,
                  autoSetMacs=False, waitConnected=False, ipBase="10.250.0.0/16")
    # "pf" names: this bench's own, unlike any lab's interfaces
    for b in range(1, hosts // per_bridge + 1):
        sw = net.addSwitch(f"pfb{b}")
        for k in range(per_bridge):
            net.addLink(net.addHost(f"pfh{(b - 1) * per_bridge + k + 1}"), sw)
    t0 = time.monotonic()
    try:
        net.build()
        net.start()
        up_s = time.monotonic() - t0
    finally:
        net.stop()
    return {"hosts": hosts, "per_bridge": per_bridge, "up_s": round(up_s, 2),
            "ms_per_host": round(1000 * up_s / hosts, 1)}


def plain_mininet_apart(out_dir: Path) -> dict[str, Any]:
    """``plain_mininet`` in a child process: Mininet leaves its 1,000 hosts' pty and pipe
    descriptors open after ``stop``, which must not count against the labs measured here."""
    code = ("import json; from knetlab.bench.bringup import plain_mininet; "
            "print(json.dumps(plain_mininet()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode != 0:
        (out_dir / "bringup-mininet.log").write_text(proc.stdout + proc.stderr)
        raise RuntimeError(f"plain Mininet bench failed (see {out_dir}/bringup-mininet.log)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_cell(row: dict[str, Any]) -> str:
    """The table's check column: the verdict, and that it was a sample."""
    verdict = "ok" if row["check_ok"] else "FAILED"
    return (f"{verdict} (sampled {row['check_sample']} peers per pod: "
            f"{row['probes']} probes)")


def run(out_dir: Path) -> dict[str, Any]:
    mn = plain_mininet_apart(out_dir)
    rows = [measure(n, p, plane, out_dir, *cni) for n, p, plane, *cni in SIZES]
    write_csv(out_dir / "bringup.csv", rows)
    md = ["## Bring-up (one segment, linuxbridge)", "",
          f"Plain Mininet, same run: {mn['hosts']} hosts, {mn['per_bridge']} per Linux bridge, "
          f"up in {mn['up_s']} s: **{mn['ms_per_host']} ms per host** (compare ms/pod).", "",
          "| data plane | cni | nodes | pods | up (s) | up + check (s) | ms/pod | lab PSS (MiB) | "
          "MemAvailable drop (MiB) | check |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['dataplane']} | {r['cni']} | {r['nodes']} | {r['pods']} | {r['up_s']} | "
                  f"{r['check_ready_s']} | "
                  f"{r['ms_per_pod']} | {r['lab_pss_mib']} | {r['mem_used_mib']} | "
                  f"{check_cell(r)} |")
    md += ["", f"`check` was sampled: each pod and node probed {CHECK_SAMPLE} random peer pods "
           "(seeded), not every pair; the probes column counts them.", ""]
    for big in (r for r in rows if r["pods"] == 1000):
        md.append(f"Goal: 100 x 10 up and check-ready in < {GOAL_S:.0f} s with "
                  f"{big['dataplane']}: {'met' if big['check_ready_s'] < GOAL_S else 'NOT met'}"
                  f" ({big['check_ready_s']} s).")
    (out_dir / "bringup.md").write_text("\n".join(md) + "\n")
    return {"rows": rows, "plain_mininet": mn}
