"""The probe: one real packet, marked so that it can be told apart everywhere, and its sender.

A probe's mark must survive NAT (a masquerade ``--random-fully`` rewrites source ports and
ICMP identifiers) and encapsulation, so it is what NAT leaves alone: the payload
``KNETLAB-TRACE<nonce>`` of an ICMP echo or a UDP datagram (an echo reply carries it back),
and for TCP, whose SYN has no payload, an unusual MSS option (1000-1199) set on the socket
before ``connect()`` plus the source port. Once the request is seen, what it became is
learnt hop by hop (``Matcher``): the TCP initial sequence number (NAT keeps it; the SYN-ACK
or RST acknowledges it), the source ports and ICMP identifiers NAT gave it, the address
pairs it travelled with (a UDP answer goes back between them). ICMP errors are matched by
the header they quote.

The sender is the kernel of the source namespace: the socket is made inside it (this
thread enters the namespace only to create it), so routes, rules and source address
selection are that namespace's. TCP is a real ``connect()``; later packets of that
connection are not probes.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

from knetlab.netns import entered
from knetlab.trace.packets import Packet

MARK = b"KNETLAB-TRACE"
PORTS = (33000, 61000)
MSS = (1000, 1200)  # rarer than any MTU's MSS; below them, so no clamping lowers it
TCP_MAXSEG = 2


@dataclass(frozen=True)
class Probe:
    proto: str  # icmp, tcp or udp
    dst: str
    port: int = 0  # destination port (tcp, udp)
    sport: int = 0  # the source port (tcp, udp)
    icmp_id: int = 0
    nonce: bytes = b""
    mss: int = 0  # tcp: the MSS the SYN announces

    @classmethod
    def make(cls, proto: str, dst: str, port: int = 0) -> Probe:
        sport = PORTS[0] + secrets.randbelow(PORTS[1] - PORTS[0])
        return cls(proto, dst, port, sport if proto != "icmp" else 0,
                   1 + secrets.randbelow(0xFFFE), secrets.token_hex(4).encode(),
                   MSS[0] + secrets.randbelow(MSS[1] - MSS[0]) if proto == "tcp" else 0)

    @property
    def payload(self) -> bytes:
        return MARK + self.nonce

    def candidate(self, pkt: Packet | None) -> bool:
        """Could this be the probe or its answer? (cheap: the capture keeps only these)"""
        if pkt is None:
            return False
        l4 = pkt.l4
        if l4.kind == "icmp":
            return l4.icmp_type in (3, 11) or MARK in l4.payload
        if l4.kind != self.proto:
            return False
        return self.proto == "udp" or "S" in l4.flags or "R" in l4.flags

    def matcher(self) -> Matcher:
        return Matcher(self)

    def nft_matches(self) -> list[str]:
        """nft expressions for the probe's packets (NAT-proof: payload, MSS, then ports)."""
        mark = f"@th,64,{len(MARK) * 8} 0x{MARK.hex()}"  # after the 8-byte ICMP/UDP header
        if self.proto == "icmp":
            return [f"meta l4proto icmp {mark}"]
        if self.proto == "udp":
            return [f"meta l4proto udp {mark}", f"udp dport {self.sport}"]
        return [f"tcp flags syn tcp option maxseg size {self.mss}",
                f"tcp dport {self.sport}"]

    def describe(self) -> str:
        if self.proto == "icmp":
            return f"icmp echo id {self.icmp_id} to {self.dst}"
        return f"{self.proto} {self.sport} > {self.dst}:{self.port}"


