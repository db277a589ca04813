"""TCP request/response and connect probes, run as a program inside a pod's namespace:
``python -m knetlab.compare.rr serve PORT PIDFILE`` and
``python -m knetlab.compare.rr rr|crr IP PORT ...``.

Why our own tool: netperf is not in Debian's main archive and iperf3 has no round-trip
mode. One small program, the same for every plane, so its own cost (a Python loop) is a
constant that the ratio to the host baseline cancels out.

Protocol: the client sends a 4-byte big-endian message size first. Size 0 means "connect
only": the server closes at once (a TCP_CRR-like transaction: SYN, SYN-ACK, ACK, 4 bytes,
FIN). Otherwise the server echoes every message of that size until the client closes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time


def _recv_exact(sock: socket.socket, n: int, buf: bytearray) -> bool:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            return False
        got += k
    return True


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = bytearray(4)
        if not _recv_exact(conn, 4, head):
            return
        size = struct.unpack("!I", head)[0]
        if size == 0:
            return
        buf = bytearray(size)
        while _recv_exact(conn, size, buf):
            conn.sendall(buf)


def serve(port: int, pidfile: str) -> None:
    """Listen, then detach (so the caller knows it is ready when this returns)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(1024)
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def round_trips(ip: str, port: int, size: int, count: int) -> list[float]:
    """Microseconds of ``count`` request/response exchanges of ``size`` bytes each way on
    one connection (after 20 unmeasured warm-up exchanges)."""
    sock = socket.create_connection((ip, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(struct.pack("!I", size))
    msg, buf = bytes(size), bytearray(size)
    out = []
    for i in range(count + 20):
        t = time.perf_counter()
        sock.sendall(msg)
        if not _recv_exact(sock, size, buf):
            raise RuntimeError("server closed the connection")
        if i >= 20:
            out.append((time.perf_counter() - t) * 1e6)
    sock.close()
    return out


def connects(ip: str, port: int, seconds: float) -> dict[str, float]:
    """Complete connect + 4 bytes + server close transactions for ``seconds``: the rate."""
    head = struct.pack("!I", 0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sock = socket.create_connection((ip, port), timeout=5)
        sock.sendall(head)
        sock.recv(1)  # b"": the server's FIN
        sock.close()
        n += 1
    elapsed = time.perf_counter() - t0
    return {"connects": n, "seconds": elapsed, "per_s": n / elapsed}


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "serve":
        serve(int(argv[1]), argv[2])
    elif cmd == "rr":  # rr IP PORT COUNT SIZE...
        ip, port, count = argv[1], int(argv[2]), int(argv[3])
        print(json.dumps({size: round_trips(ip, port, int(size), count) for size in argv[4:]}))
    elif cmd == "crr":  # crr IP PORT SECONDS
        print(json.dumps(connects(argv[1], int(argv[2]), float(argv[3]))))
    else:
        print(f"usage: {sys.argv[0]} serve PORT PIDFILE | rr IP PORT COUNT SIZE... | "
              "crr IP PORT SECONDS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
