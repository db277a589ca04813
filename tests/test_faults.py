"""Faults (``knetlab.faults``) and the fabric's answer to them: a cut spine link reroutes
over the other spine within 2 s and heals when the link returns; a killed flannel agent is
restarted; loss and rate limits apply and ``clear`` leaves nothing of them."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root, poll, write_topology

from knetlab.cluster import Cluster
from knetlab.errors import KnetlabError
from knetlab.faults import FAULT_TABLE

pytestmark = [needs_root, pytest.mark.e2e]
LEAF_SPINE = ("name: fault-ls\nkubernetes: false\ndataplane: vpc-routes\n"
              "underlay: {type: leaf-spine, cidr: 192.168.0.0/16, racks: 2, spines: 2}\n"
              "nodes: {perRack: 2}\npods: {perNode: 2}\n")


def cross_rack_pairs(c: Cluster) -> list[tuple[str, str]]:
    rack = {p.name: c.nodes[p.node_name].spec.rack for p in c.pods.values()}
    return [(a, c.pods[b].ip) for a in rack for b in rack if rack[a] == 1 and rack[b] == 2]


def all_ping(c: Cluster, pairs: list[tuple[str, str]], wait: str = "0.5") -> bool:
    """Every pair answers one ping, the pings in parallel."""
    procs = [subprocess.Popen(["nsenter", f"--net={c.pods[a].netns}", "ping", "-c1", "-W", wait,
                               ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for a, ip in pairs]
    return all(p.wait(timeout=10) == 0 for p in procs)


def tor_route(c: Cluster, tor: str, dst: str) -> str:
    return c.host(tor).run(["ip", "route", "show", dst]).stdout


def test_leaf_spine_reroutes_around_a_cut_and_heals(lab, tmp_path: Path) -> None:
    c = lab(write_topology(tmp_path, LEAF_SPINE))
    pairs = cross_rack_pairs(c)
    assert len(pairs) == 16 and all_ping(c, pairs, wait="2")
    rack2 = next(n.spec.pod_cidr for n in c.nodes.values() if n.spec.rack == 2)
    spine1_ip = c.underlay.spine_links[(1, 1)][1]
    spine2_ip = c.underlay.spine_links[(1, 2)][1]
    assert spine1_ip in tor_route(c, "tor-1", rack2) and spine2_ip in tor_route(c, "tor-1", rack2)

    # the issue's cut: spine-1's end of its link to tor-1, by hand (not through knetlab)
    end = c.faults.link_end("spine-1", "tor-1")
    c.host("spine-1").run(["ip", "link", "set", end.iface, "down"])
    took = poll(lambda: all_ping(c, pairs), 2.0, "every cross-rack pair over spine-2")
    print(f"traffic recovered {took:.2f} s after the cut")
    route = tor_route(c, "tor-1", rack2)
    assert spine1_ip not in route and spine2_ip in route, route
    rack1 = c.node("node-1").spec.pod_cidr  # and rack 2's ToR no longer sends it to spine-1
    assert c.underlay.spine_links[(2, 1)][1] not in tor_route(c, "tor-2", rack1)
    report = c.check()
    assert report.ok, [p.error for p in report.failures]
    down = [e for e in c.underlay.events if e["state"] == "down"]
    assert down and down[0]["link"] == "tor-1<->spine-1" and down[0]["routes_applied_in"] < 1

    # back up (through knetlab): spine-1 relearns rack 1, both ECMP members return
    assert c.faults.link_up("spine-1", "tor-1").endswith(" up")
    poll(lambda: spine1_ip in tor_route(c, "tor-1", rack2)
         and spine2_ip in tor_route(c, "tor-1", rack2), 3.0, "both ECMP members back")
    assert str(c.spec.underlay.rack_subnet(1)) in c.host("spine-1").run(["ip", "route"]).stdout
    # every route the flap flushed comes back (the reconciler's next pass, level-triggered)
    poll(lambda: c.check().ok, 12.0, "check passes after the link returns")

    # a node's uplink flap: its own routes (underlay CIDR, the pod CIDR) come back
    c.faults.link_down("node-1")
    c.faults.link_up("node-1")
    poll(lambda: all_ping(c, pairs), 3.0, "node-1's routes restored")
    assert str(c.spec.pod_cidr) in c.node("node-1").run(["ip", "route"]).stdout

    # loss: about P % of pings fail, then clear leaves no knetlab-fault table
    c.faults.loss("pod-1-0:eth0", 50)
    src, dst = "pod-1-0", c.pods["pod-3-0"].ip
    out = c.pods[src].run(["ping", "-c", "200", "-i", "0.01", "-W", "1", dst],
                          check=False).stdout
    lost = int(re.search(r"(\d+(?:\.\d+)?)% packet loss", out).group(1).split(".")[0])
    assert 30 <= lost <= 70, out
    c.faults.rate("pod-1-0:eth0", "5mbit")
    assert "tbf" in c.pods[src].run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert [f["kind"] for f in c.rpc("fault", {"action": "list", "args": {}})] == ["loss",
                                                                                   "rate"]
    c.faults.link_down("spine-2", "tor-2")
    assert c.faults.clear() == "cleared 3 fault(s)"
    assert FAULT_TABLE not in c.pods[src].run(["nft", "list", "tables"]).stdout
    assert "tbf" not in c.pods[src].run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    # the cleared link-down's routes return through the reconciler: healed first (both ECMP
    # members back on tor-2: pings alone pass over spine-1 before the reconciler has re-added
    # spine-2, and its route change then cost a ping of the lossless run), then lossless
    poll(lambda: all(c.underlay.spine_links[(2, s)][1] in tor_route(c, "tor-2", rack1)
                     for s in (1, 2)), 3.0, "both of tor-2's ECMP members back after clear")
    poll(lambda: all_ping(c, pairs), 3.0, "fabric healed after clear")
    out = c.pods[src].run(["ping", "-c", "50", "-i", "0.01", "-W", "1", dst]).stdout
    assert " 0% packet loss" in out

    with pytest.raises(KnetlabError, match="name the peer"):
        c.faults.link_down("tor-1")
    with pytest.raises(KnetlabError, match="no link to"):
        c.faults.link_down("spine-1", "node-1")


def test_killed_flannel_agent_heals(lab, tmp_path: Path) -> None:
    text = (TOPOLOGIES / "flannel-vxlan-leaf-spine.yaml").read_text()
    text = text.replace("name: fl-vxlan-ls", "name: fault-fl\nkubernetes: false")
    c = lab(write_topology(tmp_path, text))
    pid_file = c.rundir.path / "daemons/node-1/flanneld/flanneld.pid"
    before = int(pid_file.read_text())
    assert c.faults.kill("node-1", "flanneld").startswith("killed flanneld on node-1")

    def restarted() -> bool:
        try:  # the watchdog removes the pid file of the dead agent before the restart
            pid = int(pid_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return False
        return pid != before and Path(f"/proc/{pid}").exists()
    poll(restarted, 15, "flanneld restarted by the watchdog")
    t0 = time.monotonic()
    poll(lambda: c.check().ok, 30, "check passes after the restart")
    print(f"check passed {time.monotonic() - t0:.1f} s after the restart was seen")
    with pytest.raises(KnetlabError, match="no running daemon"):
        c.faults.kill("node-1", "nosuchd")


def test_calico_tor_fabric_reroutes_and_heals(lab, tmp_path: Path) -> None:
    """The issue's calico-tor flap: BGP-learned pod routes on a ToR resolve through the
    fabric (ECMP over both spines) and move when the fabric does, so a cut spine link costs
    no pair, and the spine relearns the rack's blocks when the link returns."""
    text = (TOPOLOGIES / "calico-tor.yaml").read_text().replace("name: ca-tor",
                                                                   "name: fault-ctor")
    c = lab(write_topology(tmp_path, text + "kubernetes: false\n"))
    pairs = cross_rack_pairs(c)
    assert len(pairs) == 16 and all_ping(c, pairs, wait="2")
    block2 = next(b for b in c.backend.all_blocks()["node-3"])
    spine1_ip = c.underlay.spine_links[(1, 1)][1]
    poll(lambda: "nexthop" in tor_route(c, "tor-1", block2), 10.0,
         "tor-1 reaches rack 2's block over both spines")

    end = c.faults.link_end("spine-1", "tor-1")
    c.host("spine-1").run(["ip", "link", "set", end.iface, "down"])
    took = poll(lambda: all_ping(c, pairs), 5.0, "every cross-rack pair over spine-2")
    print(f"traffic recovered {took:.2f} s after the cut")
    assert spine1_ip not in tor_route(c, "tor-1", block2)

    assert c.faults.link_up("spine-1", "tor-1").endswith(" up")
    block1 = next(b for b in c.backend.all_blocks()["node-1"])
    poll(lambda: block1 in c.host("spine-1").run(["ip", "route"]).stdout
         and spine1_ip in tor_route(c, "tor-1", block2), 60.0,
         "spine-1 relearns rack 1's blocks and tor-1 uses it again")
    assert str(c.spec.underlay.rack_subnet(1)) in c.host("spine-1").run(["ip", "route"]).stdout
    poll(lambda: c.check().ok, 12.0, "check passes after the link returns")
