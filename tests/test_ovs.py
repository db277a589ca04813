"""The Open vSwitch overlays (ovs-vxlan, ovs-gre) under the os-ken controller: the pipeline
on its own, then whole labs with real packets (tunnel headers seen on the underlay, a
50 MB transfer, controller killed and restarted, clean leaves nothing behind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from knetlab.overlays.ovs.pipeline import TABLES, NodeInfo, PodInfo, desired_flows
from tests.conftest import TOPOLOGIES, needs_root

N1 = NodeInfo("node-1", "192.168.0.11", "10.244.1.0/24", "10.244.1.1", 1)
N2 = NodeInfo("node-2", "192.168.0.12", "10.244.2.0/24", "10.244.2.1", 2)


def test_pipeline_is_a_pure_function_with_unique_cookies() -> None:
    pods = [PodInfo("a", "node-1", "10.244.1.2"), PodInfo("b", "node-2", "10.244.2.2")]
    flows = desired_flows(N1, [N1, N2], pods, 42)
    cookies = [f.cookie for f in flows]
    assert len(set(cookies)) == len(cookies)
    assert cookies == [f.cookie for f in desired_flows(N1, [N1, N2], pods, 42)]
    assert {f.table.name for f in flows} == {t.name for t in TABLES}
    # A remote pod changes nothing on node-1 (its node's subnet is routed as a whole);
    # a local pod adds exactly its ARP, L3 and output flows.
    fewer = {f.cookie for f in desired_flows(N1, [N1, N2], pods[1:], 42)}
    assert fewer < set(cookies) and len(set(cookies) - fewer) == 3
    assert {f.cookie for f in desired_flows(N1, [N1, N2], pods[:1], 42)} == set(cookies)
    tunnel = [f for f in flows if ("set", "tun_ipv4_dst", N2.ip) in f.actions]
    assert len(tunnel) == 1 and ("set", "tunnel_id", 42) in tunnel[0].actions


def _underlay_capture(node, bpf: str, send) -> str:  # noqa: ANN001
    """tcpdump on the node's uplink (the underlay wire) while ``send()`` runs."""
    proc = subprocess.Popen(["nsenter", f"--net={node.netns}", "--", "tcpdump", "-l", "-nn",
                             "-v", "-c", "2", "-i", node.uplink, bpf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()  # printed once the filter is set
        send()
        out, _ = proc.communicate(timeout=10)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ping(src, dst_ip: str, deadline_s: float = 5.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if src.run(["ping", "-c1", "-W1", dst_ip], check=False).ok:
            return True
    return False


def _flow_counts(c, node: str) -> Counter:  # noqa: ANN001
    dump = c.backend.switches[node].ofctl("dump-flows", "--no-stats")
    return Counter(line.split(",")[0] for line in dump.splitlines() if "cookie=" in line)


def _drift_is_repaired_on_reconnect(c) -> None:  # noqa: ANN001
    """A flow added by hand and a desired flow deleted by hand: on reconnect the
    controller dumps the switch and makes it exactly the desired set again."""
    sw = c.backend.switches["node-2"]
    want = _flow_counts(c, "node-2")
    sw.ofctl("add-flow", "table=20,priority=300,ip,nw_dst=10.244.1.2,actions=drop")
    sw.ofctl("del-flows", "--strict", "table=40,priority=100,dl_dst=0a:58:0a:f4:02:01")
    assert _flow_counts(c, "node-2") != want
    controller = sw.ovs.vsctl("get-controller", "br-int").strip()
    sw.ovs.vsctl("del-controller", "br-int")
    sw.ovs.vsctl("set-controller", "br-int", controller)
    deadline = time.monotonic() + 10
    while _flow_counts(c, "node-2") != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _flow_counts(c, "node-2") == want


def _pod_wired_by_agent(c, pod, node_name: str) -> None:  # noqa: ANN001
    """The node's CNI agent served the pod's ADD; its host port is a port of the down
    ``ovs-sink`` bridge (the kernel drops its frames; vswitchd reads them first) and has
    no IPv6; the pod's eth0 has tx checksum offload off."""
    node, sw = c.node(node_name), c.backend.switches[node_name]
    log = sw.agent.log_file.read_text()
    assert "ADD " in log and "exit 0" in log, log[-2000:]
    port = sw.ovs.vsctl("--bare", "--columns=name", "find", "interface",
                        f"external_ids:ip={pod.ip}").strip()
    assert port, f"no OVS port with external_ids:ip={pod.ip}"
    shown = node.run(["ip", "-d", "link", "show", port]).stdout
    assert "master ovs-sink" in shown and "state disabled" in shown, shown
    assert not node.run(["ip", "-6", "addr", "show", "dev", port]).stdout.strip()
    features = pod.run(["ethtool", "-k", "eth0"]).stdout
    assert "tx-checksumming: off" in features, features


def _add_pod_watching_links(c, name: str, node_name: str):  # noqa: ANN001, ANN202
    """Add pod ``name`` while recording the node's link changes. Every change of its host
    port (creation, up, promiscuous, carrier, operstate) happens within the ADD, so none
    reaches vswitchd after it opened the port: each would cost a reconfiguration of the
    whole switch, and one more for the open port (an operstate change left to the
    kernel's linkwatch worker comes up to a second later)."""
    node = c.node(node_name)
    mon = subprocess.Popen(["nsenter", f"--net={node.netns}", "--", "ip", "-ts", "-o",
                            "monitor", "link"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # ip has subscribed (no output to wait for)
        pod = c.add_pod(name, node_name)
        returned = time.time()
    finally:
        mon.terminate()
        out, _ = mon.communicate(timeout=5)
    port = c.backend.switches[node_name].ovs.vsctl(
        "--bare", "--columns=name", "find", "interface", f"external_ids:ip={pod.ip}").strip()
    changes = [line for line in out.splitlines() if f"{port}@" in line]
    opened = [line for line in changes if ",UP" in line]
    assert opened and all("PROMISC" in line and "LOWER_UP" in line for line in opened), out
    announced = [line for line in changes if "state UP" in line]
    assert announced, out
    stamp = announced[0][1:announced[0].index("]")]
    assert datetime.fromisoformat(stamp).timestamp() <= returned, (returned, announced)
    return pod


@needs_root
@pytest.mark.e2e
def test_ovs_vxlan_end_to_end(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "ovs-vxlan.yaml")
    report = c.check()
    assert report.ok, [p.error or p for p in report.failures]
    shown = c.backend.flows("node-1")
    assert all(f"table {t.id} {t.name}" in shown for t in TABLES), shown
    a, b = c.pod("pod-1-0"), c.pod("pod-2-0")
    _drift_is_repaired_on_reconnect(c)
    out = _underlay_capture(c.node("node-2"), "udp port 4789",
                            lambda: a.run(["ping", "-c3", "-i0.2", b.ip], check=False))
    assert "vni 4242" in out and f"{a.ip} > {b.ip}" in out, out

    # 50 MB of TCP across nodes, time-limited.
    server = b.popen(["iperf3", "-s", "-1"])
    try:
        deadline = time.monotonic() + 5  # connect only once it listens: -1 serves one client
        while ":5201" not in b.run(["ss", "-ltnH"], check=False).stdout:
            assert time.monotonic() < deadline, "iperf3 server did not listen"
            time.sleep(0.05)
        res = a.run(["iperf3", "-c", b.ip, "-n", "50M", "-J", "--connect-timeout", "3000"],
                    check=False, timeout=60)
        assert res.ok and "sum_sent" in res.stdout, res
        end = json.loads(res.stdout)["end"]
        # iperf3's receiver window closes a little before the last bytes are counted.
        assert end["sum_sent"]["bytes"] >= 50 * 2**20
        assert end["sum_received"]["bytes"] >= 0.9 * 50 * 2**20
    finally:
        server.kill()
        server.wait()

    # Controller killed: secure-mode switches keep forwarding what they hold.
    ctl = c.backend.controller
    os.kill(ctl.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ctl.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ctl.alive()
    assert c.check().ok
    # A pod added while it is down gets its flows when it comes back, without duplicates.
    late = _add_pod_watching_links(c, "ov-late", "node-1")
    assert not _ping(c.pod("pod-3-0"), late.ip, 1.5)
    before = {n: sum(_flow_counts(c, n).values()) for n in ("node-1", "node-2")}
    ctl.start()
    c.backend.wait_programmed()
    assert _ping(c.pod("pod-3-0"), late.ip)
    for node in c.nodes:
        counts = _flow_counts(c, node)
        assert counts and max(counts.values()) == 1, counts
    # Its node gains its ARP, L3 and output flows; the others route its subnet already.
    assert sum(_flow_counts(c, "node-1").values()) == before["node-1"] + 3
    assert sum(_flow_counts(c, "node-2").values()) == before["node-2"]
    _pod_wired_by_agent(c, late, "node-1")
    status = ctl.status()
    assert status["running"] and set(status["switches"]) == set(c.nodes)


@needs_root
@pytest.mark.e2e
def test_ovs_gre_end_to_end_and_clean(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "ovs-gre.yaml")
    report = c.check()
    assert report.ok, [p.error or p for p in report.failures]
    a, b = c.pod("pod-1-0"), c.pod("pod-3-1")
    out = _underlay_capture(c.node("node-3"), "proto gre",
                            lambda: a.run(["ping", "-c3", "-i0.2", b.ip], check=False))
    assert "key=0x4d" in out and f"{a.ip} > {b.ip}" in out, out
    # Added and deleted while running: flows follow within a second.
    t = time.monotonic()
    extra = c.add_pod("ov-extra", "node-2")
    assert _ping(a, extra.ip, 2.0) and time.monotonic() - t < 3.0
    sw = c.backend.switches["node-2"]
    port = sw.ovs.vsctl("--bare", "--columns=name", "find", "interface",
                        f"external_ids:ip={extra.ip}").strip()
    c.delete_pod("ov-extra")
    # DEL took the port off br-int (its Interface row with it) and deleted the host veth
    assert port and port not in sw.ovs.vsctl("list-ports", "br-int").split()
    assert not sw.ovs.vsctl("--bare", "--columns=name", "find", "interface",
                            f"name={port}").strip()
    assert not c.node("node-2").run(["ip", "link", "show", port], check=False).ok
    # `knetlab clean` (as after a crash) leaves no OVS process, database or socket.
    run = c.rundir.path
    subprocess.run([str(Path(os.sys.executable).parent / "knetlab"), "clean", "--cluster",
                    c.spec.name], check=True, capture_output=True)
    left = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if f"{run}/".encode() in cmd:  # not /run/knetlab/ov-gre-ls of another lab
                left.append(cmd)
    assert not left, left
    assert not run.exists()


@needs_root
@pytest.mark.e2e
def test_ovs_gre_leaf_spine(lab) -> None:  # noqa: ANN001
    c = lab(TOPOLOGIES / "ovs-gre-leaf-spine.yaml")
    report = c.check()
    assert report.ok, [p.error or p for p in report.failures]
    # The node IP moved to br-phy and the route to the fabric moved with it.
    route = c.node("node-1").run(["ip", "route", "show", "192.168.0.0/16"]).stdout
    assert "dev br-phy" in route
    # A node joins rack 2 of the running lab, another leaves: the overlay follows.
    c.add_node("node-5", rack=2)
    c.add_pod("ov-p5", "node-5")
    c.delete_node("node-2")
    report = c.check()
    assert report.ok, [p.error or p for p in report.failures]


def test_flows_are_shown_by_table_name() -> None:
    from knetlab.overlays.ovs.backend import format_flows
    dump = ("OFPST_FLOW reply (OF1.3) (xid=0x2):\n"
            " cookie=0x1, priority=100,arp actions=goto_table:10\n"
            " cookie=0x2, table=40, priority=100,dl_dst=0a:58:0a:f4:01:01 actions=output:2\n")
    shown = format_flows(dump).splitlines()
    assert shown[0].startswith("table 0 Classifier") and "cookie=0x1" in shown[1]
    assert shown[2].startswith("table 40 LocalOutput") and "output:2" in shown[3]
