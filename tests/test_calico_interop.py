"""Interoperability with BGP speakers not written here: FRR bgpd and BIRD 2 as clients of
knetlab's ExaBGP reflectors (routes cross both ways with RFC 4456 attributes, pods ping
an address behind each), and BIRD as the reflector of knetlab's ExaBGP nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knetlab.bgp import status
from knetlab.bgp.bird import BirdClient, BirdClientConfig
from knetlab.bgp.frr import BGPD, FrrBgpd, FrrConfig
from tests.conftest import TOPOLOGIES, needs_root, poll, write_topology

pytestmark = [pytest.mark.e2e, needs_root]

TOPO = """name: cb-interop
dataplane: calico-bgp
bgp: {mode: rr, reflector: exabgp, reflectors: 2}
underlay: {type: segment, cidr: 192.168.0.0/24}
nodes: {count: 3}
pods: {perNode: 1}
"""
FRR_IP, FRR_NET, FRR_ADDR = "192.168.0.200", "10.244.250.0/24", "10.244.250.1"
BIRD_IP, BIRD_NET, BIRD_ADDR = "192.168.0.201", "10.244.251.0/24", "10.244.251.1"


def kernel_routes(host) -> dict[str, str]:  # noqa: ANN001 - a NetnsHost
    out = json.loads(host.run(["ip", "-j", "route", "show", "proto", "bird"]).stdout or "[]")
    return {r["dst"]: r.get("gateway", "") for r in out if "type" not in r}  # unicast only


def blocks(c) -> dict[str, str]:  # noqa: ANN001 - a Cluster
    return {b: n.node_ip for n in c.k8s_nodes() for b in c.backend.blocks(n.name)}


def frr_kernel(host) -> dict[str, str]:  # noqa: ANN001 - a NetnsHost
    out = json.loads(host.run(["ip", "-j", "route", "show", "proto", "bgp"]).stdout or "[]")
    return {r["dst"]: r.get("gateway", "") for r in out}


def pings(c, target: str) -> bool:  # noqa: ANN001
    return all(p.run(["ping", "-c1", "-W1", target], check=False).returncode == 0
               for p in c.pods.values())


@pytest.mark.skipif(not Path(BGPD).exists(), reason="FRR is not installed (apt frr)")
def test_frr_and_bird_clients_of_exabgp_reflectors(tmp_path: Path, lab) -> None:  # noqa: ANN001
    c = lab(write_topology(tmp_path, TOPO))
    rrs = list(c.backend.rr_ips.values())
    frr_host = c.backend.segment_host("frr-1", FRR_IP)
    bird_host = c.backend.segment_host("bird-1", BIRD_IP)
    frr_host.ip_batch([f"addr add {FRR_ADDR}/32 dev lo"])
    bird_host.ip_batch([f"addr add {BIRD_ADDR}/32 dev lo"])
    frr = FrrBgpd(c.rundir, "frr-1", frr_host.netns, FrrConfig(FRR_IP, 64512, rrs, [FRR_NET]))
    bird = BirdClient(c.rundir, "bird-1", bird_host.netns,
                      BirdClientConfig(BIRD_IP, 64512, 3, rrs, [BIRD_NET]))
    try:
        # The reflectors know the speakers before these dial: a reflector refuses a peer it
        # has not configured yet, and the refused speaker waits for its connect timer.
        c.backend.add_external_peer("frr-1", FRR_IP)
        c.backend.add_external_peer("bird-1", BIRD_IP)
        frr.start()  # ready: bgpd answers on its vty with its configured instance
        bird.start()
        # The sessions first (bounded by the reload, connect timer and hold time), then the
        # routes: FRR's start and the reflectors' reload are slow on a cold machine, and
        # must not eat the routes' deadline (the first-run flake of issue 10).
        frr.wait_established()
        want = blocks(c)
        # knetlab -> FRR: every block, next hop the node, reflected attributes
        poll(lambda: set(want) <= set(frr.routes()), 10, "FRR learns every block")
        best = frr.routes()[next(iter(want))]
        assert best["nexthops"][0]["ip"] == want[next(iter(want))]
        detail = json.loads(frr.vtysh(f"show ip bgp {next(iter(want))} json"))
        path = detail["paths"][0]
        assert path["originatorId"] == want[next(iter(want))]
        assert path["clusterList"]["list"][0] in rrs
        # FRR -> knetlab: its network on every node, via FRR
        poll(lambda: all(kernel_routes(n).get(FRR_NET) == FRR_IP for n in c.k8s_nodes()),
             10, "every node installs FRR's network")
        # FRR's zebra installs what bgpd learned: pods reach FRR's address and back
        poll(lambda: set(want) <= set(frr_kernel(frr_host)), 10, "FRR installs every block")
        assert frr_kernel(frr_host)[next(iter(want))] == want[next(iter(want))]
        assert pings(c, FRR_ADDR)
        # BIRD client: learns (and installs) every block, its network reaches every node
        poll(lambda: set(want) <= set(kernel_routes(bird_host)), 10, "BIRD installs blocks")
        poll(lambda: all(kernel_routes(n).get(BIRD_NET) == BIRD_IP for n in c.k8s_nodes()),
             10, "every node installs BIRD's network")
        assert pings(c, BIRD_ADDR), bird_host.run(["ip", "route"]).stdout
        rows = status.routes(c.rundir, "node-1")
        assert any(r[0] == FRR_NET and r[3] == FRR_IP and r[4] in rrs for r in rows)
    finally:
        frr.stop()
        bird.stop()


def test_bird_reflector_for_exabgp_nodes_pods_ping(tmp_path: Path, lab) -> None:  # noqa: ANN001
    text = (TOPOLOGIES / "calico-bird-rr.yaml").read_text().replace("ca-bird-rr", "cb-bird-rr")
    c = lab(write_topology(tmp_path, text))
    want = blocks(c)
    for n in c.k8s_nodes():
        assert {b for b, ip in want.items() if ip != n.node_ip} <= set(kernel_routes(n))
    assert "Established" in c.backend.reflectors["rr-1"].birdc("show", "protocols")
    assert c.check().ok

