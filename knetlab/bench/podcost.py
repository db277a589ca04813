"""Where a pod's CPU time goes: each step of wiring a topology pod, measured one pod at a
time, beside what each step of a plain Mininet host costs (``python -m
knetlab.bench.podcost --planes host-gw,calico-bgp [--kubernetes]``).

CPU, not wall time: the machine is shared, so wall time says more about the neighbours
than about the code. Two cpuacct cgroups (knetlab.compare.cpu) split the work: the lab's
daemons (API server, kubelets, agents, node shells) are started in ``lab``; then the
profiler moves itself into ``pods``, so that everything one pod costs on its own side
(the pause shell, ``ip``, CNI plugin processes, this process's Python) is charged there
and nothing else is. Steps run one after the other in this thread, so a step's cost is
the ``pods`` counter's difference around it; work the step causes in the daemons (the
API server storing and fanning out a mirror pod) is the ``lab`` counter's difference,
net of that cgroup's idle rate measured just before.

Nested steps are exclusive: ``shell`` is the Mininet host without the ownership records
and ``lo`` inside it.

Side by side, in rounds (``--rounds``, 3 by default): one run of each swings by 10-20 %
with the machine's state (page cache, what ran before), so each plane is measured right
after a plain Mininet run of as many hosts, and the verdict is per round: the plane's total
against that Mininet run's, how many rounds it was at or below it, the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from knetlab.compare.cpu import LabCgroup

#: every data plane this kernel runs (calico-ipip and rancher-ipsec need IPIP and ESP, absent)
PLANES = ["host-gw", "vpc-routes", "flannel-vxlan", "flannel-udp", "calico-bgp", "calico-vxlan",
          "ovs-vxlan", "ovs-gre", "weave", "macvlan"]
#: names of the profiler's lab and cgroups start with this (as in knetlab.bench.bringup)
LAB_PREFIX = os.environ.get("KNETLAB_BENCH_LAB", "bench")
#: the plain Mininet yardstick's names (bridge, hosts) start with this: two runs with other
#: prefixes do not collide (host names become interface names: at most 4 characters)
MININET_TAG = "".join(c for c in LAB_PREFIX if c.isalnum())[:4] or "pfc"


class StepMeter:
    """CPU (ns, from cgroup counters) and wall time per named step, nesting exclusive."""

    def __init__(self, pods: LabCgroup, lab: LabCgroup | None = None) -> None:
        self.pods, self.lab = pods, lab
        self.cpu: dict[str, int] = defaultdict(int)
        self.lab_cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.idle_lab_ns_per_s = 0.0
        self._inner: list[list[float]] = []  # per open step: [cpu, lab cpu, wall] of children

    def calibrate_idle(self, seconds: float = 2.0) -> None:
        """The lab cgroup's background rate (agents' timers, API server keep-alives)."""
        if self.lab is None:
            return
        a, t = self.lab.sample().lab_ns, time.monotonic()
        time.sleep(seconds)
        self.idle_lab_ns_per_s = (self.lab.sample().lab_ns - a) / (time.monotonic() - t)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        c0, t0 = self.pods.sample().lab_ns, time.monotonic()
        l0 = self.lab.sample().lab_ns if self.lab else 0
        self._inner.append([0.0, 0.0, 0.0])
        try:
            yield
        finally:
            inner = self._inner.pop()
            wall = time.monotonic() - t0
            cpu = self.pods.sample().lab_ns - c0
            lab = (self.lab.sample().lab_ns - l0 - self.idle_lab_ns_per_s * wall
                   if self.lab else 0.0)
            self.cpu[name] += int(cpu - inner[0])
            self.lab_cpu[name] += lab - inner[1]
            self.wall[name] += wall - inner[2]
            if self._inner:
                for i, v in enumerate((cpu, lab, wall)):
                    self._inner[-1][i] += v

    def wrap(self, owner: Any, attr: str, name: str | Callable[..., str]) -> None:
        """Meter every call of ``owner.attr`` (a function or method) as step ``name``."""
        fn = getattr(owner, attr)

        def metered(*args: Any, **kw: Any) -> Any:
            with self.step(name(*args, **kw) if callable(name) else name):
                return fn(*args, **kw)
        setattr(owner, attr, metered)

    def per_item(self, count: int) -> dict[str, dict[str, float]]:
        names = list(self.cpu)
        return {n: {"cpu_ms": round(self.cpu[n] / 1e6 / count, 2),
                    "daemons_cpu_ms": round(max(self.lab_cpu[n], 0) / 1e6 / count, 2),
                    "wall_ms": round(1000 * self.wall[n] / count, 2)} for n in names}


def _instrument(meter: StepMeter) -> None:
    """Meter the steps inside a pod's creation (module attributes the pod code calls)."""
    from knetlab.cni import runtime as cni_runtime
    from knetlab.nodes import pod as pod_module
    from knetlab.rundir import RunDir
    meter.wrap(pod_module, "link_up", "lo up")
    meter.wrap(RunDir, "record_process", "ownership records")
    meter.wrap(RunDir, "record_netns", "ownership records")
    meter.wrap(cni_runtime.CNIRuntime, "_run",
               lambda _self, plugin, conf, env: f"cni plugin {plugin['type']}")


