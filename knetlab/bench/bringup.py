"""Bring-up benchmark: time and memory to build N nodes x M pods on one segment and
pass ``check`` (sampled: CHECK_SAMPLE peers per pod and per node, not every pair; the
table says so), for the sizes issue 2 names. Goal: 100 x 10 in < 60 s.

Beside it, in the same run, the yardstick issue 10 compares a pod with: plain Mininet
(its own ``Host``, a shell in its namespaces, and ``Link``), 1,000 hosts on Linux bridges,
10 per bridge, no controller. Its bridges are knetlab's ``KernelBridge`` (made with ``ip``;
Mininet's ``LinuxBridge`` needs bridge-utils' brctl, which knetlab does not require).

Per pod, both wall and CPU time: CPU is what the code costs (the machine is shared, so wall
time also says how busy the neighbours were). CPU is the cpuacct cgroup the run moves
itself into (knetlab.compare.cpu): every process a lab starts is charged there, the
plain-Mininet yardstick likewise in its own. ``knetlab.bench.podcost`` splits a pod's CPU
into its steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from knetlab.bench import podcost, write_csv
from knetlab.cluster import Cluster
from knetlab.compare.cpu import LabCgroup
from knetlab.topologies.schema import load_topology

#: (nodes, pods per node, data plane): host-gw runs a flannel agent per node; vpc-routes
#: is static (routes on the segment's router), the floor of what the foundation costs.
#: The 4th item, when there, is the topology's ``cni:`` (else the data plane's default:
#: the reference plugins for both): knetlab's own Python plugins, for comparison.
#: Every data plane at 20 x 10 (a pod's cost side by side with a Mininet host's), then the
#: big ones.
PLANES = ["host-gw", "vpc-routes", "flannel-vxlan", "calico-bgp", "ovs-vxlan"]
SIZES: list[tuple[int, int, str] | tuple[int, int, str, str]] = [
    *((20, 10, plane) for plane in PLANES),
    (100, 10, "host-gw"), (100, 10, "vpc-routes"), (100, 10, "vpc-routes", "knetlab")]
#: the labs' names start with this (a helper running the bench beside others sets its own)
LAB_PREFIX = os.environ.get("KNETLAB_BENCH_LAB", "bench")
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
    topo.write_text(f"name: {LAB_PREFIX}-{nodes}x{pods}\ndataplane: {plane}\n"
                    "underlay:\n  type: segment\n"
                    f"  cidr: 192.168.0.0/24\nnodes: {{count: {nodes}}}\n"
                    f"pods: {{perNode: {pods}}}\n" + (f"cni: {cni}\n" if cni else ""))
    spec = load_topology(topo)
    cluster = Cluster(spec)
    avail0 = _mem_available_kib()
    cgroup = LabCgroup(f"{LAB_PREFIX}-bringup")
    cpu: dict[str, int] = {}

    def phase_cpu(name: str, _seconds: float) -> None:
        cpu[name] = cgroup.sample().lab_ns
    # "pods" (kubelets started with Kubernetes, pause processes, CNI ADD) starts where
    # "network" ends; "wire" is the pods alone (pause processes and CNI ADD), without the
    # kubelets' start-up (which, at 10 pods a node, costs about as much as the pods)
    cluster.on_phase = phase_cpu
    start_pods = cluster._start_pods

    def metered_start_pods(specs: Any) -> None:
        cpu["wire0"] = cgroup.sample().lab_ns
        start_pods(specs)
        cpu["wire"] = cgroup.sample().lab_ns
    cluster._start_pods = metered_start_pods  # type: ignore[method-assign]
    # The whole lab lives in the cgroup, up to its end (then the cgroup can be removed).
    with cgroup:
        cpu0 = cgroup.sample().lab_ns
        t0 = time.monotonic()
        cluster.up()
        up_cpu = cgroup.sample().lab_ns - cpu0
        try:
            row = _row(cluster, spec, nodes, pods, plane, t0, avail0,
                       up_cpu, cpu.get("pods", 0) - cpu.get("network", cpu0))
            row["wire_cpu_ms_per_pod"] = round(
                (cpu.get("wire", 0) - cpu.get("wire0", 0)) / 1e6 / (nodes * pods), 1)
            return row
        finally:
            cluster.down()


def _row(cluster: Cluster, spec: Any, nodes: int, pods: int, plane: str, t0: float,
         avail0: int, up_cpu: int, pods_cpu: int) -> dict[str, Any]:
    """The table's row of a lab that is up: check it, then read times, CPU and memory."""
    up_s = time.monotonic() - t0
    all_pods = nodes * pods
    report = cluster.check(sample=CHECK_SAMPLE)
    ready_s = time.monotonic() - t0
    pids = [e["pid"] for e in cluster.rundir.owned() if e.get("kind") == "pid"]
    return {
        "dataplane": plane, "cni": spec.cni, "nodes": nodes, "pods": all_pods,
        "up_s": round(up_s, 2),
        "check_ready_s": round(ready_s, 2), "check_ok": report.ok,
        "probes": len(report.probes), "check_sample": CHECK_SAMPLE,
        "ms_per_pod": round(1000 * up_s / all_pods, 1),
        "pods_wall_ms_per_pod": round(1000 * cluster.timings.get("pods", 0) / all_pods, 1),
        "pods_cpu_ms_per_pod": round(pods_cpu / 1e6 / all_pods, 1),
        "up_cpu_ms_per_pod": round(up_cpu / 1e6 / all_pods, 1),
        "lab_pss_mib": round(_pss_kib(pids) / 1024, 1),
        "mem_used_mib": round((avail0 - _mem_available_kib()) / 1024, 1),
        **{f"t_{k}_s": round(v, 2) for k, v in cluster.timings.items()},
    }