class Matcher:
    """Tells the probe's request and reply apart in frames taken in time order, learning
    what NAT made of the request as it goes (see the module's notes)."""

    def __init__(self, probe: Probe) -> None:
        self.p = probe
        self.isn: int | None = None
        self.sports = {probe.sport}
        self.ids = {probe.icmp_id}
        self.pairs: set[tuple[str, str]] = set()

    def leg(self, pkt: Packet | None) -> str | None:
        """``request``, ``reply`` (an answer, or an ICMP error about the request) or None."""
        if pkt is None:
            return None
        l4 = pkt.l4
        if l4.kind == "icmp" and l4.icmp_type in (3, 11):
            return "reply" if l4.quoted is not None and self._quoted(l4.quoted) else None
        if l4.kind != self.p.proto:
            return None
        if self._request(pkt):
            self.sports.add(l4.sport)
            self.ids.add(l4.icmp_id)
            self.pairs.add((pkt.ip.src, pkt.ip.dst))
            return "request"
        return "reply" if self._reply(pkt) else None

    def _request(self, pkt: Packet) -> bool:
        l4, p = pkt.l4, self.p
        if p.proto == "icmp":
            return l4.icmp_type == 8 and p.payload in l4.payload
        if p.proto == "udp":
            return p.payload in l4.payload
        if l4.flags != "S":
            return False
        if self.isn is None and (l4.mss == p.mss or l4.sport == p.sport):
            self.isn = l4.seq
        return l4.seq == self.isn

    def _reply(self, pkt: Packet) -> bool:
        l4, p = pkt.l4, self.p
        if p.proto == "icmp":
            return l4.icmp_type == 0 and p.payload in l4.payload
        if p.proto == "udp":
            return l4.dport in self.sports and (pkt.ip.dst, pkt.ip.src) in self.pairs
        return (self.isn is not None and l4.ack == (self.isn + 1) & 0xFFFFFFFF
                and ("S" in l4.flags or "R" in l4.flags))

    def _quoted(self, q: Packet) -> bool:
        """The header an ICMP error quotes (8 bytes of transport: no payload)."""
        l4 = q.l4
        if l4.kind != self.p.proto:
            return False
        if self.p.proto == "icmp":
            return l4.icmp_type == 8 and l4.icmp_id in self.ids
        if self.p.proto == "tcp":
            return self.isn is not None and l4.seq == self.isn
        return l4.sport in self.sports


def send(probe: Probe, netns: str, src: str | None = None, wait: float = 1.5) -> str:
    """Send the probe from namespace ``netns`` (source address ``src`` if given) and wait up
    to ``wait`` seconds for the answer; returns what the sender's socket saw."""
    if probe.proto == "icmp":
        return _icmp(probe, netns, src, wait)
    if probe.proto == "udp":
        return _udp(probe, netns, src, wait)
    return _tcp(probe, netns, src, wait)


def _socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with entered(netns):
        return socket.socket(family, kind, proto)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmp(probe: Probe, netns: str, src: str | None, wait: float) -> str:
    s = _socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with s:
        if src:
            s.bind((src, 0))
        head = struct.pack("!BBHHH", 8, 0, 0, probe.icmp_id, 1)
        msg = head + probe.payload
        msg = msg[:2] + struct.pack("!H", _checksum(msg)) + msg[4:]
        s.sendto(msg, (probe.dst, 0))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data = s.recv(2048)
            ihl = (data[0] & 0x0F) * 4
            itype, ident = data[ihl], struct.unpack_from("!H", data, ihl + 4)[0]
            if itype == 0 and ident == probe.icmp_id:
                return "echo reply received"
            if itype in (3, 11):
                return f"ICMP {itype}/{data[ihl + 1]} received"
        return f"no reply within {wait}s"


def _udp(probe: Probe, netns: str, src: str | None, wait: float) -> str:
    s = _socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.setsockopt(socket.SOL_IP, 11, 1)  # IP_RECVERR: ICMP errors come back as errors
        s.bind((src or "0.0.0.0", probe.sport))
        s.connect((probe.dst, probe.port))
        s.send(probe.payload)
        if select.select([s], [], [], wait)[0]:
            try:
                s.recv(2048)
                return "udp reply received"
            except OSError as exc:
                return f"error: {os.strerror(exc.errno or 0)}"
        return f"no reply within {wait}s"


def _tcp(probe: Probe, netns: str, src: str | None, wait: float) -> str:
    s = _socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_TCP, TCP_MAXSEG, probe.mss)  # the SYN announces it
        s.bind((src or "0.0.0.0", probe.sport))
        s.setblocking(False)
        err = s.connect_ex((probe.dst, probe.port))
        if err not in (0, errno.EINPROGRESS):
            return f"connect: {os.strerror(err)}"
        if not select.select([], [s], [], wait)[1]:
            return f"no answer within {wait}s"
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        # Close with RST, not FIN: nothing more of this connection crosses the lab.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "connected (SYN-ACK)" if err == 0 else f"connect: {os.strerror(err)}"
