"""``knetlab check``: prove the Kubernetes network model on a running lab, with real packets.

Rules checked (the Kubernetes network model):
1. every pod reaches every other pod, by ICMP and TCP, without NAT;
2. every node reaches every pod, by ICMP and TCP, without NAT;
3. the address a pod sees for itself is the address others use for it.

"Without NAT" is measured, not assumed: each pod runs a TCP responder that answers with
the peer address it saw; the client compares it with its own socket's local address.

Design: one process, no helper per pod. Sockets are created inside each namespace
(``netns.entered``) and keep working from here, so thousands of probes run from one
selector loop: listeners in every pod, a raw ICMP socket and TCP clients per source.
"""

from __future__ import annotations

import os
import random
import resource
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

from knetlab.netns import entered

PORT = 48711  # the responder's port inside every pod
#: an echo without a reply is sent again after this long, as TCP resends its SYN (after
#: 1 s): one lost first packet (a neighbour being resolved on the way, as OVS's userspace
#: tunnels drop the packet that starts it) is not a broken path for one protocol only
ECHO_RESEND_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # "pod" | "node"
    netns: str
    ip: str


@dataclass
class Probe:
    src: Endpoint
    dst: Endpoint
    icmp: bool = False
    tcp: bool = False
    local: str = ""  # the client's own address (what it sees for itself)
    seen: str = ""  # the address the responder saw
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.icmp and self.tcp and self.nat_free and self.self_address_ok

    @property
    def nat_free(self) -> bool:
        return bool(self.local) and self.local == self.seen

    @property
    def self_address_ok(self) -> bool:
        return self.src.kind != "pod" or self.local == self.src.ip


@dataclass
class Report:
    probes: list[Probe] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]

    @property
    def ok(self) -> bool:
        return bool(self.probes) and not self.failures


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"knetlab-check"
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def plan(pods: list[Endpoint], nodes: list[Endpoint], sample: int | None,
         seed: int = 0) -> list[Probe]:
    rng = random.Random(seed)
    probes = []
    for src in pods + nodes:
        targets = [p for p in pods if p is not src]
        if sample is not None and sample < len(targets):
            targets = rng.sample(targets, sample)
        probes += [Probe(src, dst) for dst in targets]
    return probes


def run_check(pods: list[Endpoint], nodes: list[Endpoint], sample: int | None = None,
              timeout: float = 3.0, batch: int = 400) -> Report:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    t0 = time.monotonic()
    report = Report(plan(pods, nodes, sample))
    sel = selectors.DefaultSelector()
    listeners = []
    for pod in pods:
        with entered(pod.netns):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", PORT))
        ls.listen(512)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, ("listen", None))
        listeners.append(ls)
    raws: dict[str, socket.socket] = {}
    for src in {p.src for p in report.probes}:
        with entered(src.netns):
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw.setblocking(False)
        sel.register(raw, selectors.EVENT_READ, ("icmp", None))
        raws[src.name] = raw
    try:
        for i in range(0, len(report.probes), batch):
            _run_batch(sel, raws, report.probes[i:i + batch], i, timeout)
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    report.seconds = time.monotonic() - t0
    return report


def _run_batch(sel: selectors.BaseSelector, raws: dict[str, socket.socket],
               probes: list[Probe], base: int, timeout: float) -> None:
    ident = os.getpid() & 0xFFFF
    by_seq = {}
    for n, probe in enumerate(probes):
        seq = (base + n) & 0xFFFF
        by_seq[seq] = probe
        _send_echo(raws, ident, seq, probe)
        with entered(probe.src.netns):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((probe.dst.ip, PORT))
        sel.register(c, selectors.EVENT_WRITE, ("connect", probe))
    pending_tcp = len(probes)
    deadline = time.monotonic() + timeout
    resend_at = time.monotonic() + ECHO_RESEND_S
    while time.monotonic() < deadline:
        if pending_tcp == 0 and all(p.icmp for p in probes):
            break
        if time.monotonic() >= resend_at:  # as the kernel resends a SYN that got no answer
            resend_at += ECHO_RESEND_S
            for seq, probe in by_seq.items():
                if not probe.icmp and not probe.error:
                    _send_echo(raws, ident, seq, probe)
        for key, _ in sel.select(timeout=0.05):
            kind, probe = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if kind == "listen":
                _accept(sock)
            elif kind == "icmp":
                _icmp_reply(sock, ident, by_seq)
            elif kind == "connect":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    probe.error = f"tcp: {os.strerror(err)}"
                    sel.unregister(sock)
                    sock.close()
                    pending_tcp -= 1
                    continue
                probe.local = sock.getsockname()[0]
                sel.modify(sock, selectors.EVENT_READ, ("read", probe))
            elif kind == "read":
                data = sock.recv(64)
                probe.seen = data.decode(errors="replace").strip()
                probe.tcp = bool(probe.seen)
                sel.unregister(sock)
                sock.close()
                pending_tcp -= 1
    for key in list(sel.get_map().values()):
        if key.data[0] in ("connect", "read"):
            probe = key.data[1]
            probe.error = probe.error or "tcp: timed out"
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
    for probe in probes:
        if not probe.icmp and not probe.error:
            probe.error = "icmp: no reply"


