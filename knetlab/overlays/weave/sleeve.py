"""The sleeve: Ethernet frames between the ``weave`` bridge and the peers, in UDP 6784.

A TAP device (``weave-tap``) is a port of the node's ``weave`` bridge; what the bridge
sends to it (broadcasts, unknown unicast, frames for MACs behind other peers) the router
reads and sends to peers; what peers send it writes back, and the bridge delivers.

Datagram: ``WVS`` + kind + flags (``E`` sealed, ``-`` plain) + the frame, or a secretbox
of it under the pair's sleeve key (``crypto``). Kinds: ``H`` heartbeat, ``F`` an Ethernet
frame, ``G`` a virtio-net header + frame (offload, below). The source address says which
peer sent it, hence which key opens it.

Forwarding is MAC learning, as a switch (weave's ``router/mac_cache.go``): a frame from a
peer teaches "source MAC is behind that peer"; a frame from the bridge teaches "source MAC
is local". Unicast to a known remote MAC goes to that peer only; broadcast, multicast and
unknown unicast go to every connected peer (each peer connects to every other, so nothing
is relayed). Learned MACs age out after ``MAC_TTL``.

Throughput: two threads, one per direction, each in blocking system calls (which release
the GIL; so do the secretbox calls), one preallocated buffer each. The cost is per frame
(~25 us of system calls and Python), so at weave's 1376-byte MTU one frame per syscall
tops out near 100-300 Mbit/s. Two ways past it, both here:

- offload (default): the TAP is opened with a virtio-net header and TSO/checksum offload
  (as a VM's virtio NIC): the bridge hands it TCP segments unsplit, up to 64 KB, with
  checksums unfinished; the header travels with the frame and the peer's TAP takes it as
  is, so the receiving pod gets the same large segment. The pods keep a normal MTU;
- a large MTU on the bridge, TAP and pods (``weave: {mtu: 65000}``): every packet is big.

Either way a datagram is up to 64 KB; the kernel fragments it on the underlay and
reassembles it at the peer, which costs far less than a syscall per 1400 bytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from knetlab.overlays.weave import crypto

log = logging.getLogger("weave.sleeve")
PORT = 6784
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET = 10  # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
BUF = 65536 + 128
SOCK_BUF = 8 << 20
MAC_TTL = 600.0  # seconds a learned MAC is trusted without traffic (weave: 10 min)
FRAME, VNET_FRAME, HEARTBEAT = b"F", b"G", b"H"
PLAIN, SEALED = b"-", b"E"
HEADER = 5


@dataclass
class PeerLink:
    """What the data path needs of one connected peer."""
    name: str
    addr: tuple[str, int]
    key: bytes | None  # the sleeve key when encrypted
    last_heartbeat: float = 0.0  # monotonic time of the last heartbeat received over UDP


@dataclass
class Counters:
    to_peers: int = 0  # frames sent
    from_peers: int = 0  # frames received and delivered
    flooded: int = 0  # frames sent to every peer (broadcast / unknown destination)
    dropped: int = 0  # frames not sent (no peer) or refused (bad seal, unknown sender)
    bytes_out: int = 0
    bytes_in: int = 0


@dataclass
class Sleeve:
    tap_name: str
    encrypted: bool
    offload: bool = True  # virtio-net header + TSO on the TAP (see the module's notes)
    links: dict[str, PeerLink] = field(default_factory=dict)  # peer IP -> link
    macs: dict[bytes, tuple[str, float]] = field(default_factory=dict)  # MAC -> (IP|"", seen)
    counters: Counters = field(default_factory=Counters)

    def open(self) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR)
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.offload else 0)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", self.tap_name.encode(), flags))
        if self.offload:
            # The TAP takes TCP segments unsplit and checksums unfinished (as a virtio NIC
            # does): one read returns up to 64 KB of a TCP stream whatever the MTU, with
            # the virtio header saying how to finish it; the peer's TAP gets the same.
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        self.sock.bind(("0.0.0.0", PORT))

    def start(self) -> None:
        for target in (self._from_bridge, self._from_peers):
            threading.Thread(target=target, daemon=True, name=target.__name__).start()

    # -- bridge -> peers -------------------------------------------------------------
    def _from_bridge(self) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        kind, vnet = (VNET_FRAME, VNET) if self.offload else (FRAME, 0)
        head_plain, head_sealed = b"WVS" + kind + PLAIN, b"WVS" + kind + SEALED
        readv, sendto, sendmsg = os.readv, self.sock.sendto, self.sock.sendmsg
        seal, macs, c = crypto.seal_parts, self.macs, self.counters
        bufs = [view[HEADER:]]
        eth = HEADER + vnet  # where the Ethernet frame starts in buf
        while True:
            n = readv(self.fd, bufs)  # [virtio header +] frame
            if n < vnet + 14:
                continue
            now = time.monotonic()
            src = bytes(view[eth + 6:eth + 12])
            if src not in macs or macs[src][0] != "" or now - macs[src][1] > 1.0:
                macs[src] = ("", now)  # local (seen refreshed at most once a second)
            dst = bytes(view[eth:eth + 6])
            entry = macs.get(dst)
            if dst[0] & 1 or entry is None or now - entry[1] > MAC_TTL:
                targets = list(self.links.values())
                c.flooded += 1
            elif entry[0] == "":
                continue  # both ends local: the bridge should not have sent it here
            else:
                link = self.links.get(entry[0])
                targets = [link] if link else []
            if not targets:
                c.dropped += 1
                continue
            for link in targets:
                try:
                    if link.key is None:
                        buf[:HEADER] = head_plain
                        sendto(view[:HEADER + n], link.addr)
                    else:
                        nonce, box = seal(link.key, view[HEADER:HEADER + n])
                        sendmsg([head_sealed, nonce, box], [], 0, link.addr)
                    c.to_peers += 1
                    c.bytes_out += n - vnet
                except OSError:
                    c.dropped += 1

    # -- peers -> bridge -------------------------------------------------------------
    def _from_peers(self) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        recvfrom_into, write, macs, c = self.sock.recvfrom_into, os.write, self.macs, self.counters
        kind, vnet = (VNET_FRAME, VNET) if self.offload else (FRAME, 0)
        while True:
            n, (ip, _port) = recvfrom_into(buf)
            link = self.links.get(ip)
            if link is None or n < HEADER or view[:3] != b"WVS":
                c.dropped += 1  # not a connected peer (or not ours): weave drops it too
                continue
            sealed = view[4:5] == SEALED
            if sealed != (link.key is not None):
                c.dropped += 1  # plaintext to an encrypted router or the reverse
                continue
            payload: bytes | memoryview = view[HEADER:n]
            if sealed:
                try:
                    payload = crypto.open_box(link.key, payload)  # type: ignore[arg-type]
                except crypto.CryptoError:
                    c.dropped += 1
                    continue
            if view[3:4] == HEARTBEAT:
                link.last_heartbeat = time.monotonic()
                continue
            if view[3:4] != kind or len(payload) < vnet + 14:
                c.dropped += 1  # a peer with the other offload setting: cannot write it
                continue
            src = bytes(payload[vnet + 6:vnet + 12])
            now = time.monotonic()
            entry = macs.get(src)
            if entry is None or entry[0] != ip or now - entry[1] > 1.0:
                macs[src] = (ip, now)
            try:
                write(self.fd, payload)
                c.from_peers += 1
                c.bytes_in += len(payload) - vnet
            except OSError:
                c.dropped += 1

    # -- control thread --------------------------------------------------------------
    def heartbeat(self) -> None:
        """One UDP heartbeat to every connected peer: proves the sleeve path both ways
        (a connection is *established* once the peer's heartbeats arrive)."""
        for link in list(self.links.values()):
            body = b"hb"
            msg = (b"WVS" + HEARTBEAT + SEALED + crypto.seal(link.key, body) if link.key
                   else b"WVS" + HEARTBEAT + PLAIN + body)
            try:
                self.sock.sendto(msg, link.addr)
            except OSError:
                pass

    def forget(self, ip: str) -> None:
        """A peer went away: its link and the MACs learned behind it."""
        self.links.pop(ip, None)
        for mac in [m for m, (where, _) in list(self.macs.items()) if where == ip]:
            self.macs.pop(mac, None)

    def mac_table(self) -> list[dict[str, object]]:
        now = time.monotonic()
        names = {ip: link.name for ip, link in self.links.items()}
        return [{"mac": ":".join(f"{b:02x}" for b in mac),
                 "where": names.get(where, where) if where else "local",
                 "age": round(now - seen, 1)}
                for mac, (where, seen) in sorted(list(self.macs.items()))
                if now - seen <= MAC_TTL]
