"""Test helper: ``serve PORT...`` answers tcp and udp on each port with ``PORT peer=IP``
(the source address the server saw); ``client tcp|udp HOST PORT`` prints the answer."""

from __future__ import annotations

import socket
import sys
import threading


def _tcp(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        conn, peer = s.accept()
        with conn:
            conn.recv(100)
            conn.sendall(f"{port} peer={peer[0]}\n".encode())


def _udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(100)
        s.sendto(f"{port} peer={peer[0]}\n".encode(), peer)


def client(proto: str, host: str, port: int, timeout: float = 1.0) -> str:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"hi\n")
        return s.recv(100).decode().strip()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        for p in sys.argv[2:]:
            for fn in (_tcp, _udp):
                threading.Thread(target=fn, args=(int(p),), daemon=True).start()
        threading.Event().wait()
    else:
        try:
            print(client(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        except OSError as exc:
            print(f"error: {exc}")
            sys.exit(1)
