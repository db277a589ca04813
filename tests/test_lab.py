"""Whole labs: bring-up of the shipped topologies with `check` passing, live node and pod
changes, the CLI (detached supervisor, status, exec, check, down), and that down, clean
and clean-after-kill-9 leave the machine as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, links, needs_root, write_topology

from knetlab.cluster import Cluster
from knetlab.errors import KnetlabError
from knetlab.rundir import RunDir, pid_alive

pytestmark = [needs_root, pytest.mark.e2e]
KNETLAB = [sys.executable, "-m", "knetlab.cli"]


def knetlab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*KNETLAB, *args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"knetlab {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def owned_pids(rd: RunDir) -> list[tuple[int, str]]:
    return [(e["pid"], e["match"]) for e in rd.owned() if e.get("kind") == "pid"]


def alive(pids: list[tuple[int, str]]) -> list[int]:
    return [pid for pid, match in pids if pid_alive(pid, match)]


def other_links(tag: str) -> set[str]:
    """The machine's links minus other running labs' (tests may share the machine)."""
    return {name for name in links() if not name.startswith("kl") or name.startswith(tag)}


def test_default_topology_passes_check(lab) -> None:
    c = lab(TOPOLOGIES / "default.yaml")
    report = c.check()
    assert report.ok, [p.error for p in report.failures]
    # every pod to every other pod and every node to every pod: the topology's 6 and the
    # API's (the cluster DNS pod) alike
    pods = len({p.src.name for p in report.probes if p.src.kind == "pod"})
    assert pods >= 6 and len(report.probes) == pods * (pods - 1) + 3 * pods
    # host-gw: the route to a peer's pods goes straight to the peer node
    routes = c.node("node-1").run(["ip", "route"]).stdout
    assert "10.244.2.0/24 via 192.168.0.12" in routes
    # the Mininet side: a pod is a host that runs commands
    out = c.pod("pod-1-0").cmd("ping -c1 -W2", c.pod("pod-3-1").ip)
    assert "1 received" in out


def test_leaf_spine_vpc_routes_passes_check(lab) -> None:
    c = lab(TOPOLOGIES / "leaf-spine.yaml")
    assert c.check().ok
    tor = c.host("tor-1").run(["ip", "route"]).stdout
    assert "10.244.3.0/24 proto 77" in tor and "nexthop via" in tor  # ECMP to the spines
    assert shutil.which("traceroute"), "traceroute is missing: run scripts/setup.sh"
    trace = c.pod("pod-1-0").cmd("traceroute -n -w1 -q1", c.pod("pod-4-0").ip)
    assert "192.168.255." in trace, trace  # crossed a spine


def test_reference_plugins_and_ovs_switch(lab, tmp_path: Path) -> None:
    topo = write_topology(tmp_path, "name: lab-ref\ncni: reference\nswitch: ovs\n"
                                    "nodes: {count: 2}\npods: {perNode: 2}\n")
    c = lab(topo)
    conf = json.loads((c.node("node-1").dir / "cni/net.d/10-knetlab.conflist").read_text())
    assert conf["plugins"][0]["type"] == "bridge"
    assert c.nodes["node-1"].runtime.cni.cni_path == ["/usr/lib/cni"]
    assert c.check().ok


def test_knetlab_plugins_when_asked(lab, tmp_path: Path) -> None:
    # the reference plugins are the default for host-gw; knetlab's stay selectable
    topo = write_topology(tmp_path, "name: lab-kcni\ncni: knetlab\n"
                                    "nodes: {count: 2}\npods: {perNode: 2}\n")
    c = lab(topo)
    assert c.nodes["node-1"].runtime.cni.cni_path[0].endswith("knetlab/cni/bin")
    assert c.check().ok


def test_live_node_and_pod_changes(lab, tmp_path: Path) -> None:
    topo = write_topology(tmp_path, "name: lab-live\nnodes: {count: 2}\npods: {perNode: 1}\n")
    c = lab(topo)
    c.add_node("node-9")
    c.add_pod("late", "node-9")
    assert c.check().ok
    assert "10.244.3.0/24 via 192.168.0.13" in c.node("node-1").run(["ip", "route"]).stdout
    c.delete_pod("late")
    c.delete_node("node-9")
    assert "10.244.3.0/24" not in c.node("node-1").run(["ip", "route"]).stdout
    assert c.check().ok

    # Failed live additions roll back: the lab is left as it was, the name stays free.
    def shape() -> tuple[object, ...]:
        return (other_links(c.rundir.tag), set(c.net.nameToNode), list(c.nodes), list(c.pods),
                [n.name for n in c.spec.nodes], [p.name for p in c.spec.pods],
                c.node("node-1").run(["ip", "route"]).stdout)
    before = shape()
    for bad in ("averyverylongnode", "tor-1", "node-1"):
        with pytest.raises(KnetlabError, match="cannot add node"):
            c.add_node(bad)
    runtime = c.node("node-1").runtime.cni
    plugins, runtime.cni_path = runtime.cni_path, [str(tmp_path)]  # CNI ADD fails, netns made
    with pytest.raises(KnetlabError, match="doomed"):
        c.add_pod("doomed", "node-1")
    runtime.cni_path = plugins
    sync, calls = c.backend.sync, []

    def failing_sync() -> None:  # the node is half built (uplink, data plane) when this fails
        calls.append(1)
        if len(calls) == 1:
            raise KnetlabError("injected sync failure")
        sync()
    c.backend.sync = failing_sync
    with pytest.raises(KnetlabError, match="injected"):
        c.add_node("node-7")
    c.backend.sync = sync
    assert shape() == before
    c.add_node("node-7")
    c.add_pod("doomed", "node-7")
    report = c.check()
    assert report.ok, [(f.src.name, f.dst.name, f.error) for f in report.failures]


def test_bring_up_failure_leaves_nothing(tmp_path: Path) -> None:
    before_links = other_links(RunDir("lab-fail").tag)
    topo = write_topology(tmp_path, "name: lab-fail\nnodes: {count: 2}\npods: {perNode: 1}\n")
    c = Cluster.load(topo)
    c.spec.pods[1].node = "node-404"  # fails at CNI time, after namespaces exist
    with pytest.raises(Exception, match="node-404"):
        c.up()
    assert other_links(RunDir("lab-fail").tag) == before_links
    assert not RunDir("lab-fail").exists()


def test_cli_detached_lifecycle_leaves_machine_as_before(tmp_path: Path) -> None:
    rd = RunDir("lab-cli")
    before_links, before_mounts = other_links(rd.tag), mounts()
    topo = write_topology(tmp_path, "name: lab-cli\nnodes: {count: 2}\npods: {perNode: 2}\n")
    out = knetlab("up", "-d", str(topo)).stdout
    assert "pod-2-1" in out
    try:
        status = json.loads(knetlab("status", "--cluster", "lab-cli", "-o", "json").stdout)
        assert set(status) >= {"cluster", "dataplane", "nodes", "pods"}
        assert status["nodes"][0] == {"name": "node-1", "ip": "192.168.0.11",
                                      "podCIDR": "10.244.1.0/24", "rack": 1}
        pod_ip = status["pods"][3]["ip"]
        p = knetlab("exec", "--cluster", "lab-cli", "pod-1-0", "--", "ping", "-c1", "-W2", pod_ip)
        assert "1 received" in p.stdout
        p = knetlab("exec", "--cluster", "lab-cli", "node-1", "--", "sh", "-c",
                    "echo out; echo err >&2; exit 7", check=False)
        assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
        assert "OK" in knetlab("check", "--cluster", "lab-cli").stdout
        knetlab("node", "--cluster", "lab-cli", "add", "node-3")
        knetlab("pod", "--cluster", "lab-cli", "add", "extra", "--node", "node-3")
        # 5 topology pods and the cluster DNS pod, 3 nodes: 6 x 5 + 3 x 6
        assert "48/48 probes passed" in knetlab("check", "--cluster", "lab-cli").stdout
        pids = owned_pids(rd)
        assert len(pids) >= 3 + 5 + 1  # node shells, pod shells, the switch's shell
    finally:
        knetlab("down", "--cluster", "lab-cli")
    assert other_links(rd.tag) == before_links
    assert not alive(pids)
    assert mounts() == before_mounts
    assert not rd.exists()


def test_kill_9_mid_bring_up_then_clean(tmp_path: Path) -> None:
    before_links = other_links(RunDir("lab-kill").tag)
    topo = write_topology(tmp_path, "name: lab-kill\nnodes: {count: 6}\npods: {perNode: 6}\n")
    sup = subprocess.Popen([sys.executable, "-m", "knetlab.supervisor", str(topo)],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    rd = RunDir("lab-kill")
    deadline = time.monotonic() + 30
    # wait until it is mid-way: some pods exist, bring-up not finished
    while time.monotonic() < deadline:
        owned = rd.owned()
        if sum(1 for e in owned if e.get("kind") == "pid" and "pod-" in e.get("name", "")) >= 3:
            break
        time.sleep(0.005)
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    assert rd.exists(), sup.stdout.read() if sup.stdout else ""
    pids = owned_pids(rd)
    assert alive(pids), "the lab was killed mid-way: its shells still hold namespaces"
    knetlab("clean", "--cluster", "lab-kill")
    assert not alive(pids)
    assert other_links(rd.tag) == before_links
    assert not rd.exists()


def test_bad_topology_cli_error_is_one_line(tmp_path: Path) -> None:
    topo = write_topology(tmp_path, "name: lab-bad\nunderlay:\n  type: ring\n")
    p = knetlab("up", "--batch", str(topo), check=False)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "underlay.type" in p.stderr and ":3:" in p.stderr
    assert not RunDir("lab-bad").exists()


def test_example_experiment_script_runs() -> None:
    """The README's scripted-experiment example works as shipped."""
    script = Path(__file__).resolve().parent.parent / "examples" / "experiment.py"
    p = subprocess.run([sys.executable, str(script), str(TOPOLOGIES / "default.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check OK" in p.stdout and "cross node" in p.stdout


def test_clean_stops_a_running_supervisor(tmp_path: Path) -> None:
    topo = write_topology(tmp_path, "name: lab-sup\nnodes: {count: 2}\npods: {perNode: 1}\n")
    knetlab("up", "-d", str(topo))
    rd = RunDir("lab-sup")
    state = rd.read_state()
    assert state and pid_alive(state["owner_pid"], state["owner_match"])
    knetlab("clean", "--cluster", "lab-sup")
    deadline = time.monotonic() + 10
    while pid_alive(state["owner_pid"], state["owner_match"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(state["owner_pid"], state["owner_match"])
    assert not rd.exists()
