"""``knetlab trace``, ``capture`` and ``graph``: real probes through real labs.

Unit tests decode hand-made frames (VXLAN, GRE, ICMP errors), write pcapng and DOT. The
e2e tests build small labs (2 nodes, 1 pod each, no Kubernetes) on each data plane and
assert the hops a real probe crossed: routed hops on host-gw and calico-bgp, the VXLAN hop
(VNI 1, UDP 8472) on flannel, the GRE hop (IP protocol 47) on OVS, a spine on
leaf-spine; the hop that dropped a packet (a blackhole route, an nft rule); and that no
probe packet was seen outside the lab's namespaces and switch ports.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab.cluster import Cluster
from knetlab.errors import KnetlabError
from knetlab.graph import to_dot
from knetlab.rundir import lab_tag
from knetlab.trace import Trace, format_trace, trace
from knetlab.trace.capture import IPV4_ICMP_UDP, Capture, Frame, Point
from knetlab.trace.packets import decode
from knetlab.trace.pcap import PcapngWriter
from knetlab.trace.probe import Probe
from tests.conftest import ROOT, needs_root, poll, write_topology

KNETLAB = str(ROOT / ".venv" / "bin" / "knetlab")


# -- unit: frames, probes, files ------------------------------------------------------

def _ip(src: str, dst: str, proto: int, body: bytes, ttl: int = 64) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, ttl, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body


def _eth(payload: bytes, etype: int = 0x0800) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + payload


def _icmp_echo(ident: int, kind: int = 8) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"KNETLAB-TRACEabcd"


def test_decode_vxlan_gre_and_icmp_errors() -> None:
    inner = _eth(_ip("10.244.1.2", "10.244.2.2", 1, _icmp_echo(77)))
    vxlan = struct.pack("!BBHI", 0x08, 0, 0, 1 << 8) + inner
    frame = _eth(_ip("192.168.0.11", "192.168.0.12", 17,
                     struct.pack("!HHHH", 40000, 8472, 8 + len(vxlan), 0) + vxlan))
    pkt = decode(frame)
    assert pkt is not None
    assert [(t.kind, t.vni, t.udp_port) for t in pkt.tunnels] == [("vxlan", 1, 8472)]
    assert (pkt.ip.src, pkt.ip.dst, pkt.l4.icmp_id) == ("10.244.1.2", "10.244.2.2", 77)
    assert "VXLAN vni 1 udp dport 8472" in pkt.text()

    gre = struct.pack("!HHI", 0x2000, 0x6558, 77) + inner  # key present, TEB payload
    pkt = decode(_eth(_ip("192.168.0.11", "192.168.0.12", 47, gre)))
    assert pkt is not None and pkt.tunnels[0].kind == "gre" and pkt.tunnels[0].key == 77
    assert "ip proto 47" in pkt.text() and pkt.outer.dst == "192.168.0.12"

    for head in (b"WVSF-", b"WVSG-" + b"\0" * 10):  # weave's sleeve, with or without vnet
        sleeve = struct.pack("!HHHH", 6784, 6784, 8 + len(head + inner), 0) + head + inner
        pkt = decode(_eth(_ip("192.168.0.11", "192.168.0.12", 17, sleeve)))
        assert pkt is not None and pkt.tunnels[0].kind == "weave" and pkt.l4.icmp_id == 77

    probe = Probe("udp", "10.244.2.2", 9999, sport=40001, icmp_id=5, nonce=b"x")
    quoted = _ip("10.244.1.2", "10.244.2.2", 17, struct.pack("!HHHH", 40001, 9999, 8, 0))
    error = _ip("10.244.2.2", "10.244.1.2", 1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    m = probe.matcher()
    udp = struct.pack("!HHHH", 40001, 9999, 8 + len(probe.payload), 0) + probe.payload
    assert m.leg(decode(_eth(_ip("10.244.1.2", "10.244.2.2", 17, udp)))) == "request"
    assert m.leg(decode(_eth(error))) == "reply"  # port unreachable about the probe
    other = struct.pack("!HHHH", 40001, 9999, 8 + 5, 0) + b"hello"
    assert m.leg(decode(_eth(_ip("10.244.1.2", "10.244.2.2", 17, other)))) is None
    # NAT gave the request another source port: the answer to that port is the reply
    natted = struct.pack("!HHHH", 50000, 9999, 8 + len(probe.payload), 0) + probe.payload
    assert m.leg(decode(_eth(_ip("10.244.1.1", "10.244.2.2", 17, natted)))) == "request"
    answer = struct.pack("!HHHH", 9999, 50000, 8 + 2, 0) + b"ok"
    assert m.leg(decode(_eth(_ip("10.244.2.2", "10.244.1.1", 17, answer)))) == "reply"
    assert decode(_eth(b"\0" * 28, 0x0806)) is None  # ARP is not a probe's business


def test_pcapng_is_read_by_tcpdump(tmp_path: Path) -> None:
    if not shutil.which("tcpdump"):
        pytest.skip("tcpdump not installed")
    out = tmp_path / "x.pcapng"
    w = PcapngWriter(out)
    frame = _eth(_ip("10.244.1.2", "10.244.2.2", 1, _icmp_echo(4242)))
    w.write(Frame(1_700_000_000.123456789, "pod-1-0", "eth0", True, 1, frame))
    w.write(Frame(1_700_000_000.2, "node-1", "flannel0", False, 0xFFFE,
                  _ip("10.244.1.2", "10.244.2.2", 1, _icmp_echo(4242))))
    w.close()
    res = subprocess.run(["tcpdump", "-nn", "-r", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and all("10.244.1.2 > 10.244.2.2: ICMP echo request, id 4242"
                                   in line for line in lines)


STATE = {"cluster": "tr-unit", "dataplane": "flannel-vxlan", "underlay": "leaf-spine",
         "switch": "linuxbridge",
         "nodes": [{"name": "node-1", "ip": "192.168.1.11", "podCIDR": "10.244.1.0/24",
                    "rack": 1},
                   {"name": "node-2", "ip": "192.168.2.12", "podCIDR": "10.244.2.0/24",
                    "rack": 2}],
         "pods": [{"name": "pod-1-0", "node": "node-1", "ip": "10.244.1.2"},
                  {"name": "pod-2-0", "node": "node-2", "ip": "10.244.2.2"}],
         "hosts": {h: {"pid": 1, "kind": "x"} for h in ("node-1", "node-2", "pod-1-0",
                                                          "pod-2-0", "tor-1", "tor-2",
                                                          "spine-1")}}


def test_graph_has_racks_routers_addresses_and_tunnels(tmp_path: Path) -> None:
    tag = lab_tag("tr-unit")
    dot = to_dot(STATE, [("pod-1-0", "request"), ("node-1", "request"),
                         (f"switch:{tag}s1", "request")])
    for needle in ("cluster_rack1", "cluster_rack2", '"spine-1" -- "tor-1"',
                   "10.244.1.2", "192.168.2.12", "VXLAN vni 1 udp 8472",
                   f'"switch:{tag}s1" -- "node-1"'):
        assert needle in dot, needle
    assert dot.count("dir=forward") == 2  # the traced path: pod -> node -> switch
    if shutil.which("dot"):
        from knetlab.graph import render
        png = render(dot, tmp_path / "lab.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KnetlabError, match="unknown picture format"):
        from knetlab.graph import render
        render(dot, tmp_path / "lab.jpg")


# -- e2e: one small lab per data plane --------------------------------------------------

TOPO = """
name: {name}
podCIDR: 10.244.0.0/16
dataplane: {plane}
underlay: {underlay}
nodes: {nodes}
pods: {{perNode: 1}}
kubernetes: false
"""
SEGMENT = "{type: segment, cidr: 192.168.0.0/24}"


def _lab(lab, tmp_path: Path, name: str, plane: str, underlay: str = SEGMENT,
         nodes: str = "{count: 2}") -> Cluster:
    return lab(write_topology(tmp_path, TOPO.format(name=name, plane=plane,
                                                    underlay=underlay, nodes=nodes)))


def _delivered(c: Cluster, src: str, dst: str, **kw: object) -> Trace:
    """Trace until delivered (a data plane converges asynchronously), return that trace."""
    found: list[Trace] = []

    def ok() -> bool:
        found[:] = [trace(c.state(), src, dst, **kw)]  # type: ignore[arg-type]
        return found[0].delivered and bool(found[0].reply)
    poll(ok, 30, f"a trace {src} -> {dst} delivered and answered")
    return found[0]


def _path(t: Trace, leg: str = "request") -> list[tuple[str, str, str]]:
    return [(h.where, h.ifname, h.direction) for h in (t.request if leg == "request"
                                                       else t.reply)]


@pytest.fixture(scope="module")
def hostgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    c = Cluster.load(write_topology(tmp_path_factory.mktemp("hg"), TOPO.format(
        name="tr-t-hg", plane="host-gw", underlay=SEGMENT, nodes="{count: 2}")))
    c.up()
    yield c
    c.down()


@needs_root
@pytest.mark.e2e
def test_host_gw_hops_and_nothing_leaves_the_lab(hostgw: Cluster) -> None:
    c = hostgw
    tag = lab_tag(c.spec.name)
    # Watch the whole root namespace (the machine's own and other labs' interfaces) while
    # tracing: the probe may appear only on this lab's switch ports there.
    root = Capture([Point("root", f"/proc/{os.getpid()}/ns/net")],
                   keep=lambda f: b"KNETLAB-TRACE" in f.data, bpf=IPV4_ICMP_UDP)
    with root:
        t = _delivered(c, "pod-1-0", "pod-2-0")
        udp = trace(c.state(), "pod-1-0", "pod-2-0", proto="udp", port=9)
    seen = root.frames
    leaks = [(f.ifname, f.data[:40]) for f in seen if not f.ifname.startswith(tag)]
    assert not leaks, f"probe packets seen outside lab {c.spec.name}: {leaks}"
    assert any(f.ifname.startswith(tag) for f in seen), "root capture saw the lab's ports"

    path = _path(t)
    assert path[0] == ("pod-1-0", "eth0", "out")
    assert path[-1] == ("pod-2-0", "eth0", "in")
    wheres = [w for w, _, _ in path]
    assert wheres.index("node-1") < wheres.index(f"switch:{tag}s1") < wheres.index("node-2")
    assert ("node-1", "node-1-eth0", "out") in path and ("node-2", "node-2-eth0", "in") in path
    out1 = next(h for h in t.request if h.ifname == "node-1-eth0")
    assert out1.packet.ip.ttl == 63 and not out1.packet.tunnels  # routed, not tunnelled
    cni0 = next(h for h in t.request if h.where == "node-1" and h.ifname == "cni0")
    assert "via 192.168.0.12 dev node-1-eth0" in cni0.route  # the host-gw route
    assert _path(t, "reply")[0] == ("pod-2-0", "eth0", "out")
    assert _path(t, "reply")[-1] == ("pod-1-0", "eth0", "in")
    assert [h.ts for h in t.hops] == sorted(h.ts for h in t.hops)
    # UDP to a closed port: the reply path is the ICMP port-unreachable
    assert udp.delivered and udp.reply and udp.reply[0].packet.l4.icmp_type == 3
    text = format_trace(t)
    assert "node-1-eth0" in text and "delivered" in text

    with pytest.raises(KnetlabError, match="outside lab"):
        trace(c.state(), "pod-1-0", "8.8.8.8")
    # From a node, whose masquerade (flannel's, --random-fully) rewrites the echo's id and
    # TCP's source port: the probe is still followed, by its payload and its SYN's MSS.
    for kw in ({}, {"proto": "tcp", "port": 80}):
        n = trace(c.state(), "node-1", "pod-2-0", **kw)  # type: ignore[arg-type]
        assert n.delivered and n.reply, format_trace(n)
        assert _path(n)[0] == ("node-1", "node-1-eth0", "out")
        assert _path(n, "reply")[-1] == ("node-1", "node-1-eth0", "in")


@needs_root
@pytest.mark.e2e
def test_dropped_by_a_rule_names_the_rule_and_hop(hostgw: Cluster) -> None:
    node2 = hostgw.node("node-2")
    node2.run(["nft", "-f", "-"], input="""table ip trtest {
  chain deny {
    type filter hook forward priority 0;
    ip daddr 10.244.2.2 tcp dport 81 counter drop
  }
}
""")
    try:
        t = trace(hostgw.state(), "pod-1-0", "pod-2-0", proto="tcp", port=81, wait=0.5)
    finally:
        node2.run(["nft", "delete", "table", "ip", "trtest"])
    assert not t.delivered and not t.reply
    assert _path(t)[-1] == ("node-2", "node-2-eth0", "in")
    assert "dropped in node-2" in t.lost and "trtest deny" in t.lost and "drop" in t.lost
    last = t.request[-1]
    assert any("trtest deny" in nf and "-> drop" in nf for nf in last.netfilter)
    # the trace's own nft tables are gone again
    for host in ("node-1", "node-2", "pod-1-0"):
        tables = hostgw.host(host).run(["nft", "list", "tables"]).stdout
        assert "kltrace" not in tables


@needs_root
@pytest.mark.e2e
def test_cli_trace_capture_and_graph(hostgw: Cluster, tmp_path: Path) -> None:
    name = hostgw.spec.name
    res = subprocess.run([KNETLAB, "trace", "--cluster", name, "pod-1-0", "pod-2-0",
                          "-o", "json", "--png", str(tmp_path / "t.svg")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["delivered"] and data["request"][0]["where"] == "pod-1-0"
    if shutil.which("dot"):
        assert "<svg" in (tmp_path / "t.svg").read_text()
    pcap = tmp_path / "c.pcapng"
    cap = subprocess.Popen([KNETLAB, "capture", "--cluster", name, "node-2:node-2-eth0",
                            "-o", str(pcap), "--count", "2", "--duration", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    assert "capturing on" in cap.stderr.readline()  # its sockets are open
    hostgw.pod("pod-1-0").run(["ping", "-c1", "-W2", "10.244.2.2"])  # request in, reply out
    assert cap.wait(timeout=30) == 0, cap.stderr.read()
    if shutil.which("tcpdump"):
        out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True,
                             text=True).stdout
        assert len(out.splitlines()) == 2
    res = subprocess.run([KNETLAB, "graph", "--cluster", name], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and '"node-1"' in res.stdout and "10.244.2.2" in res.stdout


@needs_root
@pytest.mark.e2e
def test_flannel_vxlan_hop_carries_vni_1_udp_8472(lab, tmp_path: Path) -> None:
    c = _lab(lab, tmp_path, "tr-t-vx", "flannel-vxlan")
    t = _delivered(c, "pod-1-0", "pod-2-0", proto="tcp", port=80)
    out = next(h for h in t.request if h.where == "node-1" and h.ifname == "node-1-eth0")
    (tun,) = out.packet.tunnels
    assert (tun.kind, tun.vni, tun.udp_port) == ("vxlan", 1, 8472)
    assert (tun.outer.src, tun.outer.dst) == (c.node("node-1").node_ip,
                                              c.node("node-2").node_ip)
    assert any(ch.startswith("encapsulated: VXLAN vni 1") for ch in out.changes)
    dec = next(h for h in t.request if h.where == "node-2" and h.ifname == "flannel.1")
    assert not dec.packet.tunnels and any(ch.startswith("decapsulated") for ch in dec.changes)
    assert _path(t)[-1] == ("pod-2-0", "eth0", "in")
    assert t.reply and t.reply[0].packet.l4.flags in ("RA", "SA")  # RST or SYN-ACK


@needs_root
@pytest.mark.e2e
def test_ovs_gre_hop_is_ip_protocol_47(lab, tmp_path: Path) -> None:
    c = _lab(lab, tmp_path, "tr-t-gre", "ovs-gre")
    t = _delivered(c, "pod-1-0", "pod-2-0")
    out = next(h for h in t.request if h.where == "node-1" and h.ifname == "node-1-eth0")
    (tun,) = out.packet.tunnels
    assert tun.kind == "gre" and tun.outer.proto == 47
    assert (tun.outer.src, tun.outer.dst) == (c.node("node-1").node_ip,
                                              c.node("node-2").node_ip)
    assert any("GRE (ip proto 47)" in ch for ch in out.changes)
    assert _path(t)[-1] == ("pod-2-0", "eth0", "in")
    gre_back = next(h for h in t.reply if h.ifname == "node-2-eth0")
    assert gre_back.packet.tunnels[0].kind == "gre"


@needs_root
@pytest.mark.e2e
def test_calico_bgp_routed_and_blackholed(lab, tmp_path: Path) -> None:
    c = _lab(lab, tmp_path, "tr-t-ca", "calico-bgp")
    t = _delivered(c, "pod-1-0", "pod-2-0")
    assert not any(h.packet.tunnels for h in t.hops)  # pure L3
    out = next(h for h in t.request if h.ifname == "node-1-eth0")
    assert out.packet.ip.ttl == 63
    # An address of node-2's block that no pod holds: blackholed there, as Calico does.
    block = c.state()["bgp"]["blocks"]["node-2"][0]
    taken = {p["ip"] for p in c.state()["pods"]}
    free = next(str(a) for a in ipaddress.ip_network(block).hosts() if str(a) not in taken
                and not str(a).endswith(".65"))
    lost = trace(c.state(), "pod-1-0", free, wait=0.5)
    assert not lost.delivered
    assert _path(lost)[-1] == ("node-2", "node-2-eth0", "in")
    assert "blackhole" in lost.lost and "node-2" in lost.lost


@needs_root
@pytest.mark.e2e
def test_leaf_spine_crosses_a_spine(lab, tmp_path: Path) -> None:
    c = _lab(lab, tmp_path, "tr-t-ls", "vpc-routes",
             underlay="{type: leaf-spine, cidr: 192.168.0.0/16, racks: 2, spines: 1}",
             nodes="{perRack: 1}")
    t = _delivered(c, "pod-1-0", "pod-2-0")
    wheres = [h.where for h in t.request]
    assert wheres.index("tor-1") < wheres.index("spine-1") < wheres.index("tor-2")
    spine_in = next(h for h in t.request if h.where == "spine-1" and h.direction == "in")
    assert "via" in spine_in.route and "spine-1-eth" in spine_in.route
    assert "spine-1" in [h.where for h in t.reply]


WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeName: node-2
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@needs_root
@pytest.mark.e2e
def test_service_trace_shows_dnat_and_its_rule(lab, tmp_path: Path) -> None:
    from knetlab.addons import MODULES
    if "knetlab.addons.kubeproxy" not in MODULES:
        pytest.skip("no kube-proxy add-on in this tree")
    c = lab(write_topology(tmp_path, TOPO.format(
        name="tr-t-svc", plane="host-gw", underlay=SEGMENT, nodes="{count: 2}").replace(
        "kubernetes: false", "kubernetes: true")))
    deployment, service = WEB.split("---")
    c.apply(service)  # no endpoints yet: kube-proxy rejects, and the trace names the rule
    rejected: list[Trace] = []

    def refused() -> bool:
        rejected[:] = [trace(c.state(), "pod-1-0", "svc/web", wait=0.5)]
        return "rejected in node-1" in rejected[0].lost
    try:
        poll(refused, 30, "a trace to svc/web without endpoints rejected by kube-proxy")
    except BaseException:
        print(format_trace(rejected[0]))  # what it saw instead
        raise
    assert not rejected[0].delivered and "reject" in rejected[0].lost
    c.apply(deployment)
    t = _delivered(c, "pod-1-0", "svc/web")
    cluster_ip = t.request[0].packet.ip.dst
    assert ipaddress.ip_address(cluster_ip) in c.spec.service_cidr
    assert t.request[0].packet.l4.dport == 80
    dnat = next(h for h in t.request if any(ch.startswith("DNAT") for ch in h.changes))
    assert dnat.where == "node-1" and dnat.packet.l4.dport == 8080  # DNAT on the client's node
    assert dnat.packet.ip.dst.startswith("10.244.2.")
    assert any("dnat" in nf.lower() for h in t.request for nf in h.netfilter)  # kube-proxy
    assert t.request[-1].where.startswith("web-")  # the endpoint pod
    assert t.reply[-1].packet.ip.src == cluster_ip  # conntrack undid the DNAT
    assert any("reverse" in ch for h in t.reply for ch in h.changes)


@needs_root
@pytest.mark.e2e
def test_mininet_cli_trace_and_graph(hostgw: Cluster, tmp_path: Path, capfd) -> None:
    """``trace`` and ``graph`` in the Mininet CLI are the shell's commands on this lab."""
    from knetlab.mncli import KnetCLI
    script = tmp_path / "cmds"
    script.write_text(f"trace pod-1-0 pod-2-0 --proto udp --port 9\ntrace pod-1-0\n"
                      f"graph -o {tmp_path / 'lab.dot'}\n")
    with open("/dev/null") as devnull:
        KnetCLI(hostgw, stdin=devnull, script=str(script))
    captured = capfd.readouterr()
    out, err = captured.out, captured.err
    assert "trace pod-1-0 -> pod-2-0: udp" in out and "icmp unreachable code 3" in out, out
    assert "usage:" in err and "dst" in err, err  # argparse: the DST argument is missing
    assert '"pod-2-0"' in (tmp_path / "lab.dot").read_text()
