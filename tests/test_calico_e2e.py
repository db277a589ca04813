"""Whole Calico-style labs with real daemons and packets: BGP mesh, reflectors (ExaBGP and
BIRD), ToR mode, VXLAN CrossSubnet, membership and failures, and the IPIP refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from knetlab import kernel
from knetlab.bgp import status
from knetlab.cluster import Cluster
from knetlab.errors import ConfigError, KnetlabError
from knetlab.mncli import summary_nodes
from knetlab.overlays import calico
from knetlab.topologies.schema import load_topology
from tests.conftest import TOPOLOGIES, needs_root, poll, write_topology

pytestmark = [pytest.mark.e2e, needs_root]


def bird_routes(host) -> set[str]:  # noqa: ANN001 - a NetnsHost
    out = host.run(["ip", "-j", "route", "show", "proto", "bird"]).stdout
    return {r["dst"] for r in json.loads(out or "[]") if r.get("type") != "blackhole"}


def others(c, node: str) -> set[str]:  # noqa: ANN001 - a Cluster
    return {b for n in c.k8s_nodes() if n.name != node for b in c.backend.blocks(n.name)}


def block(c, node: str) -> str:  # noqa: ANN001 - a Cluster
    return c.backend.blocks(node)[0]


def capture(host, intf: str, bpf: str, action: Callable[[], None]) -> str:  # noqa: ANN001
    """tcpdump on a namespace's interface while ``action`` runs; return what it printed."""
    argv = ["nsenter", f"--net={host.netns}", "--", "tcpdump", "-nli", intf, "-c", "5", bpf]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # tcpdump needs a moment to attach; no event tells us it has
    try:
        action()
        out, _ = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_mesh_check_no_encap_membership_and_kill(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-mesh.yaml")
    assert c.check().ok
    for n in c.k8s_nodes():
        assert bird_routes(n) == others(c, n.name)
    src, dst = c.pod("pod-1-0"), c.pod("pod-2-0")
    seen = capture(c.node("node-1"), "node-1-eth0", "icmp",
                   lambda: src.run(["ping", "-c3", "-i0.2", dst.ip]))
    assert f"{src.ip} > {dst.ip}: ICMP echo request" in seen  # plain IP: no encapsulation
    # join: announced everywhere within 1 s of the speaker being up
    node = c.add_node("node-4")
    b4 = block(c, "node-4")
    poll(lambda: all(b4 in bird_routes(n) for n in c.k8s_nodes()
                     if n is not node), 1.0, "node-4's block everywhere")
    c.delete_node("node-4")
    poll(lambda: all(b4 not in bird_routes(n) for n in c.k8s_nodes()),
         1.0, "node-4's block withdrawn everywhere")
    # kill -9 of a speaker: the TCP session resets, peers withdraw at once (well within
    # the hold time); status tells the truth, the zombie is reaped, and calico-node's
    # supervisor (the backend's watchdog) starts it again after 1 s: the route returns.
    b3, pid = block(c, "node-3"), c.backend.speakers["node-3"].pid
    os.kill(pid, signal.SIGKILL)
    took = poll(lambda: b3 not in bird_routes(c.node("node-1")), 3.0,
                "killed speaker's routes withdrawn")
    assert took < 1.0
    text = status.status_text(c.rundir, "node-3")
    assert "is not running on node-3" in text and "Established" not in text, text
    assert all(row[2] == "down" for row in status.peers(c.rundir, "node-3"))
    assert status.routes(c.rundir, "node-3") == []
    poll(lambda: not Path(f"/proc/{pid}").exists(), 2.0, "the killed speaker reaped")
    poll(lambda: b3 in bird_routes(c.node("node-1")), 8.0,
         "the restarted speaker's block back on node-1")
    assert c.backend.speakers["node-3"].pid != pid
    poll(lambda: bird_routes(c.node("node-3")) == others(c, "node-3"), 5.0,
         "the restarted speaker relearned every route")
    text = status.status_text(c.rundir, "node-3")
    assert "Calico process is running on node-3." in text and "Established" in text, text


def test_hung_speaker_removed_after_hold_time(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-mesh.yaml")
    pid, b2 = c.backend.speakers["node-2"].pid, block(c, "node-2")
    os.kill(pid, signal.SIGSTOP)
    try:
        took = poll(lambda: b2 not in bird_routes(c.node("node-1")), 8.0,
                    "hung speaker's routes withdrawn after the hold time")
        assert 2.0 < took < 6.0, took  # hold time 3 s (+ ExaBGP's reactor tick)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_exabgp_reflectors_attributes_and_failover(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-rr.yaml")
    assert c.check().ok
    rows = status.routes(c.rundir, "node-1")
    via = {(r[0], r[2]): r for r in rows}
    rr1, rr2 = c.backend.rr_ips["rr-1"], c.backend.rr_ips["rr-2"]
    r = via[(block(c, "node-2"), rr1)]
    assert r[3] == "192.168.0.12" and r[4] == rr1  # originator-id, cluster-list
    peers = status.peers(c.rundir, "node-1")
    assert {p[0] for p in peers} == {rr1, rr2} and all(p[2] == "up" for p in peers)
    # A reflector lists its real peers only; the spares (nodes yet to join) are one line.
    nodes = {n.node_ip for n in c.k8s_nodes()}
    assert {p[0] for p in status.peers(c.rundir, "rr-1")} == nodes | {rr2}
    text = status.status_text(c.rundir, "rr-1")
    assert "spare slots for joining nodes" in text and "Passive" not in text, text
    state = c.state()  # `knetlab status` shows each node's blocks, not a pod CIDR
    assert {n["name"]: n["blocks"] for n in state["nodes"]}["node-1"] == [block(c, "node-1")]
    assert "IPAM-BLOCKS" in summary_nodes(state)
    c.backend.reflectors["rr-1"].stop()
    time.sleep(0.5)  # let a wrong withdrawal have time to show
    for n in c.k8s_nodes():
        assert bird_routes(n) == others(c, n.name)
    assert c.check().ok


def test_reflector_joins_use_spares_then_reload_and_client_returns(lab, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(calico, "SPARE_CLIENTS", 2)  # 4 nodes: spares for indexes 5 and 6
    c = lab(TOPOLOGIES / "calico-rr.yaml")
    conf = c.backend.reflectors["rr-1"].config_file
    before = conf.read_text()
    for name in ("node-5", "node-6", "node-7"):
        node = c.add_node(name)
        b = block(c, name)
        poll(lambda: all(b in bird_routes(n) for n in c.k8s_nodes() if n is not node),  # noqa: B023
             1.0, f"{name}'s block everywhere")
        poll(lambda: bird_routes(node) == others(c, name), 2.0,  # noqa: B023
             f"{name} learned every route")
        if name == "node-6":
            assert conf.read_text() == before  # joins on spare addresses: no reload
    assert "neighbor 192.168.0.18 {" in conf.read_text()  # node-7 moved the horizon: reloaded
    assert c.check().ok
    # A client returns (speaker killed, started again by the watchdog): the reflectors'
    # ExaBGP re-sends its adj-rib-out, and the client's block comes back everywhere.
    speaker, b2 = c.backend.speakers["node-2"], block(c, "node-2")
    os.kill(speaker.pid, signal.SIGKILL)
    poll(lambda: b2 not in bird_routes(c.node("node-1")), 3.0, "node-2 withdrawn")
    poll(lambda: bird_routes(c.node("node-2")) == others(c, "node-2"), 8.0,
         "the returned client has every route again")
    poll(lambda: b2 in bird_routes(c.node("node-1")), 5.0, "node-2's block back")


def test_up_fails_when_bgp_does_not_converge(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A node whose speaker has the wrong AS never gets a session: `up` fails naming what
    did not converge, and tears down what it built."""
    monkeypatch.setattr(calico, "CONVERGE_TIMEOUT", 3.0)
    node_config = calico.CalicoBgpBackend._node_config

    def wrong_as(self, node):  # noqa: ANN001, ANN202
        cfg = node_config(self, node)
        if node.name == "node-3":
            cfg.asn += 1  # its peers expect 64512: they refuse its OPEN
        return cfg

    monkeypatch.setattr(calico.CalicoBgpBackend, "_node_config", wrong_as)
    text = (TOPOLOGIES / "calico-mesh.yaml").read_text()
    c = Cluster.load(write_topology(tmp_path, text.replace("ca-mesh", "ca-noconv")))
    with pytest.raises(KnetlabError, match="BGP did not converge within 3 s") as err:
        c.up()
    assert "node-3" in str(err.value) and "lacks routes to" in str(err.value)
    assert "sessions not established" in str(err.value)
    assert not c.rundir.path.exists() and c.net is None  # torn down


def test_bird_reflector(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-bird-rr.yaml")
    assert c.check().ok
    rows = status.routes(c.rundir, "node-1")
    assert any(r[0] == block(c, "node-2") and r[4] for r in rows if r[4] != "-")
    assert "Established" in status.status_text(c.rundir, "rr-1")


def test_tor_mode_leaf_spine(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-tor.yaml")
    assert c.check().ok
    assert {block(c, "node-1"), block(c, "node-4")} <= bird_routes(c.host("spine-1"))
    assert "ToR" in status.status_text(c.rundir, "node-1")


def test_vxlan_crosssubnet_encapsulates_only_between_racks(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "calico-vxlan-crosssubnet.yaml")
    assert c.check().ok
    src = c.pod("pod-1-0")
    same, other = c.pod("pod-2-0"), c.pod("pod-3-0")  # node-2: rack 1; node-3: rack 2
    up = "node-1-eth0"
    seen = capture(c.node("node-1"), up, "udp port 4789",
                   lambda: src.run(["ping", "-c3", "-i0.2", other.ip]))
    assert "VXLAN" in seen or ".4789" in seen
    seen = capture(c.node("node-1"), up, "icmp",
                   lambda: src.run(["ping", "-c3", "-i0.2", same.ip]))
    assert f"{src.ip} > {same.ip}: ICMP echo request" in seen


def test_ipip_refused_here_or_works(tmp_path: Path, lab) -> None:  # noqa: ANN001
    text = (TOPOLOGIES / "calico-mesh.yaml").read_text()
    topo = write_topology(tmp_path, text.replace("calico-bgp", "calico-ipip")
                          .replace("ca-mesh", "ca-ipip"))
    if not kernel.has("ipip"):
        with pytest.raises(ConfigError, match="IPIP tunnels.*CONFIG_NET_IPIP"):
            load_topology(topo)
        pytest.skip("this kernel has no IPIP (CONFIG_NET_IPIP): refusal checked")
    assert lab(topo).check().ok
