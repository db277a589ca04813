"""NetworkPolicy benchmark: programming time, first-packet latency and agent memory.

1. Programming: 1,000 synthetic pods on one node (10 namespaces), 100 or 1,000 policies,
   each selecting one pod and allowing a namespace's frontends on two ports (a named one
   too); the agent's path (``model.compute``, ``render.render``, one ``nft -f``) timed in
   a throwaway namespace.
2. First-packet latency: a routed node namespace between a client and a server namespace,
   the server selected by one policy allowing the client; TCP connect time (the SYN walks
   the policy chains, the SYN-ACK is ``ct established``) at 0, 1, 100 and 1,000 policies
   over the same 1,000 pods. Goal: flat within 20 %.
3. Agent memory: a 1-node lab, 1,000 pods (mirror pods with a status, as the topology's
   pods are shown) and 1,000 policies in the API; the real agent's RSS/PSS and its apply
   time as it reports it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.addons.netpolicy import model, render
from knetlab.bench import write_csv

NS = ["pol-bn", "pol-bc", "pol-bs"]  # node, client, server (throwaway namespaces)
CLIENT_IP, SERVER_IP = "10.244.200.2", "10.244.201.3"
PODS = 1000
CONNECTS = 1000
LEVELS = (0, 1, 100, 1000)
ROUNDS = 5

LATENCY_CLIENT = r"""
import socket, statistics, sys, time
n, ip = int(sys.argv[1]), sys.argv[2]
out = []
for _ in range(n + 100):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST: no TIME_WAIT
    t = time.perf_counter()
    s.connect((ip, 80))
    out.append(time.perf_counter() - t)
    s.close()
