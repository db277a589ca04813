"""OVS overlays benchmark: iperf3 TCP throughput and RTT of ovs-vxlan and ovs-gre pod to pod
across two nodes, beside the host baseline (node to node) measured in the same run; OVS
start time and memory per node; controller flow-programming latency for 100 pods.

The 100 pods are registered in the store the way the ``ovs`` CNI plugin registers pods;
the latency is from that write until every switch acknowledged (barrier) the new flow set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.cni.plugins.ovs import OVS_PODS
from knetlab.measure import iperf3, rtt
from knetlab.topologies.schema import load_topology

PLANES = ["ovs-vxlan", "ovs-gre"]
IPERF_SECONDS = 4
IPERF_PORT = 5213
PING_COUNT = 20
PODS_FOR_FLOWS = 100


def _rss_kib(pid: int | None) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _flow_latency(c: Cluster) -> dict[str, float]:
    """Register PODS_FOR_FLOWS pods on node-1 at once; time until every switch holds them."""
    assert c.store and c.backend
    node = c.node("node-1")
    base = int(node.spec.pod_gateway.split(".")[-1])
    prefix = node.spec.pod_gateway.rsplit(".", 1)[0]
    t0 = time.monotonic()
    rev = 0
    for i in range(PODS_FOR_FLOWS):
        ip = f"{prefix}.{base + 100 + i}"
        rev = c.store.put(f"{OVS_PODS}bench-{i}", {"name": f"bench-{i}", "node": "node-1",
                                                   "ip": ip})
    written = time.monotonic() - t0
    c.backend.wait_programmed(timeout=60, since=rev)
    added = time.monotonic() - t0
    t1 = time.monotonic()
    for i in range(PODS_FOR_FLOWS):
        rev = c.store.delete(f"{OVS_PODS}bench-{i}")
    c.backend.wait_programmed(timeout=60, since=rev)
    return {"store_write_s": round(written, 3), "flows_100_pods_s": round(added, 3),
            "remove_100_pods_s": round(time.monotonic() - t1, 3)}


def measure(plane: str, out_dir: Path) -> dict[str, Any]:
    topo = out_dir / f"{plane}.yaml"
    topo.write_text(f"name: ovb-{plane[4:]}\ndataplane: {plane}\nunderlay:\n  type: segment\n"
                    f"  cidr: 192.168.0.0/24\nnodes: {{count: 2}}\npods: {{perNode: 1}}\n")
    c = Cluster(load_topology(topo))
    c.up()
    try:
        assert c.backend
        a, b = c.pod("pod-1-0"), c.pod("pod-2-0")
        n1, n2 = c.node("node-1"), c.node("node-2")
        sws = c.backend.switches.values()
        pidfile = out_dir / f"iperf3-{plane}.pid"
        row: dict[str, Any] = {
            "plane": plane,
            "host_gbps": round(iperf3(n2.netns, n2.node_ip, n1.netns, IPERF_PORT, pidfile,
                                      IPERF_SECONDS, tries=3).gbps, 2),
            "pod_gbps": round(iperf3(b.netns, b.ip, a.netns, IPERF_PORT, pidfile,
                                     IPERF_SECONDS, tries=3).gbps, 2),
            "host_rtt_ms": round(rtt(n1.netns, n2.node_ip, PING_COUNT, 0.05), 3),
            "pod_rtt_ms": round(rtt(a.netns, b.ip, PING_COUNT, 0.05), 3),
            "ovs_start_s": round(max(sw.start_seconds for sw in sws), 3),
            "ovs_rss_mib": round(max(_rss_kib(sw.ovs.vswitchd.pid) + _rss_kib(sw.ovs.ovsdb.pid)
                                     for sw in sws) / 1024, 1),
            "controller_rss_mib": round(_rss_kib(c.backend.controller.pid) / 1024, 1)
            if c.backend.controller else 0,
        }
        row.update(_flow_latency(c))
        row["check_ok"] = c.check().ok
    finally:
        c.down()
    return row


def run(out_dir: Path) -> dict[str, Any]:
    rows = [measure(p, out_dir) for p in PLANES]
    write_csv(out_dir / "ovs.csv", rows)
    md = ["## Open vSwitch overlays (userspace datapath, os-ken controller)", "",
          "| plane | host TCP (Gbit/s) | pod TCP (Gbit/s) | host RTT (ms) | pod RTT (ms) | "
          "OVS start (s/node) | OVS RSS (MiB/node) | controller RSS (MiB) | "
          "flows for 100 pods (s) | remove 100 pods (s) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['plane']} | {r['host_gbps']} | {r['pod_gbps']} | {r['host_rtt_ms']} | "
                  f"{r['pod_rtt_ms']} | {r['ovs_start_s']} | {r['ovs_rss_mib']} | "
                  f"{r['controller_rss_mib']} | {r['flows_100_pods_s']} | "
                  f"{r['remove_100_pods_s']} |")
    md += ["", f"2 nodes on one segment, 1 pod each; iperf3 -t {IPERF_SECONDS}, one stream; "
           f"ping -c {PING_COUNT} -i 0.05. Host = node to node over the underlay (the node IP "
           "sits on br-phy, so the host path also crosses OVS userspace). Flow latency: 100 "
           "pods registered in the store until every br-int acknowledged its flows.", ""]
    (out_dir / "ovs.md").write_text("\n".join(md))
    return {r["plane"]: r for r in rows}
