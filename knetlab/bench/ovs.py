"""OVS overlays benchmark: iperf3 TCP throughput and RTT of ovs-vxlan and ovs-gre pod to pod
across two nodes, beside the host baseline (node to node) measured in the same run; OVS
start time and memory per node; controller flow-programming latency for 100 pods.

The 100 pods are registered in the store the way the ``ovs`` CNI plugin registers pods;
the latency is from that write until every switch acknowledged (barrier) the new flow set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.topologies.schema import load_topology

PLANES = ["ovs-vxlan", "ovs-gre"]
IPERF_SECONDS = 4
PING_COUNT = 20
PODS_FOR_FLOWS = 100


def _iperf(client: Any, server: Any, ip: str) -> float:
    """Gbit/s of one time-limited TCP stream from client to server (``ip``).

    Up to three tries, each with a fresh one-off server: iperf3 can exit 0 with only an
    "error" in its JSON (seen once in a full `make bench` run), and a failed try may
    have used up the ``-s -1`` server."""
    problem = ""
    for _attempt in range(3):
        srv = server.popen(["iperf3", "-s", "-1"])
        try:
            deadline = time.monotonic() + 5
            while True:
                res = client.run(["iperf3", "-c", ip, "-t", str(IPERF_SECONDS), "-J",
                                  "--connect-timeout", "1000"], check=False,
                                 timeout=IPERF_SECONDS + 20)
                if res.ok or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            try:
                end = json.loads(res.stdout)["end"]
                return end["sum_received"]["bits_per_second"] / 1e9
            except (ValueError, KeyError):
                problem = (res.stderr or res.stdout).strip()[-300:]
        finally:
            srv.kill()
            srv.wait()
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 to {ip} failed three times: {problem}")


def _rtt_ms(client: Any, ip: str) -> float:
    out = client.run(["ping", "-q", "-c", str(PING_COUNT), "-i", "0.05", ip], timeout=30).stdout
    return float(out.rsplit("=", 1)[1].split("/")[1])  # rtt min/avg/max/mdev = a/b/c/d ms


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
    for i in range(PODS_FOR_FLOWS):
        ip = f"{prefix}.{base + 100 + i}"
        c.store.put(f"ovs/pods/bench-{i}", {"name": f"bench-{i}", "node": "node-1", "ip": ip})
    written = time.monotonic() - t0
    c.backend.wait_programmed(timeout=60)
    added = time.monotonic() - t0
    t1 = time.monotonic()
    for i in range(PODS_FOR_FLOWS):
        c.store.delete(f"ovs/pods/bench-{i}")
    c.backend.wait_programmed(timeout=60)
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
        row: dict[str, Any] = {
            "plane": plane,
            "host_gbps": round(_iperf(n1, n2, n2.node_ip), 2),
            "pod_gbps": round(_iperf(a, b, b.ip), 2),
            "host_rtt_ms": round(_rtt_ms(n1, n2.node_ip), 3),
            "pod_rtt_ms": round(_rtt_ms(a, b.ip), 3),
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
