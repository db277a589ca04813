"""The weave data plane: IPAM ring and gossip (units), then one encrypted lab with
Kubernetes (mesh, status, kubelet pods over CNI, a node added live that learns the mesh
from one peer, a router restarted, a capture on the wire) and one small plain lab (the
sleeve's plaintext is visible on the wire, which makes the encrypted capture meaningful).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from knetlab.cluster import Cluster
from knetlab.errors import ConfigError
from knetlab.overlays.weave import crypto
from knetlab.overlays.weave.gossip import Peers
from knetlab.overlays.weave.ring import Allocator, Ring
from knetlab.topologies.schema import load_topology
from tests.conftest import needs_root, poll, running_lab, write_topology

MARKER = b"WEAVE-PLAINTEXT-MARKER-7f3a"
KNETLAB = [sys.executable, "-m", "knetlab.cli"]


# -- units: the ring, gossip, crypto ---------------------------------------------------

def test_ring_split_merge_and_rmpeer() -> None:
    a, b = Ring("10.32.0.0/12"), Ring("10.32.0.0/12")
    a.claim_all("n1")
    assert a.cidrs("n1") == ["10.32.0.0/12"]
    got = a.donate("n1", "n2", used={int(ipaddress.IPv4Address("10.32.0.1"))})
    assert got is not None and a.cidrs("n2") == ["10.40.0.0/13"]
    assert b.merge(a.to_wire()) and not b.merge(a.to_wire())  # idempotent
    assert b.cidrs("n2") == ["10.40.0.0/13"]
    # n2 splits its own range; merging in either order converges
    b.donate("n2", "n3", used=set())
    a.merge(b.to_wire())
    assert a.to_wire() == b.to_wire() and a.cidrs("n3") == ["10.44.0.0/14"]
    # an owner never donates addresses in use
    full = Ring("10.0.0.0/30")
    full.claim_all("x")
    assert full.donate("x", "y", used=set(), min_size=1) == (2 + int(full.start), 4 +
                                                             int(full.start))
    assert a.take_over("n1", "n3") == 1 << 18 and a.cidrs("n3") == []
    assert b.merge(a.to_wire()) and b.owners() == {"n1": 1 << 19 | 1 << 18, "n2": 1 << 18}


def test_allocator_skips_reserved_and_is_idempotent() -> None:
    ring = Ring("10.32.0.0/12")
    ring.claim_all("n1")
    alloc = Allocator(ring, "n1")
    first = alloc.allocate("c1")
    assert first == ring.start + 1  # never the range's network address
    assert alloc.allocate("c1") == first and alloc.allocate("c2") == first + 1
    assert alloc.release("c1") == first and alloc.allocate("c3") == first


def test_gossip_spreads_and_forgets_the_dead() -> None:
    p1, p2, p3 = Peers("n1", "u1", "a1"), Peers("n2", "u2", "a2"), Peers("n3", "u3", "a3")
    p1.set_connections(["n2"])
    p2.set_connections(["n1", "n3"])
    p3.set_connections(["n2"])
    p2.merge(p3.to_wire())
    p1.merge(p2.to_wire())  # n1 knows only n2 and learns n3 through it
    assert set(p1.table) == {"n1", "n2", "n3"} and p1.table["n3"].addr == "a3"
    p2.set_connections(["n1"])  # n3 died: n2 no longer lists it
    p1.merge(p2.to_wire())
    assert p1.forget_unreachable() == ["n3"]


def test_session_keys_need_the_same_password() -> None:
    a, b = crypto.Keypair(), crypto.Keypair()
    sa, sb = crypto.Session(a, b.public, b"pw"), crypto.Session(b, a.public, b"pw")
    box = crypto.seal(sa.sleeve, MARKER)
    assert MARKER not in box and crypto.open_box(sb.sleeve, box) == MARKER
    wrong = crypto.Session(b, a.public, b"other")
    with pytest.raises(crypto.CryptoError):
        crypto.open_box(wrong.sleeve, box)


def test_weave_settings_are_validated(tmp_path: Path) -> None:
    bad = {"password: 1234": "password", "ipallocRange: 192.168.0.0/16": "ipallocRange",
           "mtu: 70000": "mtu", "fastdp: true": "fastdp"}
    for line, field in bad.items():
        path = write_topology(tmp_path, f"name: wv-bad\ndataplane: weave\nweave:\n  {line}\n")
        with pytest.raises(ConfigError) as err:
            load_topology(path)
        assert f"weave.{field}" in str(err.value) and "fix:" in str(err.value)


# -- one encrypted lab with Kubernetes --------------------------------------------------

@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_lab("""
name: wv-t-enc
podCIDR: 10.32.0.0/12
dataplane: weave
weave: {password: s3cret-lab-pw}
nodes: {count: 2}
pods: {perNode: 1}
""", tmp_path_factory.mktemp("wv")) as c:
        yield c


def weave_status(cluster: str) -> dict[str, Any]:
    out = subprocess.run([*KNETLAB, "weave", "status", "--cluster", cluster, "-o", "json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def established(st: dict[str, Any] | None) -> set[str]:
    return {c["peer"] for c in (st or {}).get("connections", [])
            if c["state"] == "established"}


@needs_root
def test_mesh_status_and_fastdp_note(enc: Cluster) -> None:
    st = weave_status("wv-t-enc")
    assert established(st["node-1"]) == {"node-2"} and established(st["node-2"]) == {"node-1"}
    for s in st.values():
        assert s["mode"] == "sleeve" and s["encryption"] is True
        assert all(c["encrypted"] for c in s["connections"])
        assert ipaddress.ip_address(s["bridge"]["ip"]) in ipaddress.ip_network("10.32.0.0/12")
    owned = [set(s["ipam"]["owned"]) for s in st.values()]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    summary = "\n".join(enc.state()["summary"])
    assert "fastdp unavailable" in summary and "sleeve" in summary
    text = subprocess.run([*KNETLAB, "weave", "status", "--cluster", "wv-t-enc"],
                          capture_output=True, text=True, timeout=30).stdout
    assert "connections (1)" in text and "established encrypted" in text


@needs_root
def test_kubelet_pods_get_weave_addresses_and_talk(enc: Cluster) -> None:
    from kubernetes import client
    for node in ("node-1", "node-2"):
        enc.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"web-{node}", "labels": {"app": "wv"}},
                   "spec": {"nodeName": node, "containers": [{
                       "name": "netexec", "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                       "args": ["netexec", "--http-port=8080"]}]}})
    api = client.CoreV1Api(enc.kube)
    ips: dict[str, str] = {}

    def running() -> bool:
        for node in ("node-1", "node-2"):
            pod = api.read_namespaced_pod(f"web-{node}", "default")
            if pod.status.phase == "Running" and pod.status.pod_ip:
                ips[node] = pod.status.pod_ip
        return len(ips) == 2
    poll(running, 60, "both weave pods Running with an IP")
    for ip in ips.values():
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.32.0.0/12")
    src = enc.pod("pod-1-0")
    poll(lambda: "web-node-2" in src.cmd(f"curl -s --max-time 3 http://{ips['node-2']}:8080/"
                                         "hostname"), 30, "node-1's pod reaches web-node-2")


def run_plugin(name: str, command: str, conf: dict[str, Any], env: dict[str, str],
               netns: str | None = None) -> tuple[int, dict[str, Any] | None]:
    """Run knetlab's CNI plugin ``name`` (in ``netns`` if given) as a runtime does."""
    from knetlab.cni.runtime import KNETLAB_PLUGINS
    argv = [str(Path(KNETLAB_PLUGINS) / name)]
    if netns:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    p = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": KNETLAB_PLUGINS,
                            "CNI_IFNAME": "eth0", **env, "CNI_COMMAND": command})
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