def profile_plane(plane: str, pods: int, kubernetes: bool, out_dir: Path,
                  nodes: int = 2) -> dict[str, Any]:
    """Wire ``pods`` pods on the first node of a ``nodes``-node lab, one at a time."""
    from knetlab.cluster import Cluster
    from knetlab.topologies.schema import load_topology
    topo = out_dir / f"podcost-{plane}-{'k8s' if kubernetes else 'nok8s'}.yaml"
    # macvlan's pods take addresses of the segment itself: a /24 slice per node
    cidr = "192.168.0.0/16" if plane == "macvlan" else "192.168.0.0/24"
    topo.write_text(f"name: {LAB_PREFIX}-cost\ndataplane: {plane}\nunderlay:\n  type: segment\n"
                    f"  cidr: {cidr}\nnodes: {{count: {nodes}}}\n"
                    f"pods: {{perNode: 0}}\nkubernetes: {str(kubernetes).lower()}\n")
    cluster = Cluster(load_topology(topo))
    # Torn down inside both cgroups: once empty, they can be removed on the way out.
    with LabCgroup(f"{LAB_PREFIX}-cost-lab") as lab:
        up0 = lab.sample().lab_ns
        cluster.up()
        up_ns = lab.sample().lab_ns - up0
        with LabCgroup(f"{LAB_PREFIX}-cost-pods") as meter_cg:
            try:
                meter = StepMeter(meter_cg, lab)
                meter.calibrate_idle()
                _instrument(meter)
                _wire_one_by_one(cluster, meter, pods)
                idle = meter.idle_lab_ns_per_s
            finally:
                _uninstrument()
                cluster.down()
    steps = meter.per_item(pods)
    return {"dataplane": plane, "kubernetes": kubernetes, "pods": pods, "cni": cluster.spec.cni,
            "steps": steps,
            "total_cpu_ms": round(sum(s["cpu_ms"] + s["daemons_cpu_ms"]
                                      for s in steps.values()), 2),
            "lab_up_cpu_s": round(up_ns / 1e9, 2),
            "daemons_idle_ms_per_s_per_node": round(idle / 1e6 / nodes, 2)}


def _wire_one_by_one(cluster: Any, meter: StepMeter, pods: int) -> None:
    """What Cluster._wire and add_pod do, step by step, on the first node."""
    from knetlab.nodes.pod import Pod
    from knetlab.topologies.schema import PodSpec
    node = next(iter(cluster.nodes.values()))
    assert cluster.net is not None and node.runtime is not None
    for i in range(pods):
        name = f"pfc-{i}"
        with meter.step("shell"):
            pod = cluster.net.addHost(name, cls=Pod, rundir=cluster.rundir, node=node.name,
                                      ip=None)
        cluster.pods[name] = pod
        cluster.spec.pods.append(PodSpec(name, node.name))
        with meter.step("cni add (runtime)"):
            node.runtime.run_pod_sandbox(pod)
        if cluster.control is not None:
            with meter.step("mirror pod"):
                cluster.control.mirror_pods([pod])


