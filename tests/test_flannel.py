"""flannel data planes (issue 3): leases, agents, and real packets per backend.

Each e2e test builds a lab (cluster names start with ``fl``), proves the k8s network model
with ``check``, looks at the underlay with tcpdump, moves 50 MB with iperf3 pod to pod
across nodes (catches MTU mistakes), and exercises live membership and self-healing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root, poll, write_topology

from knetlab.errors import ConfigError
from knetlab.overlays.flannel import subnet
from knetlab.topologies.schema import load_topology

HOSTGW = """
name: fl-hostgw
dataplane: host-gw
nodes: {count: 3}
pods: {perNode: 2}
"""


# -- validation (no root needed) -------------------------------------------------------------

@pytest.mark.parametrize("text, field", [
    ("dataplane: flannel-vxlan\nflannel: {Backend: {Type: udp}}\n", "flannel.Backend.Type"),
    ("dataplane: flannel-vxlan\nflannel: {Network: 10.245.0.0/16}\n", "flannel.Network"),
    ("dataplane: flannel-udp\nflannel: {Backend: {VNI: 2}}\n", "flannel.Backend.VNI"),
    ("dataplane: host-gw\nunderlay: {type: leaf-spine}\n", "dataplane"),
])
def test_bad_config_is_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_topology(write_topology(tmp_path, "name: fl-bad\n" + text))
    assert err.value.field == field and err.value.fix


def test_defaults_follow_the_cluster() -> None:
    spec = load_topology(TOPOLOGIES / "flannel-vxlan-leaf-spine.yaml")
    assert spec.dataplane_settings == {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {
        "Type": "vxlan", "Port": 8472, "VNI": 1, "DirectRouting": False}}


# -- helpers ------------------------------------------------------------------------------------

def nsenter(pid: int, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv]


def capture(lab, node: str, bpf: str, src: str, dst: str, extra: tuple[str, ...] = ()) -> str:
    """tcpdump on a node's underlay uplink while ``src`` pings ``dst``; return its output."""
    n = lab.node(node)
    proc = subprocess.Popen(nsenter(n.pid, ["tcpdump", "-l", "-nn", "-v", "-c", "4", "-i",
                                            n.uplink, *extra, bpf]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stderr.readline()
        lab.pod(src).run(["ping", "-c", "3", "-i", "0.1", "-W", "1", lab.pod(dst).ip])
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    return out


def iperf(lab, server: str, client: str, size: str = "50M") -> dict:
    srv = lab.pod(server)
    proc = subprocess.Popen(nsenter(srv.pid, ["iperf3", "-s", "-1", "-p", "5201"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while srv.run(["ss", "-ltn", "sport", "= :5201"]).stdout.count("LISTEN") == 0:
            assert time.monotonic() < deadline, "iperf3 server did not listen"
            time.sleep(0.05)
        out = lab.pod(client).run(["iperf3", "-c", srv.ip, "-p", "5201", "-n", size, "-J",
                                   "--connect-timeout", "3000"], timeout=60).stdout
    finally:
        proc.kill()
        proc.wait()
    return json.loads(out)


def wait_for(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - t0


def pings(lab, src: str, dst: str) -> bool:
    return lab.pod(src).run(["ping", "-c", "1", "-W", "1", lab.pod(dst).ip], check=False).ok


# -- e2e per backend -------------------------------------------------------------------------

CASES = {
    "vxlan": (TOPOLOGIES / "flannel-vxlan.yaml", "udp port 8472", ("-T", "vxlan"), "vni 1"),
    "vxlan-leaf-spine": (TOPOLOGIES / "flannel-vxlan-leaf-spine.yaml", "udp port 8472",
                         ("-T", "vxlan"), "vni 1"),
    "udp": (TOPOLOGIES / "flannel-udp.yaml", "udp port 8285", ("-x",), ".8285: UDP"),
    "host-gw": (None, "icmp", (), "10.244.1.2 > 10.244.2.2: ICMP echo request"),
}


@needs_root
@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_backend_end_to_end(lab, tmp_path: Path, case: str) -> None:
    path, bpf, extra, expect = CASES[case]
    c = lab(path or write_topology(tmp_path, HOSTGW))
    report = c.check()
    assert report.ok, [p.error or p for p in report.failures]
    dst = "pod-3-0" if case == "vxlan-leaf-spine" else "pod-2-0"  # node-3 is in rack 2
    out = capture(c, "node-1", bpf, "pod-1-0", dst, extra)
    assert expect in out, out
    dst_ip = c.pod(dst).ip
    if case == "udp":  # tcpdump does not decode flannel's UDP: the inner header, in hex
        inner = "0af4 0102 " + "".join(f"{int(o):02x}" for o in dst_ip.split(".")[:2]) + " " \
            + "".join(f"{int(o):02x}" for o in dst_ip.split(".")[2:])
    else:
        inner = f"10.244.1.2 > {dst_ip}: ICMP echo request"
    assert inner in out, out
    result = iperf(c, dst, "pod-1-0")
    # -n counts bytes written; TCP delivered them before iperf3 exchanges its results
    assert result["end"]["sum_sent"]["bytes"] >= 50 * 2**20, result["end"]
    assert result["end"]["sum_received"]["bytes"] > 0
    env = (c.backend.agents["node-1"].dir / "subnet.env").read_text()
    assert "FLANNEL_SUBNET=10.244.1.1/24" in env and "FLANNEL_NETWORK=10.244.0.0/16" in env
    # --ip-masq: leaving the pod network (to node-2's own address) a pod is its node;
    # pod to pod kept its address (check() above saw no NAT)
    assert peer_seen(c, "pod-1-0", c.node("node-2")) == c.node("node-1").node_ip


SEEN_SERVER = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 9099)); s.listen(); "
               "c, a = s.accept(); c.sendall(a[0].encode()); c.close()")


def peer_seen(lab, pod: str, server) -> str:
    """The source address ``server`` sees when ``pod`` connects to it."""
    srv = server.popen(["python3", "-c", SEEN_SERVER])
    try:
        got = ""
        for _ in range(50):  # the server needs a moment to listen
            res = lab.pod(pod).run(["python3", "-c", "import socket; print(socket."
                                    f"create_connection(('{server.node_ip}', 9099), 1)"
                                    ".recv(64).decode())"], check=False)
            if res.ok:
                got = res.stdout.strip()
                break
            time.sleep(0.05)
        return got
    finally:
        srv.kill()
        srv.wait()


@needs_root
@pytest.mark.e2e
def test_vxlan_membership_and_healing(lab) -> None:
    c = lab(TOPOLOGIES / "flannel-vxlan.yaml")
    n1 = c.node("node-1")
    flow = subprocess.Popen(nsenter(c.pod("pod-1-0").pid, [
        "ping", "-q", "-i", "0.05", "-c", "60", "-W", "1", c.pod("pod-2-0").ip]),
        stdout=subprocess.PIPE, text=True)
    new = c.add_node("node-4")
    leased = time.time()  # add_node returns once node-4's agent holds its lease
    lease = subnet.leases(c.store)[-1]
    assert lease["PublicIP"] == new.node_ip and lease["subnet"] == new.spec.pod_cidr

    def applied() -> dict:
        return json.loads((c.backend.agents["node-1"].dir / "applied.json").read_text())
    poll(lambda: new.spec.pod_cidr in applied()["peers"], 5.0, "node-1 programs node-4")
    lag = applied()["time"] - leased
    assert lag < 1.0, lag
    mac = lease["BackendData"]["VtepMAC"]
    fdb = n1.run(["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
    assert f"{mac} dst {new.node_ip}" in fdb
    c.add_pod("pod-4-0", "node-4")
    assert pings(c, "pod-1-0", "pod-4-0")
    c.delete_node("node-4")
    assert mac not in n1.run(["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
    assert "10.244.4.0" not in n1.run(["ip", "neigh", "show", "dev", "flannel.1"]).stdout
    assert "10.244.4.0" not in n1.run(["ip", "route"]).stdout
    out, _ = flow.communicate(timeout=30)
    assert " 0% packet loss" in out, out  # the running flow never noticed

    # Something deletes a route: the agent's periodic resync repairs it.
    n1.run(["ip", "route", "del", "10.244.2.0/24"])
    wait_for(lambda: pings(c, "pod-1-0", "pod-2-0"), 15, "route repair")

    # Kill the agent by pid and delete flannel.1 by hand: as a DaemonSet's pod, the agent
    # is started again after its back-off (1 s) and rebuilds the data path by itself.
    agent = c.backend.agents["node-1"]
    os.kill(agent.pid, signal.SIGKILL)
    wait_for(lambda: not agent.alive(), 5, "agent exit")
    n1.run(["ip", "link", "del", "flannel.1"])
    assert not pings(c, "pod-1-0", "pod-2-0")
    took = wait_for(lambda: pings(c, "pod-1-0", "pod-2-0"), 10, "agent restarted, path healed")
    assert took < 5, took
    # the path heals while the watchdog's start() still waits for the new agent's ready file
    wait_for(lambda: c.backend.agents["node-1"].pid != agent.pid, 5, "the new agent recorded")
    c.backend.restart_agent("node-1")  # stop and start it by hand, as the watchdog does
    assert c.check().ok


@needs_root
@pytest.mark.e2e
def test_vxlan_direct_routing_on_leaf_spine(lab, tmp_path: Path) -> None:
    """DirectRouting: a same-rack peer gets a plain route, the other rack goes via VXLAN."""
    text = (TOPOLOGIES / "flannel-vxlan-leaf-spine.yaml").read_text()
    text = text.replace("name: fl-vxlan-ls", "name: fl-vxlan-dr").replace(
        "Port: 8472}", "Port: 8472, DirectRouting: true}")
    c = lab(write_topology(tmp_path, text))
    routes = c.node("node-1").run(["ip", "route"]).stdout
    assert "10.244.2.0/24 via 192.168.1.12 dev node-1-eth0" in routes, routes
    assert "10.244.3.0/24 via 10.244.3.0 dev flannel.1" in routes, routes
    assert c.check().ok
