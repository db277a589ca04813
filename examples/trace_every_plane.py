"""Trace one probe on every data plane and keep the report and the picture (docs/trace.md).

    sudo .venv/bin/python examples/trace_every_plane.py [OUTDIR] [PLANE...]

For each data plane: a small lab (2 nodes, one pod each, no Kubernetes), one ICMP trace
pod-1-0 -> pod-2-0, written as OUTDIR/<plane>.txt (the report) and OUTDIR/<plane>.svg (the
lab with the path drawn on it). OUTDIR defaults to docs/trace.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from knetlab.cluster import Cluster
from knetlab.graph import render, to_dot
from knetlab.trace import format_trace, trace

SEGMENT = "underlay: {type: segment, cidr: 192.168.0.0/24}\nnodes: {count: 2}\n"
PLANES = {
    "host-gw": SEGMENT,
    "vpc-routes": "underlay: {type: leaf-spine, cidr: 192.168.0.0/16, racks: 2, spines: 2}\n"
                  "nodes: {perRack: 1}\n",
    "flannel-vxlan": SEGMENT,
    "flannel-udp": SEGMENT,
    "calico-bgp": SEGMENT,
    "calico-vxlan": SEGMENT,
    "ovs-vxlan": SEGMENT,
    "ovs-gre": SEGMENT,
    "weave": SEGMENT.replace("nodes", "podCIDR: 10.32.0.0/12\nnodes"),
    "macvlan": SEGMENT.replace("192.168.0.0/24", "192.168.0.0/16"),
}


def one(plane: str, outdir: Path) -> None:
    topo = Path(tempfile.mkdtemp()) / "topo.yaml"
    topo.write_text(f"name: trdoc-{plane}\ndataplane: {plane}\n{PLANES[plane]}"
                    "pods: {perNode: 1}\nkubernetes: false\n")
    with Cluster.load(topo) as c:
        deadline = time.monotonic() + 30
        while True:  # a data plane converges asynchronously: trace until it answers
            t = trace(c.state(), "pod-1-0", "pod-2-0")
            if t.delivered and t.reply or time.monotonic() > deadline:
                break
        (outdir / f"{plane}.txt").write_text(format_trace(t) + "\n")
        render(to_dot(c.state(), [(h.where, h.leg) for h in t.hops]), outdir / f"{plane}.svg")
    print(f"{plane}: {'delivered' if t.delivered else 'NOT delivered'}, {len(t.hops)} hops")


def main() -> None:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/trace")
    outdir.mkdir(parents=True, exist_ok=True)
    for plane in sys.argv[2:] or list(PLANES):
        one(plane, outdir)


if __name__ == "__main__":
    main()