_ORIGINALS: list[tuple[Any, str, Any]] = []


def _uninstrument() -> None:
    """Put back what ``_instrument`` wrapped (the profiler may run several planes)."""
    while _ORIGINALS:
        owner, attr, fn = _ORIGINALS.pop()
        setattr(owner, attr, fn)


def _remember() -> None:
    from knetlab.cni import runtime as cni_runtime
    from knetlab.nodes import pod as pod_module
    from knetlab.rundir import RunDir
    for owner, attr in ((pod_module, "link_up"), (RunDir, "record_process"),
                        (RunDir, "record_netns"), (cni_runtime.CNIRuntime, "_run")):
        _ORIGINALS.append((owner, attr, getattr(owner, attr)))


def profile_mininet(hosts: int) -> dict[str, Any]:
    """The same accounting for plain Mininet hosts: shell, Link, config, bridge port."""
    from mininet.net import Mininet

    from knetlab.topologies.underlay import KernelBridge
    with LabCgroup(f"{LAB_PREFIX}-cost-mn") as cg:
        meter = StepMeter(cg)
        net = Mininet(topo=None, switch=KernelBridge, controller=None, build=False,
                      autoSetMacs=False, waitConnected=False, ipBase="10.250.0.0/16")
        sw = net.addSwitch(f"{MININET_TAG}b1")
        sw.start([])
        try:
            for i in range(hosts):
                with meter.step("shell"):
                    host = net.addHost(f"{MININET_TAG}h{i}")
                with meter.step("link"):
                    link = net.addLink(host, sw)
                with meter.step("config (ip, lo up)"):
                    host.configDefault()
                with meter.step("bridge port"):
                    sw.attach(link.intf2)
        finally:
            net.stop()
    steps = meter.per_item(hosts)
    return {"hosts": hosts, "steps": steps,
            "total_cpu_ms": round(sum(s["cpu_ms"] for s in steps.values()), 2)}


