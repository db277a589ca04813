"""A scripted experiment with knetlab's Python API: bring a lab up, prove the Kubernetes
network model, then measure pod-to-pod RTT on the same node and across nodes.

    sudo .venv/bin/python examples/experiment.py [topologies/flannel-vxlan.yaml]
"""

from __future__ import annotations

import re
import sys

from knetlab import Cluster


def rtt_ms(cluster: Cluster, src: str, dst: str) -> float:
    out = cluster.pod(src).cmd("ping -c5 -i0.2 -q", cluster.pod(dst).ip)
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(match.group(1)) if match else float("nan")


def main(topology: str) -> int:
    with Cluster.load(topology) as c:  # up on enter, torn down on exit (even on Ctrl-C)
        report = c.check()
        print(f"{c.spec.name}: data plane {c.spec.dataplane}, check "
              f"{'OK' if report.ok else 'FAILED'} ({len(report.probes)} probes)")
        pods = sorted(c.pods.values(), key=lambda p: (p.node_name, p.name))
        same = [p for p in pods if p.node_name == pods[0].node_name]
        other = next(p for p in pods if p.node_name != pods[0].node_name)
        if len(same) > 1:
            print(f"same node  {same[0].name} -> {same[1].name}: "
                  f"{rtt_ms(c, same[0].name, same[1].name):.3f} ms")
        print(f"cross node {pods[0].name} -> {other.name}: "
              f"{rtt_ms(c, pods[0].name, other.name):.3f} ms")
        return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "topologies/default.yaml"))
