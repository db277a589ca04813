"""Cluster DNS numbers: queries per second and latency of knetlab's cluster DNS (unbound fed
from the API) against dnsmasq serving the same records, in the same run; where the server
core's microseconds per query go; and how long a record change takes to be served after its
EndpointSlice change.

A 2-node lab (``<KNETLAB_BENCH_LAB>-dns``, default ``bench-dns``) with ``SERVICES``
ClusterIP Services, a headless Service with ``ENDPOINTS`` endpoints and an ExternalName
Service. The reference dnsmasq gets the very records the cluster DNS serves
(``records.build_records`` over the same API objects) as ``host-record``/``srv-host``/
``cname``/``txt-record`` lines, with ``local=/<zone>/`` so it answers NXDOMAIN itself, in a
pod's namespace on the same node as the DNS pod, behind its own ClusterIP Service
(``dnsmasq-ref``, a Service without selector and a hand-written EndpointSlice): so both
servers are asked the same way, through kube-proxy's DNAT, as pods ask ``10.96.0.10``.

Both servers are pinned to CPU 0 (one core each, one at a time: unbound runs one thread,
dnsmasq is single-threaded); dnsperf is pinned to CPU 1. Clients (``PATHS``): ``pod`` a pod
on the other node asking the Service address; ``pod-direct`` the same pod asking the server
pod's own address; ``node-pod`` a pod beside the server on its node (bridged) asking the
Service address; ``local`` dnsperf in the server's own namespace (the server alone). Rounds
alternate (unbound, dnsmasq, ...) so that the machine's noise hits both alike; the table
gives the median and the best round.

CPU is read per process from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on CPU, exact,
not tick-sampled): the kernel's receive path runs in the context of whoever sent the packet
(a veth hands the packet to the receiving namespace on the sender's core), so the server's
time includes its replies' whole way to the client's socket and dnsperf's time its queries'
way to the server. Each core's busy share comes from ``/proc/stat`` over the middle of the
run. When ``perf`` is installed, one extra run per client path samples the server process
(``perf record -g -p``) and splits its microseconds per query into its user time, its own
system calls, and the network path it runs for its replies (netfilter apart).

Latency percentiles come from dnsperf ``-v`` (one line per answer) at a fixed rate. The
change latency is from the moment the PATCH of the EndpointSlice is sent (and from its
response) until the new address is in an answer (a UDP query loop in the client pod).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from knetlab.addons.dns import ClusterDNS
from knetlab.addons.dns.probe import query, udp_socket
from knetlab.addons.dns.records import ZoneConfig, build_records
from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.kube.client import KubeClient

LAB = f"{os.environ.get('KNETLAB_BENCH_LAB', 'bench')}-dns"
TOPO = f"""name: {LAB}
dataplane: host-gw
nodes: {{count: 2}}
pods: {{perNode: 2}}
"""
SERVICES = 200
ENDPOINTS = 20
ROUNDS = 3
SECONDS = 6
CHANGES = 50
PATHS = ("pod", "pod-direct", "node-pod", "local")  # where dnsperf runs (module doc)
SPLIT_PATHS = ("local", "node-pod", "pod")          # perf split of the server's core
LATENCY_QPS = 2000  # a fixed rate well below both servers' capacity, for percentiles
SERVER_CPU, CLIENT_CPU = "0", "1"
DNSPERF_ARGS = ["-c", "4", "-q", "400", "-t", "2"]  # 4 sockets, 400 outstanding, 1 thread
UNBOUND, DNSMASQ = "knetlab (unbound)", "dnsmasq"
REF_SERVICE = "dnsmasq-ref"


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


def _reference_service(api: KubeClient, ip: str) -> str:
    """A ClusterIP Service (no selector) whose one endpoint is the dnsmasq pod; its IP."""
    svc = api.create("services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": REF_SERVICE, "namespace": "default"},
        "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}})
    api.create("endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{REF_SERVICE}-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": REF_SERVICE}},
        "addressType": "IPv4", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]})
    return str(svc["spec"]["clusterIP"])


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


# -- CPU accounting ------------------------------------------------------------------------
def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of all threads of a process (schedstat: exact, where utime and
    stime are 4 ms tick samples); softirqs run in its context are included (this kernel
    has no IRQ time accounting, so they are charged to the interrupted task)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _ticks(pid: int) -> tuple[int, int]:
    """utime, stime (ticks) of a process: only their ratio is used (user share)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _core_jiffies() -> dict[str, tuple[int, int]]:
    """busy, total jiffies of the two cores the bench pins to."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name in (f"cpu{SERVER_CPU}", f"cpu{CLIENT_CPU}"):
            v = [int(x) for x in vals[:8]]
            out[name] = (sum(v) - v[3] - v[4], sum(v))  # minus idle and iowait
    return out


def _busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], cpu: str
          ) -> float:
    name = f"cpu{cpu}"
    total = after[name][1] - before[name][1]
    return round(100 * (after[name][0] - before[name][0]) / total) if total else 0.0


# -- dnsperf --------------------------------------------------------------------------------
def _dnsperf_argv(netns: str, server: str, qfile: Path, seconds: int, extra: list[str]
                  ) -> list[str]:
    return ["nsenter", f"--net={netns}", "taskset", "-c", CLIENT_CPU, "dnsperf", "-s", server,
            "-d", str(qfile), "-l", str(seconds), *DNSPERF_ARGS, *extra]


def _dnsperf(netns: str, server: str, qfile: Path, seconds: int, extra: list[str]) -> str:
    return subprocess.run(_dnsperf_argv(netns, server, qfile, seconds, extra),
                          capture_output=True, text=True, timeout=seconds + 60).stdout


def _qps(text: str) -> tuple[float, float, float, int]:
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1))  # type: ignore
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", text).group(1))  # type: ignore
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", text).group(1))  # type: ignore
    done = int(re.search(r"Queries completed:\s+(\d+)", text).group(1))  # type: ignore
    return qps, lost, avg * 1000, done


def measure(netns: str, server: str, server_pid: int, qfile: Path) -> dict[str, Any]:
    """One dnsperf run: rate, loss, and the CPU both sides spent per answered query."""
    ticks0, srv0 = _ticks(server_pid), cpu_ns(server_pid)
    proc = subprocess.Popen(_dnsperf_argv(netns, server, qfile, SECONDS, []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # nsenter and taskset exec, so this pid becomes dnsperf: its own CPU time is the client's
    time.sleep(1)
    cores0 = _core_jiffies()
    time.sleep(SECONDS - 2)  # the middle of the run: both cores' share while it runs
    cores1 = _core_jiffies()
    client = cpu_ns(proc.pid)
    text, _ = proc.communicate(timeout=SECONDS + 60)
    ticks1, srv1 = _ticks(server_pid), cpu_ns(server_pid)
    qps, lost, avg, done = _qps(text)
    srv_us = (srv1 - srv0) / 1e3 / done if done else float("nan")
    du, ds = ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]
    return {"qps": round(qps), "lost_pct": lost, "avg_ms": round(avg, 3),
            "cpu_us_per_query": round(srv_us, 2),
            "user_us_per_query": round(srv_us * du / (du + ds), 2) if du + ds else 0.0,
            "qps_per_core": round(1e6 / srv_us) if srv_us else 0,
            "client_us_per_query": round(client / 1e3 / done, 2) if done else float("nan"),
            f"cpu{SERVER_CPU}_busy_pct": _busy(cores0, cores1, SERVER_CPU),
            f"cpu{CLIENT_CPU}_busy_pct": _busy(cores0, cores1, CLIENT_CPU)}


# -- where the server core's time goes (perf) -----------------------------------------------
NETFILTER = re.compile(
    r"^(nf_|__nf_|ipv4_conntrack|hash_conntrack|ipt_|iptable_|xt_|conntrack_mt|comment_mt|"
    r"mark_mt|nft_|__nft|br_nf|setup_pre_routing|ip_sabotage|l4proto_manip|"
    r"__xfrm_decode_session|skb_ext_add)")
SOFTIRQ = ("net_rx_action", "process_backlog")
WAKEUP = ("sock_def_readable", "try_to_wake_up", "__wake_up_sync_key")
SYSCALLS = (("__sys_sendto", "send"), ("__sys_sendmsg", "send"), ("__sys_recvfrom", "receive"),
            ("__sys_recvmsg", "receive"), ("do_epoll_wait", "wait"), ("do_sys_poll", "wait"),
            ("do_select", "wait"))
SPLIT = ("user", "syscall: receive", "syscall: send", "syscall: wait", "kernel: other",
         "path: netfilter", "path: wake the client", "path: forwarding")


def classify(stack: list[str]) -> str:
    """The share a sample (leaf first; user frames prefixed ``[u]``) belongs to: the
    server's user code, its own system calls (up to its reply leaving its socket and
    device), or the network path its reply takes in the softirq run in its context:
    netfilter (conntrack, NAT, iptables, nftables, br_netfilter), waking the client up,
    and the rest of forwarding (veth, bridge, routing, IP and UDP receive)."""
    if not stack or stack[0].startswith("[u]"):
        return "user"
    frames = set(stack)
    if frames.intersection(SOFTIRQ):
        if frames.intersection(WAKEUP):
            return "path: wake the client"
        return "path: netfilter" if NETFILTER.match(stack[0]) else "path: forwarding"
    for func, name in SYSCALLS:
        if func in frames:
            return f"syscall: {name}"
    return "kernel: other"


def split_samples(script: str) -> Counter[str]:
    """Count ``perf script -F comm,ip,sym,dso`` samples by ``classify``."""
    counts: Counter[str] = Counter()
    stack: list[str] = []
    for line in script.splitlines() + [""]:
        if not line.strip():
            if stack:
                counts[classify(stack)] += 1
            stack = []
        elif line[0] in " \t":
            parts = line.split()
            if len(parts) >= 2:
                sym = parts[1].split("+")[0]
                stack.append(sym if "kernel.kallsyms" in line else f"[u]{sym}")
    return counts


def profile(netns: str, server: str, server_pid: int, qfile: Path, tmp: Path
            ) -> Counter[str]:
    """Sample the server process (cpu-clock, call graphs) during one dnsperf run."""
    data = tmp / "perf.data"
    proc = subprocess.Popen(_dnsperf_argv(netns, server, qfile, SECONDS, []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g",
                    "-p", str(server_pid), "-o", str(data), "--", "sleep", str(SECONDS - 2)],
                   capture_output=True, timeout=SECONDS + 30)
    proc.wait(SECONDS + 60)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym,dso"],
                            capture_output=True, text=True, timeout=120).stdout
    return split_samples(script)


# -- record change latency ------------------------------------------------------------------
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


def _change_latency(api: KubeClient, netns: str, dns_ip: str, zone: str
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


def _wait_answer(sock: Any, ip: str, name: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while not query(sock, ip, name)[1]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {name} not answered at {ip} within 60 s")
        time.sleep(0.05)


def run(out_dir: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dnsbench-"))
    topo = tmp / "dnsbench.yaml"
    topo.write_text(TOPO)
    c = Cluster.load(topo)
    dnsmasq: subprocess.Popen[bytes] | None = None
    splits: dict[str, Counter[str]] = {}
    try:
        c.up()
        assert c.control is not None
        api = c.control.client
        addon = next(a for a in c.addons if isinstance(a, ClusterDNS))
        dns_pod_ip = addon.wait_ready()[0]
        kube_dns = c.control.cluster_dns  # 10.96.0.10: what every pod's resolv.conf names
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
        ref_ip = _reference_service(api, server_pod.ip)
        sock = udp_socket(client_ns)
        _wait_answer(sock, kube_dns, f"svc-{SERVICES - 1}.default.svc.{zone}",
                     "every object reached the DNS pod")
        qfile = tmp / "queries.txt"
        qfile.write_text("\n".join(_queries(api, zone)) + "\n")

        # the reference: dnsmasq with the same records, pinned like unbound
        cfg = ZoneConfig(domain=zone, dns_ip=kube_dns,
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
        # (service address, pod address) of each server
        servers = {UNBOUND: (kube_dns, dns_pod_ip), DNSMASQ: (ref_ip, server_pod.ip)}
        _wait_answer(sock, ref_ip, f"svc-1.default.svc.{zone}", "kube-proxy's rules to dnsmasq")
        for svc_ip, pod_ip in servers.values():  # both answer the same, both ways
            for ip in (svc_ip, pod_ip):
                assert query(sock, ip, f"svc-1.default.svc.{zone}")[0] == "NOERROR"
                assert query(sock, ip, f"nope.default.svc.{zone}")[0] == "NXDOMAIN"

        own_ns = {UNBOUND: f"/proc/{dns_pod_pid(c, dns_pod)}/ns/net",
                  DNSMASQ: f"/proc/{server_pod.pid}/ns/net"}
        server_pid = {UNBOUND: unbound[0], DNSMASQ: dnsmasq.pid}

        def client(path: str, name: str) -> tuple[str, str]:
            svc_ip, pod_ip = servers[name]
            return {"pod": (client_ns, svc_ip), "pod-direct": (client_ns, pod_ip),
                    "node-pod": (f"/proc/{neighbour.pid}/ns/net", svc_ip),
                    "local": (own_ns[name], pod_ip)}[path]

        rows: list[dict[str, Any]] = []
        for rnd in range(ROUNDS):
            for path in PATHS:
                for name in servers:
                    netns, ip = client(path, name)
                    rows.append({"round": rnd + 1, "client": path, "server": name, "to": ip,
                                 **measure(netns, ip, server_pid[name], qfile)})
                    print(rows[-1], flush=True)
        if shutil.which("perf"):
            for path in SPLIT_PATHS:
                splits[path] = profile(*client(path, UNBOUND), server_pid[UNBOUND], qfile, tmp)
        lat: dict[str, list[float]] = {}
        for name in servers:
            lat[name] = _latencies(_dnsperf(client_ns, servers[name][0], qfile, 3,
                                            ["-Q", str(LATENCY_QPS), "-v"]))
        from_send, from_reply = _change_latency(api, client_ns, kube_dns, zone)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(5)
        c.down()

    write_csv(out_dir / "dns_qps.csv", rows)
    summary = _summary(rows, lat)
    split_rows = _split_rows(rows, splits)
    change = {"changes": CHANGES,
              "p50_ms_from_send": round(_pct(from_send, 0.5), 1),
              "p99_ms_from_send": round(_pct(from_send, 0.99), 1),
              "max_ms_from_send": round(from_send[-1], 1),
              "p50_ms_after_reply": round(_pct(from_reply, 0.5), 1),
              "p99_ms_after_reply": round(_pct(from_reply, 0.99), 1)}
    write_csv(out_dir / "dns_summary.csv", summary)
    if split_rows:
        write_csv(out_dir / "dns_cpu_split.csv", split_rows)
    (out_dir / "dns.md").write_text(_report(summary, split_rows, change))
    return {"qps": rows, "summary": summary, "cpu_split": split_rows, "change": change}


def _summary(rows: list[dict[str, Any]], lat: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for name in (UNBOUND, DNSMASQ):
        for path in PATHS:
            mine = [r for r in rows if r["server"] == name and r["client"] == path]

            def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
                return statistics.median(r[key] for r in mine)
            us = med("cpu_us_per_query")
            out.append({"server": name, "client": path, "to": mine[0]["to"],
                        "qps_median": round(med("qps")), "qps_best": max(r["qps"] for r in mine),
                        "cpu_us_per_query": round(us, 2),
                        "user_us_per_query": round(med("user_us_per_query"), 2),
                        "qps_per_core": round(1e6 / us) if us else 0,
                        "client_us_per_query": round(med("client_us_per_query"), 2),
                        "cpu_us_both_sides": round(us + med("client_us_per_query"), 2),
                        "server_core_busy_pct": round(med(f"cpu{SERVER_CPU}_busy_pct")),
                        "client_core_busy_pct": round(med(f"cpu{CLIENT_CPU}_busy_pct")),
                        "lost_pct": med("lost_pct"),
                        "p50_ms": round(_pct(lat[name], 0.5), 3) if path == "pod" else "",
                        "p99_ms": round(_pct(lat[name], 0.99), 3) if path == "pod" else ""})
    return out


def _split_rows(rows: list[dict[str, Any]], splits: dict[str, Counter[str]]
                ) -> list[dict[str, Any]]:
    """The perf shares times the median measured us/query of that client path."""
    out = []
    for path, counts in splits.items():
        total = sum(counts.values())
        us = statistics.median(r["cpu_us_per_query"] for r in rows
                               if r["server"] == UNBOUND and r["client"] == path)
        if total:
            out.append({"client": path, "samples": total, "cpu_us_per_query": us,
                        **{k: round(us * counts[k] / total, 2) for k in SPLIT}})
    return out


def _report(summary: list[dict[str, Any]], split_rows: list[dict[str, Any]],
            change: dict[str, Any]) -> str:
    md = ["## Cluster DNS", "",
          f"dnsperf ({SECONDS} s x {ROUNDS} rounds, `{' '.join(DNSPERF_ARGS)}`) pinned to CPU "
          f"{CLIENT_CPU}; each server pinned to CPU {SERVER_CPU}; {SERVICES} Services, a "
          f"headless Service with {ENDPOINTS} endpoints; load average at the end: "
          f"{os.getloadavg()[0]:.1f}.", "",
          "Clients: `pod` a pod on the other node asking the Service address (unbound: "
          "kube-dns 10.96.0.10; dnsmasq: its own ClusterIP Service), `pod-direct` the same pod "
          "asking the server pod's address, `node-pod` a pod on the server's node asking the "
          "Service address, `local` the server's own namespace. `server us/q`: the server "
          "process's CPU per answered query (schedstat; the softirq work its replies cause on "
          "their way to the client included; user part in brackets), `qps/core` = 1 s / that; "
          "`client us/q` the same for dnsperf; busy: each core's share in the middle of the "
          f"run. Latency percentiles at a fixed {LATENCY_QPS} qps from the `pod` client.", "",
          "| server | client | qps (median / best) | server us/q (user) | qps/core | "
          "client us/q | both us/q | CPU0 / CPU1 busy | p50 / p99 ms |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {s['server']} | {s['client']} | {s['qps_median']} / {s['qps_best']} | "
           f"{s['cpu_us_per_query']} ({s['user_us_per_query']}) | {s['qps_per_core']} | "
           f"{s['client_us_per_query']} | {s['cpu_us_both_sides']} | "
           f"{s['server_core_busy_pct']}% / {s['client_core_busy_pct']}% | "
           f"{_latency_cell(s)} |" for s in summary]
    if split_rows:
        md += ["", "Where unbound's core time goes (us per query; `perf record -g` on the "
               "server process, shares times the measured us/query):", "",
               "| client | " + " | ".join(SPLIT) + " | total |",
               "|---|" + "---|" * (len(SPLIT) + 1)]
        md += [f"| {r['client']} | " + " | ".join(str(r[k]) for k in SPLIT)
               + f" | {r['cpu_us_per_query']} |" for r in split_rows]
    md += ["", f"Record change served after the EndpointSlice PATCH ({CHANGES} changes): "
           f"p50 {change['p50_ms_from_send']} ms, p99 {change['p99_ms_from_send']} ms, max "
           f"{change['max_ms_from_send']} ms from the request; p50 "
           f"{change['p50_ms_after_reply']} ms after the API's reply.", ""]
    return "\n".join(md)


def _latency_cell(s: dict[str, Any]) -> str:
    return f"{s['p50_ms']} / {s['p99_ms']}" if s["p50_ms"] != "" else "-"


def dns_pod_pid(c: Cluster, pod: dict[str, Any]) -> int:
    from knetlab.kube.runtime import sandbox_pid
    return sandbox_pid(c.rundir, pod)


if __name__ == "__main__":
    import json
    import sys
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(out.resolve()), indent=2))
