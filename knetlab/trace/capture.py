"""Capture points: AF_PACKET sockets on every interface a packet may cross in a lab.

One socket per network namespace, not bound to an interface, sees every frame that enters
or leaves any interface of that namespace (pods, nodes, routers, and whatever OVS or a
tunnel device adds there), with the interface's name and the direction. Switch ports live
in the root namespace among the machine's own and other labs' interfaces, so there one
socket is bound to each of the lab's ports (named with the lab's tag) and nothing else is
read. Sockets are made inside the namespace (the thread enters it only for ``socket()``)
and stay there.

Every frame carries the kernel's timestamp (``SO_TIMESTAMPNS``), taken when the frame
crossed the interface: all namespaces share one clock, so frames of different namespaces
sort into the order the packet really travelled. A reader thread waits on all sockets at
once (epoll) and keeps the frames ``keep`` accepts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from knetlab.netns import entered

log = logging.getLogger("knetlab.trace.capture")
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SNAPLEN = 65535
RCVBUF = 4 << 20
SO_RCVBUFFORCE, SO_ATTACH_FILTER = 33, 26
Bpf = list[tuple[int, int, int, int]]  # (code, jt, jf, k)
#: IPv4 ICMP and UDP frames only (on Ethernet): watching a busy namespace for a probe
IPV4_ICMP_UDP: Bpf = [(0x28, 0, 0, 12), (0x15, 0, 4, 0x0800), (0x30, 0, 0, 23),
                      (0x15, 1, 0, 1), (0x15, 0, 1, 17), (0x06, 0, 0, 0xFFFF),
                      (0x06, 0, 0, 0)]


@dataclass(frozen=True)
class Point:
    """Where to capture: a host's namespace (all its interfaces), or root-namespace ports."""
    where: str  # host name, or ``switch:NAME`` for ports in the root namespace
    netns: str | None  # None: the root namespace
    ifnames: tuple[str, ...] = ()  # root namespace: exactly these interfaces


@dataclass(frozen=True)
class Frame:
    ts: float  # kernel time the frame crossed the interface (seconds, CLOCK_REALTIME)
    where: str
    ifname: str
    outgoing: bool
    hatype: int  # ARPHRD_*: how to decode the frame (Ethernet, raw IP)
    data: bytes


class Capture:
    """Capture on ``points`` from ``start()`` to ``stop()``; frames sorted by time."""

    def __init__(self, points: list[Point], keep: Callable[[Frame], bool] | None = None,
                 on_frame: Callable[[Frame], None] | None = None, bpf: Bpf | None = None
                 ) -> None:
        self.points = points
        self.bpf = bpf  # a classic BPF program: the kernel drops what it rejects
        self.keep = keep or (lambda f: True)
        self.on_frame = on_frame
        self.frames: list[Frame] = []
        self._sel = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            for point in self.points:
                try:
                    socks = _open(point, self.bpf)
                except FileNotFoundError:  # a pod deleted since the state was read
                    log.info("capture: %s is gone", point.where)
                    continue
                for sock in socks:
                    self._socks.append(sock)
                    self._sel.register(sock, selectors.EVENT_READ, point.where)
        except BaseException:
            self._close()
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True, name="capture")
        self._thread.start()

    def stop(self) -> list[Frame]:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        self._close()
        self.frames.sort(key=lambda f: f.ts)
        return self.frames

    def _close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    self._drain_all()
                    return
                self._read(key.fileobj, key.data)  # type: ignore[arg-type]

    def _drain_all(self) -> None:
        """Frames already queued when stop() came still count."""
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                self._read(key.fileobj, key.data)  # type: ignore[arg-type]

    def _read(self, sock: socket.socket, where: str) -> None:
        while True:
            try:
                data, anc, _flags, addr = sock.recvmsg(SNAPLEN, 64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # the interface went away (a pod deleted meanwhile)
                log.debug("capture on %s: %s", where, exc)
                return
            ts = 0.0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    ts = sec + nsec / 1e9
            frame = Frame(ts, where, addr[0], addr[2] == PACKET_OUTGOING, addr[3], data)
            if self.keep(frame):
                self.frames.append(frame)
                if self.on_frame is not None:
                    self.on_frame(frame)


def _open(point: Point, bpf: Bpf | None = None) -> list[socket.socket]:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:  # root may exceed net.core.rmem_max (a busy namespace must not drop frames)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if bpf:
            prog = b"".join(struct.pack("HBBI", *insn) for insn in bpf)
            buf = ctypes.create_string_buffer(prog)
            fprog = struct.pack("HL", len(bpf), ctypes.addressof(buf))
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        return s

    if point.netns is None:
        out = []
        for ifname in point.ifnames:
            s = make()
            try:
                s.bind((ifname, ETH_P_ALL))
            except OSError:  # a port that went away between listing and binding
                s.close()
                continue
            out.append(s)
        return out
    with entered(point.netns):
        return [make()]
