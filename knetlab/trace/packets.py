"""Frames as seen on one interface, decoded down to the innermost IPv4 packet.

A frame is peeled layer by layer: Ethernet, then IPv4; an IPv4 packet that carries another
one is a tunnel (VXLAN over UDP 8472/4789, GRE protocol 47 with its key, IPIP protocol 4,
flannel's UDP 8285 sleeve, weave's UDP 6784 sleeve when not encrypted), so the decoded
``Packet`` has the tunnels outermost first and the innermost IP header and transport
header (TCP, UDP or ICMP, with the header an ICMP error quotes). Nothing here knows
about probes; ``Probe.leg`` says whether a packet is one.

Only what a hop report shows is decoded; anything else (ARP, IPv6, fragments after the
first) decodes to ``None``.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field, replace

ETH_P_IP, ETH_P_8021Q, ETH_P_TEB = 0x0800, 0x8100, 0x6558
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772  # frames with an Ethernet header (lo's is zeros)
VXLAN_PORTS = (8472, 4789)  # flannel's and the IANA port (OVS, Calico)
FLANNEL_UDP_PORT = 8285
WEAVE_PORT = 6784  # weave's sleeve: header -> where the frame starts (sealed: opaque)
WEAVE_PLAIN = {b"WVSF-": 5, b"WVSG-": 15}  # G: a virtio_net_hdr (10 bytes) before it
ICMP_NAMES = {0: "echo-reply", 3: "unreachable", 8: "echo-request", 11: "time-exceeded"}
TCP_FLAGS = "FSRPAUEC"  # bit 0 first


@dataclass(frozen=True)
class IpHeader:
    src: str
    dst: str
    proto: int
    ttl: int

    def text(self) -> str:
        return f"{self.src} > {self.dst} ttl {self.ttl}"


@dataclass(frozen=True)
class Transport:
    """The innermost packet's transport header (``kind`` tcp, udp, icmp or the number)."""
    kind: str
    sport: int = 0
    dport: int = 0
    flags: str = ""  # TCP: S, SA, R, RA...
    seq: int = 0  # TCP
    ack: int = 0
    mss: int = 0  # TCP: the MSS option of a SYN
    icmp_type: int = -1
    icmp_code: int = -1
    icmp_id: int = -1
    quoted: Packet | None = None  # the packet an ICMP error talks about
    payload: bytes = b""

    def text(self) -> str:
        if self.kind == "icmp":
            name = ICMP_NAMES.get(self.icmp_type, f"type {self.icmp_type}")
            out = f"icmp {name}"
            if self.icmp_type in (0, 8):
                out += f" id {self.icmp_id}"
            elif self.icmp_type in (3, 11):
                out += f" code {self.icmp_code}"
                if self.quoted is not None:
                    out += f" about [{self.quoted.inner_text()}]"
            return out
        if self.kind in ("tcp", "udp"):
            flags = f" [{self.flags}]" if self.kind == "tcp" else ""
            return f"{self.kind} {self.sport} > {self.dport}{flags}"
        return f"proto {self.kind}"


@dataclass(frozen=True)
class Tunnel:
    """One encapsulation layer: its outer IP header and what identifies the tunnel."""
    kind: str  # vxlan, gre, ipip, udp (flannel's sleeve), weave
    outer: IpHeader
    udp_port: int = 0  # vxlan/udp: the destination port
    vni: int | None = None  # vxlan
    key: int | None = None  # gre

    def text(self) -> str:
        o = self.outer
        if self.kind == "vxlan":
            return f"VXLAN vni {self.vni} udp dport {self.udp_port} [{o.src} > {o.dst}]"
        if self.kind == "gre":
            key = f" key {self.key}" if self.key is not None else ""
            return f"GRE (ip proto 47){key} [{o.src} > {o.dst}]"
        if self.kind == "udp":
            return f"UDP sleeve dport {self.udp_port} [{o.src} > {o.dst}]"
        if self.kind == "weave":
            return f"weave sleeve udp dport {self.udp_port} [{o.src} > {o.dst}]"
        return f"IPIP (ip proto 4) [{o.src} > {o.dst}]"


@dataclass(frozen=True)
class Packet:
    ip: IpHeader  # the innermost IP header
    l4: Transport
    tunnels: tuple[Tunnel, ...] = field(default=())  # outermost first
    eth_src: str = ""  # outermost Ethernet addresses, when the interface has them
    eth_dst: str = ""

    def inner_text(self) -> str:
        return f"{self.ip.src} > {self.ip.dst} {self.l4.text()}"

    def text(self) -> str:
        parts = [t.text() for t in self.tunnels]
        parts.append(f"{self.ip.text()} {self.l4.text()}")
        return " | ".join(parts)

    @property
    def outer(self) -> IpHeader:
        """The IP header the kernel routes at this interface (the outermost)."""
        return self.tunnels[0].outer if self.tunnels else self.ip


