"""Calico benchmark: join convergence via route reflectors, speaker CPU/memory, and pod
to pod iperf3 throughput and RTT for calico-bgp and calico-vxlan beside the host baseline
(node to node) measured in the same run.

Budget < 3 minutes on 2 cores, so convergence is measured at 10 nodes (10 joins on a
10-node lab); 50 and 100 nodes are left out (ExaBGP at ~20 MiB PSS per speaker and a
serial launch take minutes there, see KERNEL.md).
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from knetlab.cluster import Cluster

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


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def convergence(tmp: Path, nodes: int, joins: int) -> dict[str, Any]:
    with _lab(tmp, "ca-bench-rr", "calico-bgp", nodes, "bgp: {mode: rr}") as c:
        times = []
        for i in range(joins):
            name = f"join-{i}"
            t0 = time.monotonic()
            node = c.add_node(name)  # returns once every node learned the new block
            cidr = node.spec.pod_cidr
            while not all(cidr in c.backend.learned_prefixes(n.name)  # type: ignore[union-attr]
                          for n in c.k8s_nodes() if n is not node):
                time.sleep(0.01)
            times.append(time.monotonic() - t0)
            c.delete_node(name)
        rss = _speaker_memory(c)
    return {"nodes": nodes, "joins": joins, "p50_s": statistics.median(times),
            "p95_s": _pct(times, 0.95), **rss}


def _speaker_memory(c: Cluster) -> dict[str, float]:
    """RSS and CPU time of one node's ExaBGP and its API program (children)."""
    pid = c.backend.speakers["node-1"].pid  # type: ignore[union-attr]
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    rss = cpu = 0.0
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        rss += int(next(ln.split()[1] for ln in status.splitlines()
                        if ln.startswith("VmRSS"))) / 1024
        stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(stat[11]) + int(stat[12])) / 100
    t0 = time.monotonic()
    cpu0 = cpu
    time.sleep(3)
    cpu = 0.0
    for p in pids:
        stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(stat[11]) + int(stat[12])) / 100
    return {"speaker_rss_mib": rss, "speaker_idle_cpu_pct": 100 * (cpu - cpu0) /
            (time.monotonic() - t0)}


def _iperf(server: Any, client: Any, ip: str) -> tuple[float, float]:
    srv = server.popen(["iperf3", "-s", "-1"])
    time.sleep(0.3)  # iperf3 -s has no readiness signal; -c retries are worse
    try:
        out = client.run(["iperf3", "-c", ip, "-t", "3", "-J"], timeout=20).stdout
        gbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()
    ping = client.run(["ping", "-c", "5", "-i", "0.2", ip]).stdout
    rtt = float(ping.rsplit("=", 1)[1].split("/")[1])
    return gbps, rtt


def throughput(tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for plane, extra in (("calico-bgp", ""), ("calico-vxlan", "")):
        with _lab(tmp, "ca-bench-tp", plane, 2, extra) as c:
            if not rows:
                n1, n2 = c.node("node-1"), c.node("node-2")
                g, r = _iperf(n2, n1, n2.node_ip)
                rows.append({"path": "host (node to node)", "gbps": g, "rtt_ms": r})
            p1, p2 = c.pod("pod-1-0"), c.pod("pod-2-0")
            g, r = _iperf(p2, p1, p2.ip)
            rows.append({"path": f"{plane} pod to pod", "gbps": g, "rtt_ms": r})
    base = rows[0]["gbps"]
    for row in rows:
        row["vs_host"] = row["gbps"] / base
    return rows


def run(out_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        conv = convergence(Path(tmp), 10, 10)
        tp = throughput(Path(tmp))
    with (out_dir / "calico.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for k, v in conv.items():
            w.writerow([f"rr_join_{k}", v])
        for row in tp:
            w.writerow([f"{row['path']} gbps", row["gbps"]])
            w.writerow([f"{row['path']} rtt_ms", row["rtt_ms"]])
    md = ["## Calico (BGP via ExaBGP, VXLAN)", "",
          "| measure | value |", "|---|---|",
          f"| join convergence, {conv['nodes']} nodes via 2 reflectors, p50 | "
          f"{conv['p50_s'] * 1000:.0f} ms |",
          f"| join convergence p95 ({conv['joins']} joins) | {conv['p95_s'] * 1000:.0f} ms |",
          f"| speaker RSS per node (ExaBGP + installer) | {conv['speaker_rss_mib']:.1f} MiB |",
          f"| speaker idle CPU per node | {conv['speaker_idle_cpu_pct']:.2f} % of a core |",
          "", "| path | Gbit/s | RTT ms | vs host |", "|---|---|---|---|"]
    md += [f"| {r['path']} | {r['gbps']:.2f} | {r['rtt_ms']:.3f} | {r['vs_host']:.2f} |"
           for r in tp]
    (out_dir / "calico.md").write_text("\n".join(md) + "\n")
    return {"convergence": conv, "throughput": tp}