@needs_root
def test_weave_net_plugin_is_served_by_the_router(enc: Cluster) -> None:
    """weave-net hands each invocation to the node's router (the bridge plugin and weave-ipam,
    warm): the lab's pods were wired there; an ADD by hand wires a pod that reaches the other
    node's, CHECK and DEL work; with no router listening the client runs the plugin itself;
    weave-ipam alone answers as a CNI IPAM plugin, its errors as the spec's JSON."""
    node, router = enc.node("node-1"), enc.backend.routers["node-1"]  # type: ignore[union-attr]
    assert re.search(r"weave\.cni: ADD \S+ eth0: exit 0 ",
                     (router.dir / "weave-router.log").read_text())
    net_d = enc.rundir.path / "nodes" / "node-1" / "cni" / "net.d" / "10-knetlab.conflist"
    conflist = json.loads(net_d.read_text())
    conf = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"],
            "name": conflist["name"]}
    assert conf["type"] == "weave-net" and conf["ipam"]["type"] == "weave-ipam"
    ns = "wvt-cni"
    env = {"CNI_CONTAINERID": "wvt-cni-1", "CNI_NETNS": f"/run/netns/{ns}"}
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        rc, result = run_plugin("weave-net", "ADD", conf, env, node.netns)
        assert rc == 0 and result, result
        ip = result["ips"][0]["address"].split("/")[0]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.32.0.0/12")
        ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c2", "-W2",
                               enc.pod("pod-2-0").ip], capture_output=True, text=True).stdout
        assert " 0% packet loss" in ping, ping
        assert run_plugin("weave-net", "CHECK", {**conf, "prevResult": result}, env,
                          node.netns)[0] == 0
        # No router listens in the scratch namespace: the client runs the plugin itself.
        assert run_plugin("weave-net", "VERSION", {}, env, f"/run/netns/{ns}") == (
            0, {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0",
                                                             "1.0.0", "1.1.0"]})
        assert run_plugin("weave-net", "DEL", conf, env, node.netns) == (0, None)
        assert "eth0" not in subprocess.run(["ip", "-n", ns, "link"], capture_output=True,
                                            text=True).stdout
    finally:
        run_plugin("weave-net", "DEL", conf, env, node.netns)
        subprocess.run(["ip", "netns", "del", ns])
    # weave-ipam on its own (no netns needed: it only asks the router)
    ipam = {"cniVersion": "1.0.0", "name": "weave", "ipam": conf["ipam"]}
    env = {"CNI_CONTAINERID": "wvt-ipam-1", "CNI_NETNS": "/run/netns/none"}
    rc, result = run_plugin("weave-ipam", "ADD", ipam, env)
    assert rc == 0 and result and result["ips"][0]["gateway"] == router.status()["bridge"]["ip"]
    assert run_plugin("weave-ipam", "CHECK", ipam, env)[0] == 0
    assert run_plugin("weave-ipam", "DEL", ipam, env) == (0, None)
    rc, err = run_plugin("weave-ipam", "CHECK", ipam, env)
    assert rc == 1 and err and err["code"] == 7  # released: CHECK says so
    gone = {**ipam, "ipam": {"type": "weave-ipam", "socket": "/nonexistent/weave.sock"}}
    rc, err = run_plugin("weave-ipam", "ADD", gone, env)
    assert rc == 1 and err and err["code"] == 11 and "cannot reach" in err["msg"]
    assert run_plugin("weave-ipam", "DEL", gone, env) == (0, None)  # DEL must succeed


