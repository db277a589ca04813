"""Calico benchmark: join convergence via route reflectors at 10, 50 and 100 nodes (p50 and
tail of node join -> its block's route learned on every other node, and -> the whole lab
converged; the tail is a p95 from 20 joins on, else the maximum, labelled so), speaker CPU
and memory per node, and pod to pod iperf3 throughput and RTT for calico-bgp and
calico-vxlan beside the host baseline (node to node) measured in the same run.

Budget ~4 minutes on 2 cores: each size is one lab (speakers boot in parallel) with a few
joins; the 100-node lab dominates (~50 s up, ~3 GiB of ExaBGP).
"""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from knetlab.cluster import Cluster
from knetlab.measure import iperf3, process_cpu_seconds, rtt

IPERF_PORT = 5214
TOPO = """name: {name}
dataplane: {plane}
{extra}
underlay: {{type: segment, cidr: 192.168.0.0/24}}
nodes: {{count: {nodes}}}
pods: {{perNode: 1}}
"""


def _lab(tmp: Path, name: str, plane: str, nodes: int, extra: str = "") -> Cluster:
    path = tmp / f"{name}.yaml"
    path.write_text(TOPO.format(name=name, plane=plane, nodes=nodes, extra=extra))
    return Cluster.load(path)


P95_MIN_SAMPLES = 20  # below this, the nearest-rank p95 is the maximum: say "max of N"


def tail(xs: list[float]) -> tuple[float, str]:
    """The tail of the samples and what it is: the nearest-rank p95 with 20 or more samples
    (the ceil(0.95 n)-th smallest), else the maximum, named as such ("max of 6")."""
    xs = sorted(xs)
    if len(xs) >= P95_MIN_SAMPLES:
        return xs[math.ceil(0.95 * len(xs)) - 1], "p95"
    return xs[-1], f"max of {len(xs)}"


def _join(c: Cluster, name: str) -> tuple[float, float]:
    """Join a node; return (its block's route learned on every other node, and the whole
    lab converged: the joiner has learned every route too), in seconds from the call."""
    backend: Any = c.backend
    others = [n.name for n in c.k8s_nodes()]
    t0 = time.monotonic()
    done: list[float] = []
    adder = threading.Thread(target=lambda: (c.add_node(name), done.append(time.monotonic())))
    adder.start()  # add_node returns once everything has converged
    route = 0.0
    while not route:
        block = backend.all_blocks().get(name)
        if block and all(block[0] in backend.learned_prefixes(n) for n in others):
            route = time.monotonic() - t0
        elif time.monotonic() - t0 > JOIN_DEADLINE:
            adder.join()
            raise TimeoutError(f"{name} not learned everywhere in {JOIN_DEADLINE}s")
        time.sleep(0.005)
    adder.join()
    if not done:
        raise RuntimeError(f"node add {name} failed (see the log above)")
    return route, done[0] - t0


def convergence(tmp: Path, nodes: int, joins: int) -> dict[str, Any]:
    t0 = time.monotonic()
    with _lab(tmp, f"cb-bench-rr{nodes}", "calico-bgp", nodes, "bgp: {mode: rr}") as c:
        up = time.monotonic() - t0
        backend: Any = c.backend
        converged_at_up = backend.converged()  # `up` waited for it: did it get there?
        routes, fulls = [], []
        for i in range(joins):
            # The nodes stay: each join is a new address, as in a growing cluster
            # (re-using a deleted node's address would skip the reflectors' spare logic).
            route, full = _join(c, f"join-{i}")
            routes.append(route)
            fulls.append(full)
        usage = _speaker_usage(c)
    (tail_s, tail_stat), (full_tail_s, _) = tail(routes), tail(fulls)
    return {"nodes": nodes, "joins": joins, "up_s": up, "converged_at_up": converged_at_up,
            "p50_s": statistics.median(routes), "tail_s": tail_s, "tail_stat": tail_stat,
            "full_p50_s": statistics.median(fulls), "full_tail_s": full_tail_s,
            "joins_s": [round(t, 3) for t in routes], **usage}