def plain_mininet(hosts: int = MININET_HOSTS, per_bridge: int = MININET_PER_BRIDGE
                  ) -> dict[str, Any]:
    """Seconds (and CPU) to make, build and start plain Mininet hosts on Linux bridges (the
    yardstick). Timed from before ``addHost``: Mininet makes a host's shell there and a
    link's veth pair in ``addLink``, not in ``build`` (timing only build and start, as this
    bench did until 2026-12-01, left out most of a host's cost)."""
    from mininet.net import Mininet

    from knetlab.topologies.underlay import KernelBridge
    with LabCgroup(f"{LAB_PREFIX}-mininet") as cgroup:
        cpu0 = cgroup.sample().lab_ns
        t0 = time.monotonic()
        net = Mininet(topo=None, switch=KernelBridge, controller=None, build=False,
                      autoSetMacs=False, waitConnected=False, ipBase="10.250.0.0/16")
        try:
            # "pf" names: this bench's own, unlike any lab's interfaces
            for b in range(1, hosts // per_bridge + 1):
                sw = net.addSwitch(f"pfb{b}")
                for k in range(per_bridge):
                    net.addLink(net.addHost(f"pfh{(b - 1) * per_bridge + k + 1}"), sw)
            net.build()
            net.start()
            up_s = time.monotonic() - t0
            cpu_ns = cgroup.sample().lab_ns - cpu0
        finally:
            net.stop()
    return {"hosts": hosts, "per_bridge": per_bridge, "up_s": round(up_s, 2),
            "ms_per_host": round(1000 * up_s / hosts, 1),
            "cpu_ms_per_host": round(cpu_ns / 1e6 / hosts, 1)}


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
          f"up in {mn['up_s']} s: **{mn['ms_per_host']} ms per host** wall, "
          f"**{mn['cpu_ms_per_host']} ms of CPU per host** (compare the pod columns).", "",
          "| data plane | cni | nodes | pods | up (s) | up + check (s) | ms/pod | "
          "pods phase: wall ms/pod | pods phase: CPU ms/pod | pods alone: CPU ms/pod | "
          "whole up: CPU ms/pod | lab PSS (MiB) | MemAvailable drop (MiB) | check |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['dataplane']} | {r['cni']} | {r['nodes']} | {r['pods']} | {r['up_s']} | "
                  f"{r['check_ready_s']} | "
                  f"{r['ms_per_pod']} | {r['pods_wall_ms_per_pod']} | "
                  f"{r['pods_cpu_ms_per_pod']} | {r['wire_cpu_ms_per_pod']} | "
                  f"{r['up_cpu_ms_per_pod']} | "
                  f"{r['lab_pss_mib']} | {r['mem_used_mib']} | "
                  f"{check_cell(r)} |")
    md += ["", "Pods phase: kubelets started (with Kubernetes), pause processes and CNI ADD, "
           "nodes in parallel; pods alone: the same without the kubelets' start (pause "
           "processes and CNI ADD: what a plain Mininet host's CPU compares with; the mirror "
           "pods' publication comes later, in the Kubernetes phase); whole up: every "
           "process of the lab from the run dir to the add-ons (API server, agents, node "
           "shells, routers). CPU from the run's cpuacct "
           "cgroup, every process the lab starts included.",
           "", f"`check` was sampled: each pod and node probed {CHECK_SAMPLE} random peer pods "
           "(seeded), not every pair; the probes column counts them.", ""]
    for big in (r for r in rows if r["pods"] == 1000):
        md.append(f"Goal: 100 x 10 up and check-ready in < {GOAL_S:.0f} s with "
                  f"{big['dataplane']}: {'met' if big['check_ready_s'] < GOAL_S else 'NOT met'}"
                  f" ({big['check_ready_s']} s).")
    md += ["", "### Where a pod's CPU time goes", "",
           "One pod at a time on a 2-node lab without Kubernetes (`python -m "
           "knetlab.bench.podcost`; `--kubernetes` adds the mirror pod's publication), "
           "beside the steps of a plain Mininet host:", ""]
    try:
        steps = podcost.run(out_dir)
        md.append(podcost.markdown(steps))
    except Exception as exc:  # noqa: BLE001 - the table above is the bench's result
        steps = [{"error": str(exc)}]
        md.append(f"(failed: {exc})")
    (out_dir / "bringup.md").write_text("\n".join(md) + "\n")
    return {"rows": rows, "plain_mininet": mn, "pod_steps": steps}
