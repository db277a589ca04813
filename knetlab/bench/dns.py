"""Cluster DNS numbers: queries per second and latency of knetlab's cluster DNS (unbound fed
from the API) against dnsmasq serving the same records, in the same run; and how long a
record change takes to be served after its EndpointSlice change.

A 2-node lab (``dnsbench``) with ``SERVICES`` ClusterIP Services, a headless Service with
``ENDPOINTS`` endpoints and an ExternalName Service. The reference dnsmasq gets the very
records the cluster DNS serves (``records.build_records`` over the same API objects) as
``host-record``/``srv-host``/``cname``/``txt-record`` lines, with ``local=/<zone>/`` so it
answers NXDOMAIN itself, in a pod's namespace on the same node as the DNS pod.

Both servers are pinned to CPU 0 (one core each, one at a time: unbound runs one thread,
dnsmasq is single-threaded); dnsperf runs in a pod on the other node pinned to CPU 1.
Rounds alternate (unbound, dnsmasq, unbound, dnsmasq, ...) so that the machine's noise hits
both alike; the table gives the median and the best round. Latency percentiles come from
dnsperf ``-v`` (one line per answer) at a fixed rate. The change latency is from the
moment the PATCH of the EndpointSlice is sent (and from its response) until the new
address is in an answer (a UDP query loop in the client pod, no exec per query).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from knetlab.addons.dns import ClusterDNS
from knetlab.addons.dns.probe import query, udp_socket
from knetlab.addons.dns.records import ZoneConfig, build_records
from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.kube.client import KubeClient
from knetlab.measure import process_cpu_seconds

TOPO = """name: dnsbench
dataplane: host-gw
nodes: {count: 2}
pods: {perNode: 2}
"""
SERVICES = 200
ENDPOINTS = 20
ROUNDS = 3
SECONDS = 8
CHANGES = 50
PATHS = ("pod", "node-pod", "local")  # where dnsperf runs (see the report's text)
LATENCY_QPS = 2000  # a fixed rate well below both servers' capacity, for percentiles
SERVER_CPU, CLIENT_CPU = "0", "1"


def _objects(api: KubeClient) -> None:
    for i in range(SERVICES):
        api.create("services", {"apiVersion": "v1", "kind": "Service",
                                "metadata": {"name": f"svc-{i}", "namespace": "default"},
                                "spec": {"ports": [{"name": "http", "port": 80}]}})
    api.create("services", {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "hl", "namespace": "default"},
                            "spec": {"clusterIP": "None",
                                     "ports": [{"name": "http", "port": 80}]}})
    api.create("endpointslices", _slice("hl", [f"10.244.100.{i + 1}" for i in range(ENDPOINTS)]))
    api.create("services", {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "ext", "namespace": "default"},
                            "spec": {"type": "ExternalName", "externalName": "www.example.lab"}})


def _slice(svc: str, ips: list[str], name: str = "") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "hostname": f"h{n}",
                           "conditions": {"ready": True}} for n, ip in enumerate(ips)]}


def _queries(api: KubeClient, zone: str) -> list[str]:
    """A mix as pods ask: mostly A of Services (and search-path misses: NXDOMAIN)."""
    out = []
    for svc in api.list("services", "default")["items"]:
        name = svc["metadata"]["name"]
        out.append(f"{name}.default.svc.{zone} A")
        out.append(f"{name}.default.default.svc.{zone} A")  # ndots:5 search miss
    out += [f"_http._tcp.svc-{i}.default.svc.{zone} SRV" for i in range(0, SERVICES, 10)]
    out += [f"h{i}.hl.default.svc.{zone} A" for i in range(ENDPOINTS)]
    out += [f"dns-version.{zone} TXT"]
    return out


def dnsmasq_conf(records: dict[str, frozenset[str]], zone: str) -> str:
    """The same records as dnsmasq configuration lines (PTRs come with host-record)."""
    lines = ["no-resolv", "no-hosts", "user=root", "bind-interfaces", f"local=/{zone}/",
             "local=/in-addr.arpa/", "cache-size=10000"]
    hosts: dict[str, list[str]] = {}
    for rrs in records.values():
        for rr in rrs:
            name, _, _, rtype, rdata = rr.split(" ", 4)
            name = name.rstrip(".")
            if rtype == "A":
                hosts.setdefault(name, []).append(rdata)
            elif rtype == "SRV":
                prio, weight, port, target = rdata.split()
                lines.append(f"srv-host={name},{target.rstrip('.')},{port},{prio},{weight}")
            elif rtype == "CNAME":
                lines.append(f"cname={name},{rdata.rstrip('.')}")
            elif rtype == "TXT":
                lines.append(f"txt-record={name},{rdata.strip(chr(34))}")
    lines += [f"host-record={name},{','.join(ips)}" for name, ips in sorted(hosts.items())]
    return "\n".join(lines) + "\n"


def _netns_pids(netns_of: int, comm: str) -> list[int]:
    want = os.readlink(f"/proc/{netns_of}/ns/net")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if (Path(f"/proc/{entry}/comm").read_text().strip() == comm
                    and os.readlink(f"/proc/{entry}/ns/net") == want):
                out.append(int(entry))
        except OSError:
            continue
    return out


def _dnsperf(netns: str, server: str, qfile: Path, seconds: int, extra: list[str]) -> str:
    argv = ["nsenter", f"--net={netns}", "taskset", "-c", CLIENT_CPU, "dnsperf", "-s", server,
            "-d", str(qfile), "-l", str(seconds), "-c", "4", "-q", "400", "-t", "2", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (the server's own work, which
    other processes competing for the core do not inflate)."""
    return process_cpu_seconds(pid)