out = sorted(out[100:])
print(out[len(out) // 10] * 1e6, statistics.median(out) * 1e6, out[int(len(out) * 0.99)] * 1e6)
"""

SERVER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


# -- the synthetic cluster ---------------------------------------------------------------------

def synthetic(policies: int, with_client_policy: bool = True
              ) -> tuple[list[dict], list[dict], list[dict]]:
    pods, nss, pols = [], [], []
    for j in range(10):
        nss.append({"metadata": {"name": f"ns-{j}", "labels": {"team": f"t{j}"}}})
    for i in range(PODS):
        pods.append({"metadata": {"namespace": f"ns-{i % 10}", "name": f"p{i}",
                                  "labels": {"app": f"app-{i}",
                                             "role": "frontend" if i % 2 else "backend"}},
                     "spec": {"nodeName": "bench", "containers": [
                         {"ports": [{"name": "http", "containerPort": 8080}]}]},
                     "status": {"podIP": f"10.244.{1 + i // 250}.{2 + i % 250}",
                                "phase": "Running"}})
    pods.append({"metadata": {"namespace": "ns-0", "name": "client",
                              "labels": {"role": "client"}},
                 "spec": {"nodeName": "bench"},
                 "status": {"podIP": CLIENT_IP, "phase": "Running"}})
    pods.append({"metadata": {"namespace": "ns-0", "name": "server",
                              "labels": {"app": "server"}},
                 "spec": {"nodeName": "bench"},
                 "status": {"podIP": SERVER_IP, "phase": "Running"}})
    if with_client_policy:
        pols.append({"metadata": {"namespace": "ns-0", "name": "allow-client"}, "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"port": 80}]}]}})
    for k in range(policies - len(pols)):
        pols.append({"metadata": {"namespace": f"ns-{k % 10}", "name": f"pol-{k}"}, "spec": {
            "podSelector": {"matchLabels": {"app": f"app-{k}"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                "team": f"t{(k + 1) % 10}"}}, "podSelector": {"matchLabels": {
                    "role": "frontend"}}}],
                "ports": [{"port": 80}, {"port": "http"}]}]}})
    return pods, nss, pols


def program(policies: int, netns: str) -> dict[str, Any]:
    pods, nss, pols = synthetic(policies)
    t0 = time.perf_counter()
    desired = model.compute("bench", pods, nss, pols)
    t1 = time.perf_counter()
    text = render.render(desired)
    t2 = time.perf_counter()
    shell.run(["nft", "-f", "-"], netns=netns, input=text, timeout=600)
    t3 = time.perf_counter()
    return {"policies": policies, "pods": PODS, "endpoints": len(desired.endpoints),
            "sets": len(desired.sets), "rules_text_kib": round(len(text) / 1024),
            "compute_s": round(t1 - t0, 3), "render_s": round(t2 - t1, 3),
            "nft_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)}


# -- namespaces ---------------------------------------------------------------------------------

def _ns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def _setup() -> None:
    _teardown()
    for n in NS:
        shell.run(["ip", "netns", "add", n])
    node, cli, srv = (_ns_path(n) for n in NS)
    shell.run(["ip", "link", "add", "pbc0", "netns", NS[0], "type", "veth", "peer", "name",
               "eth0", "netns", NS[1]])
    shell.run(["ip", "link", "add", "pbs0", "netns", NS[0], "type", "veth", "peer", "name",
               "eth0", "netns", NS[2]])
    shell.ip_batch(["addr add 10.244.200.1/24 dev pbc0", "addr add 10.244.201.1/24 dev pbs0",
                    "link set pbc0 up", "link set pbs0 up", "link set lo up"], netns=node)
    shell.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=node)
    for ns, ip, gw in ((cli, CLIENT_IP, "10.244.200.1"), (srv, SERVER_IP, "10.244.201.1")):
        shell.ip_batch([f"addr add {ip}/24 dev eth0", "link set eth0 up", "link set lo up",
                        f"route add default via {gw}"], netns=ns)


def _teardown() -> None:
    for n in NS:
        shell.run(["ip", "netns", "del", n], check=False)


def latency(netns_client: str) -> tuple[float, float, float]:
    import sys
    out = shell.run([sys.executable, "-c", LATENCY_CLIENT, str(CONNECTS), SERVER_IP],
                    netns=netns_client, timeout=300).stdout.split()
    return round(float(out[0]), 1), round(float(out[1]), 1), round(float(out[2]), 1)


def measure_netns() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import subprocess
    import sys
    _setup()
    node, cli, srv = (_ns_path(n) for n in NS)
    server = subprocess.Popen(shell.in_netns([sys.executable, "-c", SERVER], srv),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        prog = [program(n, node) for n in (100, 1000)]
        samples: dict[int, list[tuple[float, float, float]]] = {n: [] for n in LEVELS}
        for _round in range(ROUNDS):  # interleaved: machine noise hits every level alike
            for n in LEVELS:
                if n == 0:
                    pods, nss, _ = synthetic(0, with_client_policy=False)
                    text = render.render(model.compute("bench", pods, nss, []))
                    shell.run(["nft", "-f", "-"], netns=node, input=text)
                else:
                    program(n, node)
                samples[n].append(latency(cli))
        lat = [{"policies": n,
                "connect_p10_us": statistics.median(s[0] for s in samples[n]),
                "connect_p50_us": statistics.median(s[1] for s in samples[n]),
                "connect_p99_us": statistics.median(s[2] for s in samples[n])}
               for n in LEVELS]
        for key in ("p10", "p50"):
            base = lat[0][f"connect_{key}_us"]
            for row in lat:
                row[f"{key}_vs_0_percent"] = round(
                    100 * (row[f"connect_{key}_us"] - base) / base, 1)
        return prog, lat
    finally:
        server.kill()
        server.wait()
        _teardown()


# -- the real agent's memory ----------------------------------------------------------------------

def _memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def measure_agent(out_dir: Path) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from knetlab.cluster import Cluster
    from knetlab.topologies.schema import load_topology
    topo = out_dir / "netpolicy-topology.yaml"
    topo.write_text("name: pol-bench\ndataplane: host-gw\nkubernetes: true\n"
                    "nodes: {count: 1}\npods: {perNode: 0}\n")
    c = Cluster(load_topology(topo))
    c.up()
    try:
        addon = next(a for a in c.addons if a.name == "netpolicy")
        addon.wait_ready()
        agent = addon.agents["node-1"]
        assert agent.pid
        idle = _memory_kib(agent.pid)
        client = c.control.client  # type: ignore[union-attr]
        pods, nss, pols = synthetic(1000)
        for ns in nss:
            client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", **ns})

        def add_pod(p: dict) -> None:
            meta = {**p["metadata"], "annotations": {"kubernetes.io/config.mirror": "bench"}}
            created = client.create("pods", {"apiVersion": "v1", "kind": "Pod",
                                              "metadata": meta, "spec": {
                                                  "nodeName": "node-1", "containers": [
                                                      {"name": "c", "image": "pause",
                                                       **({"ports": p["spec"]["containers"][0][
                                                           "ports"]} if "containers" in p[
                                                           "spec"] else {})}]}})
            created["status"] = {"phase": "Running", **p["status"]}
            client.update("pods", created, subresource="status")

        def add_policy(p: dict) -> None:
            client.create("networkpolicies", {"apiVersion": "networking.k8s.io/v1",
                                              "kind": "NetworkPolicy", **p})
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(add_pod, pods))
            list(pool.map(add_policy, pols))
        want = len(pols)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            st = agent.status()
            if len(st.get("seen", [])) == want and len(st.get("endpoints", [])) >= want:
                break
            time.sleep(0.2)
        converged = time.monotonic() - t0
        time.sleep(2)
        busy = _memory_kib(agent.pid)
        st = agent.status()
        return {"idle_rss_mib": round(idle[0] / 1024, 1), "idle_pss_mib": round(idle[1] / 1024, 1),
                "rss_mib_1000": round(busy[0] / 1024, 1), "pss_mib_1000": round(busy[1] / 1024, 1),
                "last_apply_s": st.get("apply_seconds"),
                "api_to_programmed_s": round(converged, 1)}
    finally:
        c.down()


def run(out_dir: Path) -> dict[str, Any]:
    prog, lat = measure_netns()
    write_csv(out_dir / "netpolicy-program.csv", prog)
    write_csv(out_dir / "netpolicy-latency.csv", lat)
    try:
        mem = measure_agent(out_dir)
    except Exception as exc:  # noqa: BLE001 - the netns numbers stand on their own
        mem = {"error": str(exc)}
    md = ["## NetworkPolicy (nftables, Calico-style per-endpoint chains)", "",
          f"Programming {PODS} pods on one node, each policy selecting one pod (agent's path: "
          "compute, render, one `nft -f`):", "",
          "| policies | endpoints | sets | script (KiB) | compute (s) | render (s) | nft -f (s) "
          "| total (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in prog:
        md.append(f"| {r['policies']} | {r['endpoints']} | {r['sets']} | {r['rules_text_kib']} "
                  f"| {r['compute_s']} | {r['render_s']} | {r['nft_s']} | {r['total_s']} |")
    md += ["", f"First-packet latency (TCP connect through the node's forward hook, median of "
           f"{ROUNDS} interleaved rounds of {CONNECTS} connects, the server selected by one "
           "policy allowing the client):", "",
           "(p10 is the path's own cost; on a busy 2-core VM p50 jumps between ~20 and ~40 us "
           "whatever the rules, even with no table at all.)", "",
           "| policies | connect p10 (us) | p50 (us) | p99 (us) | p10 vs 0 | p50 vs 0 |",
           "|---|---|---|---|---|---|"]
    for r in lat:
        md.append(f"| {r['policies']} | {r['connect_p10_us']} | {r['connect_p50_us']} | "
                  f"{r['connect_p99_us']} | {r['p10_vs_0_percent']:+} % | "
                  f"{r['p50_vs_0_percent']:+} % |")
    md += ["", "Agent memory (real agent, 1-node lab, 1,000 pods + 1,000 policies in the API): "
           + json.dumps(mem), ""]
    (out_dir / "netpolicy.md").write_text("\n".join(md))
    return {"program": prog, "latency": lat, "agent": mem,
            # p10: the path's own cost; p50 on a busy 2-core VM jumps between two modes
            # (~20 and ~40 us, with no table at all too): scheduling, not rules
            "latency_flat_within_20_percent": all(abs(r["p10_vs_0_percent"]) <= 20
                                                  for r in lat)}