def _mean_steps(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each step's mean over the rounds (a step some round lacks counts 0 there)."""
    names = list(dict.fromkeys(n for run in runs for n in run))
    return {n: {k: round(sum(run.get(n, {}).get(k, 0.0) for run in runs) / len(runs), 2)
                for k in ("cpu_ms", "daemons_cpu_ms", "wall_ms")} for n in names}


def summarize(plane_runs: list[dict[str, Any]], mininet_runs: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """One plane over its rounds, each beside the plain Mininet run made just before it."""
    totals = [r["total_cpu_ms"] for r in plane_runs]
    ratios = [r["total_cpu_ms"] / m["total_cpu_ms"]
              for r, m in zip(plane_runs, mininet_runs, strict=True)]
    return {**{k: v for k, v in plane_runs[0].items() if k not in ("steps", "total_cpu_ms")},
            "rounds": len(plane_runs), "steps": _mean_steps([r["steps"] for r in plane_runs]),
            "total_cpu_ms": round(median(totals), 2), "totals_cpu_ms": totals,
            "mininet_totals_cpu_ms": [m["total_cpu_ms"] for m in mininet_runs],
            "ratio_to_mininet": [round(x, 2) for x in ratios],
            "rounds_at_or_below_mininet": sum(x <= 1.0 for x in ratios)}


def markdown(results: list[dict[str, Any]]) -> str:
    """One table: a column per data plane (and plain Mininet), a row per step; each cell
    CPU ms per pod on the pod's side + in the lab's daemons (when any), the mean over the
    rounds; then each plane's total and its ratio to the Mininet host of the same round."""
    mn = next(r["plain_mininet"] for r in results if "plain_mininet" in r)
    planes = [r for r in results if "dataplane" in r]
    steps = list(dict.fromkeys(n for r in planes for n in r["steps"]))
    rounds = max((r.get("rounds", 1) for r in planes), default=1)

    def cell(step: dict[str, float] | None) -> str:
        if not step:
            return ""
        daemons = step.get("daemons_cpu_ms", 0)
        return f"{step['cpu_ms']}" + (f" + {daemons}" if daemons >= 0.1 else "")

    def spread(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""
    k8s = " (with Kubernetes)" if planes and planes[0]["kubernetes"] else ""
    head = ["step"] + [f"{r['dataplane']} ({r['cni']})" for r in planes] + ["plain Mininet"]
    lines = [f"CPU ms per pod{k8s}, pod side + lab daemons, {mn['hosts']} pods each, "
             f"{rounds} round(s): in each round every plane is measured right after a plain "
             "Mininet run of as many hosts (steps: the mean over the rounds):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in steps:
        lines.append("| " + " | ".join([name] + [cell(r["steps"].get(name)) for r in planes]
                                       + [""]) + " |")
    for name, step in mn["steps"].items():
        lines.append("| " + " | ".join([f"Mininet: {name}"] + [""] * len(planes)
                                       + [cell(step)]) + " |")
    lines.append("| **total** (median) | " + " | ".join(
        [f"**{r['total_cpu_ms']}**" for r in planes] + [f"**{mn['total_cpu_ms']}**"]) + " |")
    if rounds > 1:
        lines.append("| total, range | " + " | ".join(
            [spread(r["totals_cpu_ms"]) for r in planes] + [spread(mn["totals_cpu_ms"])])
            + " |")
        lines.append("| x the Mininet host of its round: median (range) | " + " | ".join(
            f"{median(r['ratio_to_mininet']):.2f} ({spread(r['ratio_to_mininet'])})"
            for r in planes) + " | |")
        lines.append("| rounds at or below that Mininet host | " + " | ".join(
            f"{r['rounds_at_or_below_mininet']} of {r['rounds']}" for r in planes) + " | |")
    return "\n".join(lines) + "\n"


def run(out_dir: Path, planes: list[str] | None = None, pods: int = 20,
        kubernetes: bool = False, rounds: int = 3) -> list[dict[str, Any]]:
    """``rounds`` times: each data plane right after a plain Mininet run of as many hosts,
    so that each comparison is made on the machine as it was at that moment (one run of
    each swings by 10-20 % with the machine's state); writes podcost.json and podcost.md."""
    planes = planes or PLANES
    plane_runs: dict[str, list[dict[str, Any]]] = {p: [] for p in planes}
    mininet_runs: dict[str, list[dict[str, Any]]] = {p: [] for p in planes}
    for _ in range(rounds):
        for plane in planes:
            mininet_runs[plane].append(profile_mininet(pods))
            _remember()
            plane_runs[plane].append(profile_plane(plane, pods, kubernetes, out_dir))
    every_mininet = [m for p in planes for m in mininet_runs[p]]
    mn_totals = [m["total_cpu_ms"] for m in every_mininet]
    results: list[dict[str, Any]] = [{"plain_mininet": {
        "hosts": pods, "runs": len(every_mininet),
        "steps": _mean_steps([m["steps"] for m in every_mininet]),
        "total_cpu_ms": round(median(mn_totals), 2), "totals_cpu_ms": mn_totals}}]
    results += [summarize(plane_runs[p], mininet_runs[p]) for p in planes]
    (out_dir / "podcost.json").write_text(json.dumps(results, indent=1))
    (out_dir / "podcost.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--planes", default=",".join(PLANES))
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--kubernetes", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="times each plane is measured, each right after a Mininet run")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)
    if args.pods < 1 or args.rounds < 1:
        ap.error("--pods and --rounds must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(markdown(run(out, args.planes.split(","), args.pods, args.kubernetes,
                       args.rounds)))


if __name__ == "__main__":
    sys.exit(main())