def _qps(text: str) -> tuple[float, float, float]:
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1))  # type: ignore
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", text).group(1))  # type: ignore
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", text).group(1))  # type: ignore
    return qps, lost, avg * 1000


def _latencies(text: str) -> list[float]:
    """Per-answer latencies (ms) of ``dnsperf -v`` lines (``> NOERROR name A 0.000227``);
    a lost query (``> T name A``) counts as the timeout."""
    out = []
    for line in text.splitlines():
        if line.startswith("> "):
            last = line.split()[-1]
            out.append(float(last) * 1000 if re.fullmatch(r"[\d.]+", last) else 2000.0)
    return sorted(out)


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def _change_latency(c: Cluster, api: KubeClient, netns: str, dns_ip: str, zone: str
                    ) -> tuple[list[float], list[float]]:
    api.create("services", {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "late", "namespace": "default"},
                            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    api.create("endpointslices", _slice("late", [], "late-1"))
    sock = udp_socket(netns)
    from_send, from_reply = [], []
    for i in range(CHANGES):
        ip = f"10.244.201.{i + 1}"
        t0 = time.perf_counter()
        api.patch("endpointslices", "late-1", {"endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}}]}, "default")
        t1 = time.perf_counter()
        while ip not in query(sock, dns_ip, f"late.default.svc.{zone}")[1]:
            if time.perf_counter() - t0 > 5:
                raise RuntimeError(f"{ip} not served within 5 s")
        t2 = time.perf_counter()
        from_send.append((t2 - t0) * 1000)
        from_reply.append((t2 - t1) * 1000)
    return sorted(from_send), sorted(from_reply)


def run(out_dir: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dnsbench-"))
    topo = tmp / "dnsbench.yaml"
    topo.write_text(TOPO)
    c = Cluster.load(topo)
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        c.up()
        assert c.control is not None
        api = c.control.client
        addon = next(a for a in c.addons if isinstance(a, ClusterDNS))
        dns_ip = addon.wait_ready()[0]
        zone = c.spec.dns_domain
        dns_pod = addon.pods()[0]
        dns_node = dns_pod["spec"]["nodeName"]
        server_pod = next(p for p in c.pods.values() if p.node_name == dns_node)
        # a pod beside the DNS pod on its node: bridged, no route to cross
        neighbour = next(p for p in c.pods.values()
                         if p.node_name == dns_node and p is not server_pod)
        client_pod = next(p for p in c.pods.values() if p.node_name != dns_node)
        client_ns = f"/proc/{client_pod.pid}/ns/net"

        _objects(api)
        sock = udp_socket(client_ns)
        last = f"svc-{SERVICES - 1}.default.svc.{zone}"
        deadline = time.monotonic() + 60
        while not query(sock, dns_ip, last)[1]:  # every object reached the DNS pod
            if time.monotonic() > deadline:
                raise RuntimeError(f"{last} not served within 60 s")
            time.sleep(0.05)
        qfile = tmp / "queries.txt"
        qfile.write_text("\n".join(_queries(api, zone)) + "\n")

        # the reference: dnsmasq with the same records, pinned like unbound
        cfg = ZoneConfig(domain=zone, dns_ip=c.control.cluster_dns,
                         reverse_cidrs=(str(c.spec.service_cidr), str(c.spec.pod_cidr)))
        records = build_records(cfg, api.list("services")["items"],
                                api.list("endpointslices")["items"], api.list("pods")["items"])
        conf = tmp / "dnsmasq.conf"
        conf.write_text(dnsmasq_conf(records, zone))
        dnsmasq = subprocess.Popen(
            ["nsenter", f"--net=/proc/{server_pod.pid}/ns/net", "taskset", "-c", SERVER_CPU,
             "dnsmasq", "-k", f"--conf-file={conf}", f"--listen-address={server_pod.ip}",
             "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        unbound = _netns_pids(dns_pod_pid(c, dns_pod), "unbound")
        for pid in unbound:  # every thread of unbound on the server CPU
            subprocess.run(["taskset", "-apc", SERVER_CPU, str(pid)], capture_output=True,
                           check=True)
        time.sleep(0.5)
        servers = {"knetlab (unbound)": dns_ip, "dnsmasq": server_pod.ip}
        for ip in servers.values():  # both answer the same
            assert query(sock, ip, f"svc-1.default.svc.{zone}")[0] == "NOERROR"
            assert query(sock, ip, f"nope.default.svc.{zone}")[0] == "NXDOMAIN"

        # "pod": dnsperf in a pod on the other node (the path a pod's query takes);
        # "local": dnsperf in the server's own namespace (the server's capacity alone)
        own_ns = {"knetlab (unbound)": f"/proc/{dns_pod_pid(c, dns_pod)}/ns/net",
                  "dnsmasq": f"/proc/{server_pod.pid}/ns/net"}
        server_pid = {"knetlab (unbound)": unbound[0], "dnsmasq": dnsmasq.pid}
        rows: list[dict[str, Any]] = []
        for rnd in range(ROUNDS):
            for path in PATHS:
                for name, ip in servers.items():
                    netns = {"pod": client_ns, "node-pod": f"/proc/{neighbour.pid}/ns/net"
                             }.get(path) or own_ns[name]
                    cpu0 = _cpu_seconds(server_pid[name])
                    text = _dnsperf(netns, ip, qfile, SECONDS, [])
                    cpu = _cpu_seconds(server_pid[name]) - cpu0
                    qps, lost, avg = _qps(text)
                    done = int(re.search(r"Queries completed:\s+(\d+)", text).group(1))  # type: ignore
                    us = cpu * 1e6 / done if done else float("nan")
                    rows.append({"round": rnd + 1, "client": path, "server": name,
                                 "qps": round(qps), "lost_pct": lost, "avg_ms": round(avg, 3),
                                 "cpu_us_per_query": round(us, 2),
                                 "qps_per_core": round(1e6 / us) if us else 0})
                    print(rows[-1], flush=True)
        lat: dict[str, list[float]] = {}
        for name, ip in servers.items():
            lat[name] = _latencies(_dnsperf(client_ns, ip, qfile, 3,
                                            ["-Q", str(LATENCY_QPS), "-v"]))
        from_send, from_reply = _change_latency(c, api, client_ns, dns_ip, zone)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(5)
        c.down()

    write_csv(out_dir / "dns_qps.csv", rows)
    summary = []
    for name in servers:
        pod = [r["qps"] for r in rows if r["server"] == name and r["client"] == "pod"]
        local = [r["qps"] for r in rows if r["server"] == name and r["client"] == "local"]
        near = [r["qps"] for r in rows if r["server"] == name and r["client"] == "node-pod"]
        cpu = {path: statistics.median(r["cpu_us_per_query"] for r in rows
                                       if r["server"] == name and r["client"] == path)
               for path in PATHS}
        summary.append({"server": name,
                        "cpu_us_local": round(cpu["local"], 2),
                        "qps_per_core_local": round(1e6 / cpu["local"]),
                        "cpu_us_pod": round(cpu["pod"], 2),
                        "qps_per_core_pod": round(1e6 / cpu["pod"]),
                        "cpu_us_node_pod": round(cpu["node-pod"], 2),
                        "qps_per_core_node_pod": round(1e6 / cpu["node-pod"]),
                        "qps_node_pod_median": round(statistics.median(near)),
                        "qps_node_pod_best": max(near),
                        "qps_pod_median": round(statistics.median(pod)),
                        "qps_pod_best": max(pod),
                        "qps_local_median": round(statistics.median(local)),
                        "qps_local_best": max(local),
                        "p50_ms": round(_pct(lat[name], 0.5), 3),
                        "p99_ms": round(_pct(lat[name], 0.99), 3)})
    change = {"changes": CHANGES,
              "p50_ms_from_send": round(_pct(from_send, 0.5), 1),
              "p99_ms_from_send": round(_pct(from_send, 0.99), 1),
              "max_ms_from_send": round(from_send[-1], 1),
              "p50_ms_after_reply": round(_pct(from_reply, 0.5), 1),
              "p99_ms_after_reply": round(_pct(from_reply, 0.99), 1)}
    write_csv(out_dir / "dns_summary.csv", summary)
    md = ["## Cluster DNS", "",
          f"dnsperf ({SECONDS} s x {ROUNDS} rounds, 4 clients, 400 outstanding) from a pod "
          f"pinned to CPU {CLIENT_CPU}; each server pinned to CPU {SERVER_CPU}; "
          f"{SERVICES} Services, a headless Service with {ENDPOINTS} endpoints; "
          f"load average at the end: {os.getloadavg()[0]:.1f}.", "",
          "Client `pod`: a pod on the other node (the path of a pod's query); `node pod`: "
          "a pod on the server's node (bridged); `local`: dnsperf in the server's own "
          "namespace (the server alone). Latency percentiles "
          f"at a fixed {LATENCY_QPS} qps from the pod. `CPU us/query`: the server "
          "process's own CPU time (user + system, /proc, the kernel's receive path "
          "included when it runs in the server's context) per answered query, median of "
          "the rounds; `qps/core` = 1 s / that: the rate one core sustains, which the "
          "machine's other load does not distort the way it distorts wall-clock rates.", "",
          "| server | CPU us/query local (qps/core) | CPU us/query pod (qps/core) | "
          "qps pod (median / best) | qps node pod (median / best, CPU us/query) | "
          "qps local (median / best) | p50 ms | p99 ms |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {s['server']} | {s['cpu_us_local']} ({s['qps_per_core_local']}) | "
           f"{s['cpu_us_pod']} ({s['qps_per_core_pod']}) | "
           f"{s['qps_pod_median']} / {s['qps_pod_best']} | "
           f"{s['qps_node_pod_median']} / {s['qps_node_pod_best']}, {s['cpu_us_node_pod']} | "
           f"{s['qps_local_median']} / {s['qps_local_best']} | {s['p50_ms']} | "
           f"{s['p99_ms']} |" for s in summary]
    md += ["", f"Record change served after the EndpointSlice PATCH ({CHANGES} changes): "
           f"p50 {change['p50_ms_from_send']} ms, p99 {change['p99_ms_from_send']} ms, max "
           f"{change['max_ms_from_send']} ms from the request; p50 "
           f"{change['p50_ms_after_reply']} ms after the API's reply.", ""]
    (out_dir / "dns.md").write_text("\n".join(md))
    return {"qps": rows, "summary": summary, "change": change}


def dns_pod_pid(c: Cluster, pod: dict[str, Any]) -> int:
    from knetlab.kube.runtime import sandbox_pid
    return sandbox_pid(c.rundir, pod)


if __name__ == "__main__":
    import json
    import sys
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(out.resolve()), indent=2))
