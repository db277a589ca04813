"""Kubernetes from a script: apply a manifest, wait with the official client, then use the
API's pods as hosts (``cmd``), as the course's user stories do.

    sudo .venv/bin/python examples/kube_experiment.py [topologies/flannel-vxlan.yaml]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kubernetes import client

from knetlab import Cluster

APPS = Path(__file__).parent / "apps"


def ready_pods(core: client.CoreV1Api, selector: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod("default", label_selector=selector).items
    return [p for p in pods if any(c.type == "Ready" and c.status == "True"
                                   for c in p.status.conditions or [])]


def main(topology: str) -> int:
    with Cluster.load(topology) as c:
        c.apply(APPS / "statefulset.yaml")
        core = client.CoreV1Api(c.kube)
        deadline = time.monotonic() + 90
        while len(ready_pods(core, "app=db")) < 3:
            if time.monotonic() > deadline:
                print("db pods not ready in 90 s")
                return 1
            time.sleep(0.5)
        for pod in sorted(ready_pods(core, "app=db"), key=lambda p: p.metadata.name):
            print(f"{pod.metadata.name:6} {pod.spec.node_name:8} {pod.status.pod_ip}")
        # db-0 asks db-2 for its name, straight to its IP over the data plane
        answer = c.pod("db-0").cmd("curl -s", f"http://{c.pod('db-2').ip}/hostname")
        print(f"db-0 -> db-2: {answer.strip()}")
        return 0 if answer.strip() == "db-2" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "topologies/default.yaml"))