def _pids(pid: int) -> list[int]:
    """A speaker and its API program (its children)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, kids)]


def _cpu(pids: list[int]) -> float:
    return sum(process_cpu_seconds(p) for p in pids)


def _speaker_usage(c: Cluster) -> dict[str, float]:
    """Mean RSS and PSS and idle CPU of a node's ExaBGP + installer, over every node."""
    speakers: Any = c.backend.speakers  # type: ignore[union-attr]
    pids = [p for s in speakers.values() for p in _pids(s.pid)]
    rss = pss = 0.0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) / 1024
    t0, cpu0 = time.monotonic(), _cpu(pids)
    time.sleep(3)
    cpu = _cpu(pids) - cpu0
    n = len(speakers)
    return {"speaker_rss_mib": rss / n, "speaker_pss_mib": pss / n,
            "speaker_idle_cpu_pct": 100 * cpu / (time.monotonic() - t0) / n}


def _iperf(server: Any, client: Any, ip: str, tmp: Path) -> tuple[float, float]:
    """Gbit/s of one 3 s TCP stream client -> server (``ip``), and the ping RTT in ms."""
    gbps = iperf3(server.netns, ip, client.netns, IPERF_PORT, tmp / "iperf3-calico.pid",
                  3).gbps
    return gbps, rtt(client.netns, ip, 5, 0.2)


def throughput(tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for plane, extra in (("calico-bgp", ""), ("calico-vxlan", "")):
        with _lab(tmp, "cb-bench-tp", plane, 2, extra) as c:
            if not rows:
                n1, n2 = c.node("node-1"), c.node("node-2")
                g, r = _iperf(n2, n1, n2.node_ip, tmp)
                rows.append({"path": "host (node to node)", "gbps": g, "rtt_ms": r})
            p1, p2 = c.pod("pod-1-0"), c.pod("pod-2-0")
            g, r = _iperf(p2, p1, p2.ip, tmp)
            rows.append({"path": f"{plane} pod to pod", "gbps": g, "rtt_ms": r})
    base = rows[0]["gbps"]
    for row in rows:
        row["vs_host"] = row["gbps"] / base
    return rows


SIZES = ((10, 8), (50, 6), (100, 6))  # (nodes, joins)
JOIN_DEADLINE = 20.0


def convergence_row(c: dict[str, Any]) -> str:
    """One size's line of the join table; the tail columns name their statistic."""
    if "error" in c:
        return f"| {c['nodes']} | error: {c['error'][:80]} | | | | | | | | | |"
    stat = c["tail_stat"]
    return (f"| {c['nodes']} | {c['up_s']:.1f} | {'yes' if c['converged_at_up'] else 'no'} "
            f"| {c['joins']} | {c['p50_s'] * 1000:.0f} | {c['tail_s'] * 1000:.0f} ({stat}) "
            f"| {c['full_p50_s'] * 1000:.0f} | {c['full_tail_s'] * 1000:.0f} ({stat}) "
            f"| {c['speaker_rss_mib']:.1f} | "
            f"{c['speaker_pss_mib']:.1f} | {c['speaker_idle_cpu_pct']:.2f} |")


def run(out_dir: Path) -> dict[str, Any]:
    convs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes, joins in SIZES:
            try:
                convs.append(convergence(Path(tmp), nodes, joins))
            except Exception as exc:  # noqa: BLE001 - a size that fails is reported
                convs.append({"nodes": nodes, "error": str(exc)})
        tp = throughput(Path(tmp))
    with (out_dir / "calico.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for conv in convs:
            for k, v in conv.items():
                w.writerow([f"rr{conv['nodes']}_{k}", v])
        for row in tp:
            w.writerow([f"{row['path']} gbps", row["gbps"]])
            w.writerow([f"{row['path']} rtt_ms", row["rtt_ms"]])
    md = ["## Calico (BGP via ExaBGP, VXLAN)", "",
          "Join convergence, via 2 ExaBGP route reflectors: `node add` -> the new node's "
          "block learned on every other node (p50 and tail), and -> the whole lab converged, "
          "the joiner having learned every route too (full p50 and tail). Each join is a new "
          f"node (a new address). The tail is a p95 only from {P95_MIN_SAMPLES} joins on; "
          "with fewer it is the slowest join, labelled \"max of N\".", "",
          "| nodes | lab up s | converged at up | joins | p50 ms | tail ms | full p50 ms | "
          "full tail ms | speaker RSS MiB/node | PSS MiB/node | idle CPU %/node |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [convergence_row(c) for c in convs]
    md += ["", "| path | Gbit/s | RTT ms | vs host |", "|---|---|---|---|"]
    md += [f"| {r['path']} | {r['gbps']:.2f} | {r['rtt_ms']:.3f} | {r['vs_host']:.2f} |"
           for r in tp]
    (out_dir / "calico.md").write_text("\n".join(md) + "\n")
    return {"convergence": convs, "throughput": tp}