@needs_root
def test_capture_on_the_wire_shows_no_plaintext(enc: Cluster, tmp_path: Path) -> None:
    n1 = enc.node("node-1")
    dst = enc.pod("pod-2-0").ip
    pcap = tmp_path / "enc.pcap"
    out = capture(n1, pcap, "udp", lambda: (
        enc.pod("pod-1-0").cmd(send_marker(dst)),  # pod to pod: through the sleeve
        n1.cmd(send_marker(enc.node("node-2").node_ip))),  # control: plain UDP on the wire
        lambda out: sleeve_frames(out) >= 10 and ".9999: UDP" in out)
    plain = out.count(".9999: UDP")
    # The plain datagrams node to node show the marker, so the capture would show it; the
    # same marker sent pod to pod crossed the same wire sealed: only the plain copies show.
    assert pcap.read_bytes().count(MARKER) == plain > 0


@needs_root
def test_node_added_learns_the_mesh_from_one_peer(enc: Cluster) -> None:
    enc.add_node("node-3")
    router = enc.backend.routers["node-3"]  # type: ignore[union-attr]
    argv = Path(f"/proc/{router.pid}/cmdline").read_bytes().split(b"\0")
    assert argv.count(b"--peer") == 1  # given one peer...
    poll(lambda: established(router.status()) == {"node-1", "node-2"}, 20,
         "node-3's router connected to both others")  # ...it found both
    pod = enc.add_pod("pod-3-0", "node-3")
    assert " 0% packet loss" in pod.cmd("ping -c2 -W2", enc.pod("pod-1-0").ip)
    enc.delete_node("node-3")
    poll(lambda: all("node-3" not in (r.status() or {}).get("ipam", {}).get("ring", {"node-3": 1})
                     for r in enc.backend.routers.values()), 20,  # type: ignore[union-attr]
         "node-3's ranges taken over (rmpeer)")


@needs_root
def test_router_restarted_keeps_addresses(enc: Cluster) -> None:
    backend = enc.backend
    old = backend.routers["node-2"]  # type: ignore[union-attr]
    uid = old.status()["uid"]
    owned = old.status()["ipam"]["owned"]
    subprocess.run(["kill", str(old.pid)], check=True)
    poll(lambda: (backend.routers["node-2"].status() or {}).get("uid")  # type: ignore[union-attr]
         not in (None, uid), 20, "a new router on node-2")
    new = backend.routers["node-2"]  # type: ignore[union-attr]
    poll(lambda: established(new.status()) == {"node-1"}, 20, "node-2 back in the mesh")
    assert new.status()["ipam"]["owned"] == owned
    assert " 0% packet loss" in enc.pod("pod-1-0").cmd("ping -c2 -W2", enc.pod("pod-2-0").ip)


# -- a plain lab: no password (frames in clear), no offload (one frame per MTU) ---------