def decode(data: bytes, hatype: int = ARPHRD_ETHER) -> Packet | None:
    """Decode a frame read from an AF_PACKET socket on an interface of type ``hatype``."""
    try:
        if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            pkt = _ether(data, ())
            return pkt and replace(pkt, eth_src=_mac(data[6:12]), eth_dst=_mac(data[0:6]))
        return _ipv4(data, ())  # TUN (flannel0) and other raw-IP devices
    except (struct.error, IndexError, ValueError):
        return None  # truncated or not what its headers claim


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ether(data: bytes, tunnels: tuple[Tunnel, ...]) -> Packet | None:
    etype = struct.unpack_from("!H", data, 12)[0]
    off = 14
    if etype == ETH_P_8021Q:
        etype, off = struct.unpack_from("!H", data, 16)[0], 18
    if etype != ETH_P_IP:
        return None
    return _ipv4(data[off:], tunnels)


def _ipv4(data: bytes, tunnels: tuple[Tunnel, ...], quoted: bool = False) -> Packet | None:
    if data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    proto, ttl = data[9], data[8]
    frag = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
    ip = IpHeader(socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), proto, ttl)
    body = data[ihl:]
    if frag:
        return None
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body, 0)
        payload = body[8:]
        if not quoted and dport in VXLAN_PORTS and len(payload) >= 8 and payload[0] & 0x08:
            vni = int.from_bytes(payload[4:7], "big")
            return _ether(payload[8:], (*tunnels, Tunnel("vxlan", ip, dport, vni=vni)))
        if not quoted and dport == WEAVE_PORT and bytes(payload[:5]) in WEAVE_PLAIN:
            start = WEAVE_PLAIN[bytes(payload[:5])]
            return _ether(payload[start:], (*tunnels, Tunnel("weave", ip, dport)))
        if not quoted and dport == FLANNEL_UDP_PORT and payload[:1] and payload[0] >> 4 == 4:
            return _ipv4(payload, (*tunnels, Tunnel("udp", ip, dport)))
        return Packet(ip, Transport("udp", sport, dport, payload=bytes(payload[:64])),
                      tunnels)
    if proto == 6 and len(body) >= 8:  # an ICMP error quotes only the first 8 bytes
        sport, dport, seq = struct.unpack_from("!HHI", body, 0)
        if len(body) < 20:
            return Packet(ip, Transport("tcp", sport, dport, seq=seq), tunnels)
        ack, bits = struct.unpack_from("!I", body, 8)[0], body[13]
        flags = "".join(TCP_FLAGS[i] for i in (1, 2, 0, 3, 4) if bits >> i & 1)
        mss = _mss(body[20:(body[12] >> 4) * 4]) if bits & 0x02 else 0
        return Packet(ip, Transport("tcp", sport, dport, flags=flags, seq=seq, ack=ack,
                                    mss=mss), tunnels)
    if proto == 1 and len(body) >= 8:
        itype, code = body[0], body[1]
        if itype in (0, 8):
            ident = struct.unpack_from("!H", body, 4)[0]
            return Packet(ip, Transport("icmp", icmp_type=itype, icmp_code=code, icmp_id=ident,
                                        payload=bytes(body[8:72])), tunnels)
        inner = _ipv4(body[8:], (), quoted=True) if itype in (3, 11) else None
        return Packet(ip, Transport("icmp", icmp_type=itype, icmp_code=code, quoted=inner),
                      tunnels)
    if not quoted and proto == 47 and len(body) >= 4:
        flags, ptype = struct.unpack_from("!HH", body, 0)
        off, key = 4, None
        if flags & 0x8000:  # checksum present
            off += 4
        if flags & 0x2000:  # key present
            key = struct.unpack_from("!I", body, off)[0]
            off += 4
        if flags & 0x1000:  # sequence number present
            off += 4
        tun = (*tunnels, Tunnel("gre", ip, key=key))
        if ptype == ETH_P_TEB:
            return _ether(body[off:], tun)
        if ptype == ETH_P_IP:
            return _ipv4(body[off:], tun)
        return None
    if not quoted and proto == 4:
        return _ipv4(body, (*tunnels, Tunnel("ipip", ip)))
    return Packet(ip, Transport(str(proto)), tunnels)


def _mss(options: bytes) -> int:
    """The MSS option (kind 2) of a SYN's TCP options, 0 if absent."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        if kind == 2 and options[i + 1] == 4 and i + 4 <= len(options):
            return int(struct.unpack_from("!H", options, i + 2)[0])
        i += options[i + 1]
    return 0
