"""Docker networking numbers: container network start time, and published-port connect
latency and throughput against the direct container IP, in the same run.

A 3-node lab (``dkbench``); containers on node-1's ``docker0``. Paths compared:
``direct`` (node-1 -> container IP, no NAT), ``published-node`` (node-1 -> its own
node IP, OUTPUT DNAT), ``published-remote`` (node-2 -> node-1 IP, PREROUTING DNAT) and
``loopback-proxy`` (node-1 -> 127.0.0.1, the userland proxy). Writes docker.md and CSVs.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.measure import iperf3_client
from knetlab.topologies.schema import load_topology

TOPO = """name: dkbench
podCIDR: 10.244.0.0/16
serviceCIDR: 10.96.0.0/12
dataplane: host-gw
switch: linuxbridge
underlay: {type: segment, cidr: 192.168.0.0/24}
nodes: {count: 3}
pods: {perNode: 0}
"""
ACCEPTOR = ("import socket\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('',80));s.listen(512)\n"
            "while 1: s.accept()[0].close()")
CONNECTS = 300
PROBE = """import socket,sys,time,json
ip,port,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]);out=[]
for _ in range(n):
    t=time.perf_counter();s=socket.create_connection((ip,port),timeout=2)
    out.append((time.perf_counter()-t)*1e6);s.close()
print(json.dumps(out))"""


def _start_times(c: Cluster, n: int = 10) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        c.docker("node-1", ["run", "-d", "--name", f"st{i}", "-p", f"{7000 + i}:80", "img",
                            "sleep", "infinity"])
        out.append((time.perf_counter() - t) * 1000)
    for i in range(n):
        c.docker("node-1", ["rm", "-f", f"st{i}"])
    return out


def _connect_us(host: Any, ip: str, port: int) -> list[float]:
    host.run([sys.executable, "-c", PROBE, ip, str(port), "30"])  # warm caches, conntrack
    res = host.run([sys.executable, "-c", PROBE, ip, str(port), str(CONNECTS)], timeout=60)
    return json.loads(res.stdout)


def _gbits(host: Any, ip: str, port: int) -> float:
    return iperf3_client(host.netns, ip, port, 2).gbps


def _paths(c: Cluster, cip: str) -> dict[str, tuple[Any, str, int, int]]:
    n1, n2 = c.node("node-1"), c.node("node-2")
    return {"direct": (n1, cip, 80, 5201),
            "published-node": (n1, n1.node_ip, 8080, 5201 + 10000),
            "published-remote": (n2, n1.node_ip, 8080, 5201 + 10000),
            "loopback-proxy": (n1, "127.0.0.1", 8081, 5202 + 10000)}


def run(out_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dkbench.yaml").write_text(TOPO)
        c = Cluster(load_topology(Path(tmp) / "dkbench.yaml"))
        with c:
            return _measure(c, out_dir)


def _measure(c: Cluster, out_dir: Path) -> dict[str, Any]:
    starts = _start_times(c)
    c.docker("node-1", ["run", "-d", "--name", "acc", "-p", "8080:80", "-p", "127.0.0.1:8081:80",
                        "img", sys.executable, "-c", ACCEPTOR])
    c.docker("node-1", ["run", "-d", "--name", "perf", "-p", "15201:5201",
                        "-p", "127.0.0.1:15202:5201", "iperf3", "iperf3", "-s"])
    acc_ip = c.host("acc").run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()[3]
    perf_ip = c.host("perf").run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()[3]
    rows = []
    for name, (host, ip, port, pport) in _paths(c, acc_ip.split("/")[0]).items():
        lat = _connect_us(host, ip, port)
        target = perf_ip.split("/")[0] if name == "direct" else ip
        rows.append({"path": name, "connect_p50_us": round(statistics.median(lat), 1),
                     "connect_p90_us": round(sorted(lat)[int(len(lat) * 0.9)], 1),
                     "gbit_s": round(_gbits(host, target, pport), 2)})
    return _write(out_dir, starts, rows)


def _write(out_dir: Path, starts: list[float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    write_csv(out_dir / "docker.csv", rows)
    (out_dir / "docker-start.csv").write_text(
        "run,ms\n" + "".join(f"{i},{t:.1f}\n" for i, t in enumerate(starts)))
    md = ["## Docker networking (knetlab docker)", "",
          f"Container start, network part (`docker run -d -p` of `sleep`, sandbox + veth + "
          f"rules + process), {len(starts)} runs: median {statistics.median(starts):.0f} ms, "
          f"max {max(starts):.0f} ms.", "",
          "| path | connect p50 (us) | connect p90 (us) | iperf3 Gbit/s |",
          "|---|---|---|---|"]
    md += [f"| {r['path']} | {r['connect_p50_us']} | {r['connect_p90_us']} | {r['gbit_s']} |"
           for r in rows]
    md += ["", f"{CONNECTS} TCP connects per path; iperf3 2 s; noisy 2-vCPU VM. The proxy's "
           "connect time is the handshake with the proxy itself (it dials the container "
           "after accepting), hence lower; its throughput pays two copies through Python.",
           ""]
    (out_dir / "docker.md").write_text("\n".join(md))
    return {"start_ms_median": round(statistics.median(starts), 1), "paths": rows}
