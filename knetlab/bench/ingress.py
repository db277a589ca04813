"""Ingress numbers: requests/s through nginx to 3 endpoints vs straight to one endpoint, and
the reload time with 1,000 Ingress rules.

A 3-node host-gw lab (``ingbench``), nginx (the ingress) on node-1 with hostNetwork, a
3-replica Deployment of the ``nginx`` image (Debian's nginx in each pod, answering
``/hostname``) behind the Service ``bench``. wrk (Debian) runs on node-2:

- ``direct``: wrk -> one pod IP, no proxy;
- ``ingress``: wrk -> node-1:80 with ``Host: bench.example`` -> nginx -> 3 pod IPs
  (upstream keepalive, round robin).

Then 1,000 Ingresses (one host rule each) are created and, with them loaded, one more
Ingress at a time: the time from its ``create`` returning to the first 200 for its host is
the end-to-end reload time (informer event -> model -> render -> ``nginx -t`` -> SIGHUP ->
new workers serving). The controller's own share (``nginx -t`` + swap + SIGHUP) and the
configuration's size are reported beside it. Writes ingress.md and ingress.csv.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from knetlab.addons.ingress import read_table, state_root
from knetlab.bench import write_csv
from knetlab.cluster import Cluster
from knetlab.topologies.schema import load_topology

TOPO = """name: ingbench
dataplane: host-gw
nodes: {count: 3}
pods: {perNode: 0}
ingress: {nodes: [node-1]}
"""
APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench}
spec:
  replicas: 3
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27", ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench}
spec:
  selector: {app: bench}
  ports: [{port: 80, targetPort: 80}]
"""
RULES = 1000
PROBES = 5
WRK = ["wrk", "-t2", "-c64", "-d5s", "--latency"]


def ingress(name: str, host: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "bench", "port": {"number": 80}}}}]}}]}}


def _unit_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def _wrk(c: Cluster, url: str, host: str | None = None) -> dict[str, float]:
    header = ["-H", f"Host: {host}"] if host else []
    c.node("node-2").run(["wrk", "-t1", "-c8", "-d1s", *header, url], timeout=30)  # warm up
    out = c.node("node-2").run([*WRK, *header, url], timeout=60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": _unit_ms(pct.get("50", "")),
            "p99_ms": _unit_ms(pct.get("99", "")),
            "non2xx": int(errors.group(1)) if errors else 0}


def _served(c: Cluster, host: str) -> bool:
    ip = c.node("node-1").node_ip
    res = c.node("node-2").run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m",
                                "2", "--resolve", f"{host}:80:{ip}", f"http://{host}/hostname"],
                               check=False)
    return res.stdout == "200"


def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.005)
    raise RuntimeError(f"not within {timeout}s: {what}")


def _measure(c: Cluster, out_dir: Path) -> dict[str, Any]:
    kc = c._control().client
    c.apply(APP)
    c.apply(ingress("bench", "bench.example"))
    _wait(lambda: len([p for p in kc.list("pods", "default", label_selector="app=bench")[
        "items"] if p.get("status", {}).get("podIP")]) == 3, 120, "3 bench pods")
    _wait(lambda: len(next((r["endpoints"] for r in read_table(c.rundir).get("routes", [])
                            if r["host"] == "bench.example" and r["path"] == "/"), [])) == 3,
          60, "3 endpoints behind bench.example")
    _wait(lambda: _served(c, "bench.example"), 60, "bench.example served")
    pod_ip = kc.list("pods", "default", label_selector="app=bench")["items"][0]["status"]["podIP"]
    rows = [{"path": "direct (1 pod)", **_wrk(c, f"http://{pod_ip}/hostname")},
            {"path": "ingress nginx (3 pods)",
             **_wrk(c, f"http://{c.node('node-1').node_ip}/hostname", "bench.example")}]

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: kc.create("ingresses", ingress(f"r{i}", f"h{i}.bench.example"),
                                          "default"), range(RULES)))
    create_s = time.monotonic() - t0
    _wait(lambda: _served(c, f"h{RULES - 1}.bench.example") and _served(c, "h0.bench.example"),
          300, f"{RULES} Ingresses served")
    loaded_s = time.monotonic() - t0
    reloads = []
    for k in range(PROBES):
        host = f"probe{k}.bench.example"
        kc.create("ingresses", ingress(f"probe{k}", host), "default")
        reloads.append(_wait(lambda h=host: _served(c, h), 60, f"{host} served"))
    table = read_table(c.rundir)
    conf = state_root(c.rundir) / "node-1" / "routes.conf"
    result = {
        "rps": {r["path"]: r for r in rows},
        "rules": RULES,
        "create_1000_s": round(create_s, 2),
        "all_served_s": round(loaded_s, 2),
        "reload_e2e_s": {"p50": round(statistics.median(reloads), 3),
                         "max": round(max(reloads), 3), "all": [round(x, 3) for x in reloads]},
        "controller_install_s": table.get("lastReloadSeconds"),
        "reloads_total": table.get("reloads"),
        "config_kib": round(conf.stat().st_size / 1024, 1),
    }
    write_csv(out_dir / "ingress.csv", rows)
    r0, r1 = rows
    md = ["## Ingress (nginx)", "",
          "wrk -t2 -c64 -d5s from node-2, `/hostname` of Debian's nginx in 3 pods; "
          "ingress nginx on node-1 (hostNetwork), one worker.", "",
          "| path | requests/s | p50 ms | p99 ms | non-2xx |", "|---|---|---|---|---|"]
    md += [f"| {r['path']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
           f"{r['non2xx']} |" for r in rows]
    md += ["", f"Through the ingress: {r1['rps'] / r0['rps'] * 100:.0f}% of the direct rate.",
           "", f"With {RULES} Ingresses (one host rule each; routes.conf "
           f"{result['config_kib']} KiB): creating them took {create_s:.1f} s, all served "
           f"{loaded_s:.1f} s after the first create; one more Ingress served "
           f"{result['reload_e2e_s']['p50'] * 1000:.0f} ms (p50 of {PROBES}, max "
           f"{result['reload_e2e_s']['max'] * 1000:.0f} ms) after its create returned; "
           f"the controller's share (nginx -t + swap + SIGHUP): "
           f"{(table.get('lastReloadSeconds') or 0) * 1000:.0f} ms.", ""]
    (out_dir / "ingress.md").write_text("\n".join(md))
    return result


def run(out_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ingbench.yaml").write_text(TOPO)
        c = Cluster(load_topology(Path(tmp) / "ingbench.yaml"))
        with c:
            return _measure(c, out_dir)
