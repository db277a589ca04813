#!/usr/bin/env python3
"""Walk through every row of Docker's port-publishing table on a knetlab lab.

    sudo .venv/bin/python examples/docker/walkthrough.py [TOPOLOGY] [--keep]

Starts the lab (``knetlab up -d``, default topologies/default.yaml) unless it runs
already, runs one container per publishing form on node-1 with ``knetlab docker``, and
tries each published port from node-2 (outside) and from node-1 itself, tcp or udp.
It prints what docker would show (``docker port``) and what works, then removes the
containers (and takes the lab down if it started it, unless --keep).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNETLAB = str(Path(sys.executable).with_name("knetlab"))
ECHO = str(HERE / "echo.py")
FORMS = [  # (publish flags, container port/proto to try, expectation)
    (["-p", "8080:80"], "80/tcp", "all addresses"),
    (["-p", "NODEIP:8081:80"], "80/tcp", "one host address"),
    (["-p", "8082:80/udp"], "80/udp", "udp"),
    (["-p", "8083:80/tcp", "-p", "8083:80/udp"], "80/udp", "tcp and udp, same port"),
    (["-p", "127.0.0.1:8084:80"], "80/tcp", "node only (userland proxy)"),
    (["-p", "127.0.0.1::80"], "80/tcp", "node only, random port"),
    (["-p", "80"], "80/tcp", "random host port"),
    (["-p", "8090-8091:80-81"], "81/tcp", "port ranges"),
    (["-P", "--expose", "80"], "80/tcp", "-P: every exposed port, random"),
]


def kl(*args: str, check: bool = True) -> str:
    res = subprocess.run([KNETLAB, *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise SystemExit(f"knetlab {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout if res.returncode == 0 else res.stderr


def ask(cluster: str, host: str, proto: str, ip: str, port: str) -> str:
    out = kl("exec", "--cluster", cluster, host, "--", sys.executable, ECHO, "client", proto,
             ip, port, check=False).strip()
    return "ok (" + out.split("peer=")[1] + " seen)" if "peer=" in out else "refused/timeout"


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--keep"]
    topo = args[0] if args else "topologies/default.yaml"
    cluster = next(line.split(":", 1)[1].strip() for line in Path(topo).read_text().splitlines()
                   if line.startswith("name:"))
    started = subprocess.run([KNETLAB, "status", "--cluster", cluster],
                             capture_output=True).returncode != 0
    if started:
        kl("up", "-d", topo)
    status = kl("status", "--cluster", cluster, "-o", "json")
    node_ip = next(n["ip"] for n in json.loads(status)["nodes"] if n["name"] == "node-1")
    print(f"lab {cluster}: node-1 is {node_ip}; outside = node-2\n")
    print(f"{'docker run flags':44} {'docker port':28} {'from node-2':26} from node-1")
    try:
        for i, (flags, cport, what) in enumerate(FORMS):
            flags = [f.replace("NODEIP", node_ip) for f in flags]
            name = f"pub{i}"
            kl("docker", "--cluster", cluster, "node-1", "run", "-d", "--name", name, *flags,
               "echo", sys.executable, ECHO, "serve", "80", "81")
            line = next(x for x in kl("docker", "--cluster", cluster, "node-1", "port",
                                      name).splitlines() if x.startswith(cport))
            host_ip, port = line.split(" -> ")[1].rsplit(":", 1)
            proto = cport.split("/")[1]
            target = node_ip if host_ip == "0.0.0.0" else host_ip
            outside = ask(cluster, "node-2", proto, node_ip, port)
            inside = ask(cluster, "node-1", proto, target, port)
            print(f"{' '.join(flags):44} {line:28} {outside:26} {inside}   # {what}")
        print("\n" + kl("docker", "--cluster", cluster, "node-1", "ps"))
        print(kl("exec", "--cluster", cluster, "node-1", "--", "iptables", "-t", "nat", "-S",
                 "DOCKER"))
    finally:
        for i in range(len(FORMS)):
            kl("docker", "--cluster", cluster, "node-1", "rm", "-f", f"pub{i}", check=False)
        if started and "--keep" not in sys.argv:
            kl("down", "--cluster", cluster, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
