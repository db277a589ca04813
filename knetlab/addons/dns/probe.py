"""A minimal DNS client (standard library): one question over UDP, rcode and answers.

For measuring, not resolving: the benchmark and the tests poll a server thousands of times
to time a record change, and exec'ing ``dig`` (5-10 ms each) would be the measurement.
The socket can be made inside another network namespace (a pod's) and then used from any
thread: a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import socket
import struct
import threading

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
CLONE_NEWNET = 0x40000000


def udp_socket(netns: str | None = None) -> socket.socket:
    """A UDP socket, made in the network namespace at ``netns`` when given."""
    if not netns:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out: dict[str, object] = {}

    def make() -> None:  # a thread of its own: setns changes only the calling thread
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            out["error"] = exc
    t = threading.Thread(target=make, daemon=True)
    t.start()
    t.join()
    if "sock" not in out:
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


def encode_query(name: str, qtype: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".") if p)
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack(">HH", TYPES[qtype], 1)


def _skip_name(msg: bytes, off: int) -> int:
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += n + 1


def decode_answer(msg: bytes) -> tuple[str, list[str]]:
    """(rcode name, the A/AAAA addresses of the answer section; other types by type name)."""
    _, flags, qd, an = struct.unpack(">HHHH", msg[:8])
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    answers = []
    names = {v: k for k, v in TYPES.items()}
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        off += rdlen
        if rtype in (1, 28):
            answers.append(str(ipaddress.ip_address(rdata)))
        else:
            answers.append(names.get(rtype, str(rtype)))
    return RCODES.get(flags & 0xF, str(flags & 0xF)), answers


def query(sock: socket.socket, server: str, name: str, qtype: str = "A",
          timeout: float = 1.0, port: int = 53) -> tuple[str, list[str]]:
    """Ask ``server`` one question on ``sock``; (rcode, answers) or ("TIMEOUT", [])."""
    qid = random.randrange(65536)
    sock.settimeout(timeout)
    sock.sendto(encode_query(name, qtype, qid), (server, port))
    while True:
        try:
            msg = sock.recv(4096)
        except TimeoutError:
            return "TIMEOUT", []
        if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
            return decode_answer(msg)
