"""Benchmark of the flannel data planes: iperf3 TCP throughput and ping RTT pod to pod
across nodes for host-gw, vxlan and udp, each beside the host-to-host (node IP) baseline
measured in the same lab, plus the CPU time the agents / UDP forwarders spent per GB
received (the bytes iperf3's receiver counted).

``run(out_dir)`` writes ``flannel.md`` (Markdown table) and ``flannel.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.measure import cpu_per_gb, iperf3, process_cpu_seconds, rtt
from knetlab.topologies.schema import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
SECONDS = 4  # per iperf3 run
PORT = 5211
FIELDS = ["backend", "host_gbps", "pod_gbps", "host_rtt_ms", "pod_rtt_ms", "pod_bytes",
          "daemon_cpu_s_per_gb"]


def bench_one(topology: Path, name: str, tmp: Path) -> dict[str, Any]:
    spec = load_topology(topology)
    spec.name = f"fl-bench-{name}"
    with Cluster(spec) as c:
        n1, n2 = c.node("node-1"), c.node("node-2")
        p1, p2 = c.pod("pod-1-0"), c.pod("pod-2-0")
        assert c.backend is not None
        daemons = [d.pid for t in (c.backend.agents, c.backend.forwarders)
                   for d in t.values()]
        pidfile = tmp / "iperf3.pid"
        host = iperf3(n2.netns, n2.node_ip, n1.netns, PORT, pidfile, SECONDS)
        cpu0 = sum(process_cpu_seconds(p) for p in daemons)
        pod = iperf3(p2.netns, p2.ip, p1.netns, PORT, pidfile, SECONDS)
        cpu = sum(process_cpu_seconds(p) for p in daemons) - cpu0
        received = pod.bytes
        return {"backend": name, "host_gbps": round(host.gbps, 2),
                "pod_gbps": round(pod.gbps, 2),
                "host_rtt_ms": rtt(n1.netns, n2.node_ip), "pod_rtt_ms": rtt(p1.netns, p2.ip),
                "pod_bytes": received, "daemon_cpu_s_per_gb": cpu_per_gb(cpu, received)}


def run(out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    hostgw = out_dir / "fl-bench-hostgw.yaml"
    hostgw.write_text("name: fl-bench-host-gw\ndataplane: host-gw\nnodes: {count: 2}\n"
                      "pods: {perNode: 1}\n")
    cases = [("host-gw", hostgw), ("vxlan", TOPOLOGIES / "flannel-vxlan.yaml"),
             ("udp", TOPOLOGIES / "flannel-udp.yaml")]
    rows = []
    for name, path in cases:
        try:
            rows.append(bench_one(path, name, out_dir))
        except Exception as exc:  # noqa: BLE001 - one backend failing must not hide the rest
            rows.append({"backend": name, "host_gbps": None, "pod_gbps": None,
                         "host_rtt_ms": None, "pod_rtt_ms": None, "pod_bytes": None,
                         "daemon_cpu_s_per_gb": None,
                         "error": str(exc)[:200]})
    write_csv(out_dir / "flannel.csv", rows, [*FIELDS, "error"])
    md = ["## flannel data planes (iperf3 TCP, one stream, pod to pod across nodes)", "",
          "CPU s/GB: the agents' and forwarders' CPU time during the pod-to-pod run, divided "
          "by the bytes iperf3's receiver counted (GB = 1e9 bytes).", "",
          "| backend | host-to-host Gbit/s | pod-to-pod Gbit/s | host RTT ms | pod RTT ms "
          "| agent+forwarder CPU s/GB |", "|---|---|---|---|---|---|"]
    md += [f"| {r['backend']} | {r['host_gbps']} | {r['pod_gbps']} | {r['host_rtt_ms']} | "
           f"{r['pod_rtt_ms']} | {r['daemon_cpu_s_per_gb']} |"
           + (f" error: {r['error']}" if r.get("error") else "") for r in rows]
    (out_dir / "flannel.md").write_text("\n".join(md) + "\n")
    return {r["backend"]: r for r in rows}