def _accept(ls: socket.socket) -> None:
    while True:
        try:
            conn, peer = ls.accept()
        except BlockingIOError:
            return
        try:
            conn.send(peer[0].encode() + b"\n")
        except OSError:
            pass
        conn.close()


def _send_echo(raws: dict[str, socket.socket], ident: int, seq: int, probe: Probe) -> None:
    try:
        raws[probe.src.name].sendto(_echo(ident, seq), (probe.dst.ip, 0))
    except OSError as exc:
        probe.error = f"icmp: {exc.strerror}"


def _icmp_reply(raw: socket.socket, ident: int, by_seq: dict[int, Probe]) -> None:
    while True:
        try:
            data, addr = raw.recvfrom(2048)
        except BlockingIOError:
            return
        ihl = (data[0] & 0x0F) * 4
        typ, _code, _sum, rid, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        probe = by_seq.get(seq)
        if typ == 0 and rid == ident and probe and addr[0] == probe.dst.ip:
            probe.icmp = True


def format_report(report: Report, matrix_limit: int = 24) -> str:
    """The matrix (sources x pods) for small labs, then failures and a summary line."""
    lines = []
    dsts = sorted({p.dst.name for p in report.probes})
    srcs = list(dict.fromkeys(p.src.name for p in report.probes))
    if len(dsts) <= matrix_limit:
        cell = {(p.src.name, p.dst.name): p for p in report.probes}
        width = max(len(n) for n in srcs + dsts)
        lines.append(" " * (width + 1) + " ".join(f"{i:>2}" for i in range(len(dsts))))
        for s in srcs:
            row = []
            for d in dsts:
                p = cell.get((s, d))
                row.append(" -" if p is None else " ." if p.ok else
                           " N" if p.tcp and not p.nat_free else " x")
            lines.append(f"{s:<{width}} " + " ".join(c[-2:] for c in row))
        lines.append("columns: " + ", ".join(f"{i}={d}" for i, d in enumerate(dsts)))
        lines.append("legend: . reached by ICMP and TCP with no NAT; N NAT seen; x unreachable")
    for p in report.failures[:50]:
        why = p.error or (f"NAT: sent from {p.local}, seen as {p.seen}" if not p.nat_free
                          else f"pod sees itself as {p.local}, others use {p.src.ip}")
        lines.append(f"FAIL {p.src.name} -> {p.dst.name} ({p.dst.ip}): {why}")
    bad = len(report.failures)
    lines.append(f"{len(report.probes) - bad}/{len(report.probes)} probes passed "
                 f"(ICMP+TCP, no NAT, own address) in {report.seconds:.2f}s: "
                 + ("OK" if report.ok else "FAILED"))
    return "\n".join(lines)


def endpoints(state: dict) -> tuple[list[Endpoint], list[Endpoint]]:
    """Pods and nodes of a lab from its state (``Cluster.state()`` or the state file)."""
    hosts = state["hosts"]
    pods = [Endpoint(p["name"], "pod", f"/proc/{hosts[p['name']]['pid']}/ns/net", p["ip"])
            for p in state["pods"]]
    nodes = [Endpoint(n["name"], "node", f"/proc/{hosts[n['name']]['pid']}/ns/net", n["ip"])
             for n in state["nodes"]]
    return pods, nodes
