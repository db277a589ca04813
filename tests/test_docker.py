"""Docker networking on a knetlab lab, with real packets: every row of Docker's publishing
table from an outside host and from another node (tcp and udp, -P too), 127.0.0.1
publishing, egress MASQUERADE, hairpin, "port is already allocated", isolated user
bridges, macvlan (parent limitation and the shim), overlay VXLAN across nodes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from knetlab.cluster import Cluster
from knetlab.errors import KnetlabError
from knetlab.nodes.host import NetnsHost
from tests.conftest import TOPOLOGIES, needs_root, write_topology

pytestmark = [needs_root, pytest.mark.e2e]
ECHO = str(Path(__file__).resolve().parent.parent / "examples" / "docker" / "echo.py")
EXT_IP = "192.168.0.200"


def until(fn: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return fn()


def ask(host: NetnsHost, proto: str, ip: str, port: int) -> str:
    return host.run([sys.executable, ECHO, "client", proto, ip, str(port)], check=False,
                    timeout=10).stdout.strip()


def reaches(host: NetnsHost, proto: str, ip: str, port: int, timeout: float = 5.0) -> str:
    """The answer once the server is up (polled to a deadline), or '' if it never comes."""
    got = ""

    def once() -> bool:
        nonlocal got
        got = ask(host, proto, ip, port)
        return not got.startswith("error")
    return got if until(once, timeout) else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    text = (TOPOLOGIES / "default.yaml").read_text().replace("name: default", "name: dktest")
    c = Cluster.load(write_topology(tmp_path_factory.mktemp("dk"), text))
    c.up()
    try:
        assert c.underlay and c.net
        sw = c.underlay.switches[1]
        ext = c.net.addHost("dkext", cls=NetnsHost, rundir=c.rundir, ip=None)
        link = c.net.addLink(ext, sw)
        sw.attach(link.intf2)
        ext.ip_batch([f"addr add {EXT_IP}/24 dev {link.intf1.name}",
                      f"link set {link.intf1.name} up", "link set lo up"])
        yield c
    finally:
        c.down()


def docker(c: Cluster, node: str, *argv: str) -> str:
    return c.docker(node, list(argv))


def serve(c: Cluster, node: str, name: str, *flags: str, ports: str = "80 81") -> None:
    docker(c, node, "run", "-d", "--name", name, *flags, "echo-img", sys.executable, ECHO,
           "serve", *ports.split())


def test_publishing_table(lab: Cluster) -> None:
    n1, n2 = lab.node("node-1"), lab.node("node-2")
    ip = n1.node_ip
    serve(lab, "node-1", "tbl", "-p", "8080:80", "-p", f"{ip}:8081:80", "-p", "8082:80/udp",
          "-p", "8083:80/tcp", "-p", "8083:80/udp", "-p", "8090-8091:80-81", "-p", "80",
          "-p", "127.0.0.1:8084:80", "-p", "127.0.0.1::81", "-P", "--expose", "81/udp")
    ports = docker(lab, "node-1", "port", "tbl")
    rnd = {line.split(" -> ")[0] + "@" + line.split(":")[0].split(" -> ")[1]:
           int(line.rsplit(":", 1)[1]) for line in ports.splitlines()}
    assert "80/tcp -> 0.0.0.0:8080" in ports and "80/udp -> 0.0.0.0:8082" in ports
    ext = lab.host("dkext")
    rows = [("tcp", 8080, 80), ("tcp", 8081, 80), ("udp", 8082, 80), ("tcp", 8083, 80),
            ("udp", 8083, 80), ("tcp", 8090, 80), ("tcp", 8091, 81),
            ("tcp", rnd["80/tcp@0.0.0.0"], 80), ("udp", rnd["81/udp@0.0.0.0"], 81)]
    assert rnd["81/udp@0.0.0.0"] >= 32768  # -P: from the ephemeral range
    for proto, port, cport in rows:
        for src, src_ip in ((ext, EXT_IP), (n2, n2.node_ip)):
            # DNAT only: the container sees the client's own address
            assert reaches(src, proto, ip, port) == f"{cport} peer={src_ip}", \
                f"{proto}/{port} from {src.name}"
    # 127.0.0.1 bindings: refused from outside, served on the node itself (userland proxy)
    assert ask(ext, "tcp", ip, 8084).startswith("error")
    assert reaches(n1, "tcp", "127.0.0.1", 8084).startswith("80 ")
    assert reaches(n1, "tcp", "127.0.0.1", rnd["81/tcp@127.0.0.1"]).startswith("81 ")
    assert reaches(n1, "tcp", ip, 8080).startswith("80 ")  # from the node (OUTPUT DNAT)
    # hairpin: the container reaches its own published port through the node IP
    assert reaches(lab.host("tbl"), "tcp", ip, 8080).startswith("80 ")
    assert "0.0.0.0:8080->80/tcp" in docker(lab, "node-1", "ps")
    docker(lab, "node-1", "rm", "-f", "tbl")


def test_outside_sees_node_ip_and_direct_access_is_dropped(lab: Cluster) -> None:
    n1, n2 = lab.node("node-1"), lab.node("node-2")
    serve(lab, "node-2", "peer2", "-p", "9000:80")
    serve(lab, "node-1", "egress1")
    try:
        # egress: the server on node-2 sees node-1's IP (MASQUERADE), not 172.17.0.x
        got = reaches(lab.host("egress1"), "tcp", n2.node_ip, 9000)
        assert got == f"80 peer={n1.node_ip}"
        # an unpublished container port is not reachable from outside
        assert ask(lab.host("dkext"), "tcp", n1.node_ip, 80).startswith("error")
    finally:
        docker(lab, "node-2", "rm", "-f", "peer2")
        docker(lab, "node-1", "rm", "-f", "egress1")


def test_port_conflict_changes_nothing_and_rm_removes_exactly(lab: Cluster) -> None:
    n1 = lab.node("node-1")
    before = n1.run(["iptables-save"]).stdout
    serve(lab, "node-1", "a1", "-p", "7070:80")
    with_a1 = n1.run(["iptables-save"]).stdout
    with pytest.raises(KnetlabError, match="Bind for 0.0.0.0:7070 failed: port is already "
                                           "allocated"):
        serve(lab, "node-1", "a2", "-p", "7071:80", "-p", "7070:80")
    after = n1.run(["iptables-save"]).stdout
    strip = lambda t: [x for x in t.splitlines() if not x.startswith("#")]  # noqa: E731
    assert strip(after) == strip(with_a1) and "docker: a2" not in after
    assert "a2" not in lab.net.nameToNode  # type: ignore[union-attr]
    docker(lab, "node-1", "rm", "-f", "a1")
    assert strip(n1.run(["iptables-save"]).stdout) == strip(before)


def test_loopback_with_route_localnet(lab: Cluster) -> None:
    n3 = lab.node("node-3")
    docker(lab, "node-3", "daemon", "--userland-proxy=false")
    serve(lab, "node-3", "lo3", "-p", "127.0.0.1:8084:80", "-p", "127.0.0.1:8085:80/udp")
    try:
        assert reaches(n3, "tcp", "127.0.0.1", 8084).startswith("80 ")
        assert reaches(n3, "udp", "127.0.0.1", 8085).startswith("80 ")
        assert ask(lab.host("dkext"), "tcp", n3.node_ip, 8084).startswith("error")
    finally:
        docker(lab, "node-3", "rm", "-f", "lo3")
        docker(lab, "node-3", "daemon", "--userland-proxy=true")


def test_user_bridges_are_isolated(lab: Cluster) -> None:
    docker(lab, "node-2", "network", "create", "blue")
    docker(lab, "node-2", "network", "create", "-d", "bridge", "--subnet", "172.30.0.0/24",
           "red")
    serve(lab, "node-2", "b1", "--network", "blue")
    serve(lab, "node-2", "b2", "--network", "blue")
    serve(lab, "node-2", "r1", "--network", "red")
    try:
        inspect = docker(lab, "node-2", "network", "inspect", "blue")
        b2_ip = inspect.split('"Name": "b2"')[1].split('"IPv4Address": "')[1].split("/")[0]
        assert reaches(lab.host("b1"), "tcp", b2_ip, 80).startswith("80 ")
        assert ask(lab.host("r1"), "tcp", b2_ip, 80).startswith("error")
        assert "172.30.0.2/24" in docker(lab, "node-2", "network", "inspect", "red")
        # the endpoint's MAC is the container's eth0 (read in its namespace, not from sysfs)
        mac = inspect.split('"Name": "b2"')[1].split('"MacAddress": "')[1].split('"')[0]
        assert f"link/ether {mac} " in lab.host("b2").cmd("ip -o link show eth0")
    finally:
        docker(lab, "node-2", "rm", "-f", "b1", "b2", "r1")
        docker(lab, "node-2", "network", "rm", "blue", "red")
    assert "blue" not in docker(lab, "node-2", "network", "ls")


def _ping(host: NetnsHost, ip: str) -> bool:
    return host.run(["ping", "-c1", "-W1", ip], check=False).ok


def test_macvlan_parent_limitation_and_shim(lab: Cluster) -> None:
    n1, n2 = lab.node("node-1"), lab.node("node-2")
    for node, rng in (("node-1", "192.168.0.128/28"), ("node-2", "192.168.0.144/28")):
        docker(lab, node, "network", "create", "-d", "macvlan", "--subnet", "192.168.0.0/24",
               "--ip-range", rng, "-o", f"parent={node}-eth0", "mac")
    serve(lab, "node-1", "m1", "--network", "mac")
    serve(lab, "node-2", "m2", "--network", "mac")
    try:
        assert until(lambda: _ping(lab.host("m1"), "192.168.0.145"))  # m2, other node
        assert _ping(lab.host("m1"), n2.node_ip)
        assert not _ping(lab.host("m1"), n1.node_ip)  # its own parent: documented limit
        assert not _ping(n1, "192.168.0.129")
        docker(lab, "node-1", "rm", "-f", "m1")
        docker(lab, "node-1", "network", "rm", "mac")
        docker(lab, "node-1", "network", "create", "-d", "macvlan", "--subnet",
               "192.168.0.0/24", "--ip-range", "192.168.0.128/28", "--aux-address",
               "host=192.168.0.142", "mac")
        serve(lab, "node-1", "m1", "--network", "mac")
        assert until(lambda: _ping(n1, "192.168.0.129"))  # through the shim
        got = reaches(n1, "tcp", "192.168.0.129", 80)
        assert got.startswith("80 "), ask(n1, "tcp", "192.168.0.129", 80)
    finally:
        for node, name in (("node-1", "m1"), ("node-2", "m2")):
            docker(lab, node, "rm", "-f", name)
            docker(lab, node, "network", "rm", "mac")


def test_overlay_between_nodes_is_vxlan(lab: Cluster) -> None:
    n2 = lab.node("node-2")
    docker(lab, "node-1", "network", "create", "-d", "overlay", "--subnet", "10.0.9.0/24",
           "ov")
    assert "overlay   swarm" in docker(lab, "node-3", "network", "ls")  # from the store
    serve(lab, "node-1", "o1", "--network", "ov")
    serve(lab, "node-3", "o3", "--network", "ov")
    try:
        assert until(lambda: _ping(lab.host("o1"), "10.0.9.3"))
        seen: list[str] = []
        cap = threading.Thread(target=lambda: seen.append(lab.node("node-3").run(
            ["timeout", "8", "tcpdump", "-l", "-nn", "-c", "2", "-i", "node-3-eth0",
             "udp", "port", "4789"], check=False).stdout))
        cap.start()
        until(lambda: _ping(lab.host("o1"), "10.0.9.3") and not cap.is_alive(), 9)
        cap.join()
        assert "VXLAN" in seen[0] and "vni" in seen[0]
        assert reaches(lab.host("o3"), "tcp", "10.0.9.2", 80).startswith("80 ")
        view = docker(lab, "node-2", "network", "inspect", "ov")
        assert '"Peers"' in view and lab.node("node-1").node_ip in view
        assert n2.run(["ip", "link", "show", "type", "vxlan"]).stdout == ""  # never joined
        # knetlab's own keys in the lab's etcd, under its prefix beside flannel's and Calico's
        assert lab.store is not None
        assert set(lab.store.list("/knetlab/docker/overlay/ov/endpoints")) >= {
            "/knetlab/docker/overlay/ov/endpoints/o1", "/knetlab/docker/overlay/ov/endpoints/o3"}
    finally:
        docker(lab, "node-1", "rm", "-f", "o1")
        docker(lab, "node-3", "rm", "-f", "o3")
        docker(lab, "node-1", "network", "rm", "ov")


def test_cli_through_supervisor(tmp_path: Path) -> None:
    text = (TOPOLOGIES / "default.yaml").read_text().replace("name: default", "name: dkcli")
    topo = write_topology(tmp_path, text)
    kl = [str(Path(sys.executable).with_name("knetlab"))]
    subprocess.run([*kl, "up", "-d", str(topo)], check=True, capture_output=True, timeout=60)
    try:
        out = subprocess.run([*kl, "docker", "--cluster", "dkcli", "node-1", "run", "-d",
                              "--name", "web", "-p", "8080:5000", "python", "python3", "-m",
                              "http.server", "5000"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        port = subprocess.run([*kl, "docker", "--cluster", "dkcli", "node-1", "port", "web"],
                              capture_output=True, text=True, timeout=30).stdout
        assert port == "5000/tcp -> 0.0.0.0:8080\n"
        bad = subprocess.run([*kl, "docker", "--cluster", "dkcli", "node-1", "run", "-p",
                              "8080:80", "x"], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "port is already allocated" in bad.stderr
    finally:
        subprocess.run([*kl, "down", "--cluster", "dkcli"], timeout=120)
