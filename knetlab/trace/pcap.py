"""pcapng files (what Wireshark and tcpdump read) from captured frames.

pcapng, not pcap, because one capture spans several interfaces of several namespaces: each
gets an Interface Description Block named ``where:ifname``, and every packet says whether
it came in or went out (``epb_flags``). All interfaces are Ethernet (libpcap, so tcpdump,
reads no file whose interfaces differ): a raw IP frame of a TUN device (flannel0) is given
an Ethernet header with zero addresses. Timestamps are the kernel's, in nanoseconds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from knetlab.trace.capture import Frame
from knetlab.trace.packets import ARPHRD_ETHER, ARPHRD_LOOPBACK

LINKTYPE_ETHERNET = 1
FAKE_ETHER = b"\0" * 12 + b"\x08\x00"  # zero addresses, IPv4
SNAPLEN = 65535


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """Append frames to a pcapng file; interfaces are declared on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.f: BinaryIO = self.path.open("wb")
        self.interfaces: dict[tuple[str, str, int], int] = {}
        self.count = 0
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(0, b"")
        self.f.write(_block(0x0A0D0D0A, shb))

    def _interface(self, frame: Frame) -> int:
        linktype = LINKTYPE_ETHERNET
        key = (frame.where, frame.ifname, linktype)
        if key not in self.interfaces:
            name = f"{frame.where}:{frame.ifname}".encode()
            body = (struct.pack("<HHI", linktype, 0, SNAPLEN) + _option(2, name)
                    + _option(9, bytes([9])) + _option(0, b""))  # if_tsresol: nanoseconds
            self.f.write(_block(1, body))
            self.interfaces[key] = len(self.interfaces)
        return self.interfaces[key]

    def write(self, frame: Frame) -> None:
        iface = self._interface(frame)
        data = frame.data
        if frame.hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            data = FAKE_ETHER + data  # raw IP (a TUN device): given an Ethernet header
        ts = int(frame.ts * 1e9)
        flags = 2 if frame.outgoing else 1  # epb_flags direction: 01 inbound, 10 outbound
        body = (struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data),
                            len(data)) + _pad(data)
                + _option(2, struct.pack("<I", flags)) + _option(0, b""))
        self.f.write(_block(6, body))
        self.count += 1

    def close(self) -> None:
        self.f.close()