@needs_root
def test_plain_sleeve_forwards_in_clear(lab: Any, tmp_path: Path) -> None:
    c = lab(write_topology(tmp_path, """
name: wv-t-plain
podCIDR: 10.32.0.0/12
dataplane: weave
weave: {mtu: 1376, offload: false}
kubernetes: false
nodes: {count: 2}
pods: {perNode: 1}
"""))
    assert c.check().ok
    dst = c.pod("pod-2-0").ip
    pcap = tmp_path / "plain.pcap"
    capture(c.node("node-1"), pcap, "udp port 6784",
            lambda: c.pod("pod-1-0").cmd(send_marker(dst)),
            lambda out: sleeve_frames(out) >= 10)
    assert pcap.read_bytes().count(MARKER) >= 10  # the frames, in clear inside the sleeve
    # ip, not /sys/class/net: sysfs shows the namespace that mounted it (the machine's)
    assert " mtu 1376 " in c.pod("pod-1-0").cmd("ip -o link show eth0")


def send_marker(ip: str) -> str:
    return (f"python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
            f"[s.sendto(b'{MARKER.decode()}'*1,('{ip}',9999)) for _ in range(10)]\"")


def capture(node: Any, pcap: Path, bpf: str, traffic: Any, enough: Any) -> str:
    """Capture on the node's uplink, sending ``traffic()`` until the capture read back
    (``tcpdump -q -n -r``) is ``enough``: on a loaded machine tcpdump may lag behind."""
    proc = subprocess.Popen(["nsenter", f"--net={node.netns}", "--", "tcpdump", "-i",
                             node.uplink, "-U", "-n", "-w", str(pcap), *bpf.split()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: pcap.exists() and pcap.stat().st_size > 0, 10, "tcpdump started")

        def sent_and_seen() -> bool:
            traffic()
            time.sleep(0.2)
            out = subprocess.run(["tcpdump", "-q", "-n", "-r", str(pcap)],
                                 capture_output=True, text=True).stdout
            return enough(out)
        poll(sent_and_seen, 30, f"the capture on {node.name} shows the traffic")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # Read again: packets written after the last look count too.
    return subprocess.run(["tcpdump", "-q", "-n", "-r", str(pcap)], capture_output=True,
                          text=True).stdout


def sleeve_frames(out: str) -> int:
    """Sleeve datagrams bigger than a heartbeat (47 bytes sealed, 7 plain): frames."""
    sizes = [int(m) for m in re.findall(r"\.6784 > \S+ UDP, length (\d+)", out)]
    return sum(1 for n in sizes if n > 60)


# -- two routers with different passwords, in scratch namespaces -----------------------

@needs_root
def test_routers_with_different_passwords_refuse_each_other(tmp_path: Path) -> None:
    """No lab: two namespaces joined by a veth, one router each, passwords differ. Each
    says why in its log, and neither forwards for the other."""
    ns = {"a": "wv-pw-a", "b": "wv-pw-b"}
    ips = {"a": "10.99.0.1", "b": "10.99.0.2"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for side in ns.values():
            subprocess.run(["ip", "netns", "add", side], check=True)
        subprocess.run(["ip", "link", "add", "wvpw0", "netns", ns["a"], "type", "veth",
                        "peer", "name", "wvpw1", "netns", ns["b"]], check=True)
        for side, dev in (("a", "wvpw0"), ("b", "wvpw1")):
            for cmd in (f"addr add {ips[side]}/24 dev {dev}", f"link set {dev} up",
                        "link set lo up"):
                subprocess.run(["ip", "-n", ns[side], *cmd.split()], check=True)
            (tmp_path / side).mkdir()
            (tmp_path / f"{side}.pw").write_text(f"password-{side}")
            other = "b" if side == "a" else "a"
            argv = ["ip", "netns", "exec", ns[side], sys.executable, "-m",
                    "knetlab.overlays.weave.router", "--run-dir", str(tmp_path / side),
                    "--name", f"peer-{side}", "--addr", ips[side], "--peer", ips[other],
                    "--password-file", str(tmp_path / f"{side}.pw")]
            log = (tmp_path / side / "log").open("wb")
            procs.append(subprocess.Popen(argv + (["--seed"] if side == "a" else []),
                                          stdout=log, stderr=log))
        poll(lambda: all("different password" in (tmp_path / s / "log").read_text()
                         for s in ("a", "b")), 30, "both routers report the wrong password")
        for side in ("a", "b"):
            st = json.loads((tmp_path / side / "status.json").read_text())
            assert st["connections"] == [] and not (side == "b" and st["ipam"]["owned"])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        for side in ns.values():
            subprocess.run(["ip", "netns", "del", side], check=False)
