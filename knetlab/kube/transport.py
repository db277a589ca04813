"""HTTP/1.1 over TLS to the lab's API server: the transport of ``knetlab.kube.client``.

Why not ``http.client``: it imports ``email`` (its header parser), ~6 ms of start-up CPU in
every process that talks to the API, and three such agents run on every node. This speaks
just what the client needs: a request with a Content-Length body on a kept-alive
connection; a response framed by Content-Length, chunked, or the connection's end; a body
read whole or line by line (a watch sends one JSON event per line). The reading half is
etcd's client's (``knetlab.storewire.Wire``); this adds the TLS dial and any method.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

from knetlab.storewire import Wire, WireError

__all__ = ["Connection", "Response", "WireError"]


class Connection(Wire):
    """One kept-alive HTTPS connection, dialled on first use; one request at a time.

    ``connect_timeout`` bounds the dial and TLS handshake, ``timeout`` every read after: an
    in-cluster client whose node has not routed the ``kubernetes`` Service yet sees its SYN
    dropped, and a dial waiting the whole read timeout held an informer's first list that
    long."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float | None,
                 connect_timeout: float) -> None:
        self.host, self.port, self.context = host, port, context
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.sock: ssl.SSLSocket | None = None
        self.buf = b""
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # Host: too

    def connect(self) -> None:
        dial = (self.connect_timeout if self.timeout is None
                else min(self.timeout, self.connect_timeout))
        raw = socket.create_connection((self.host, self.port), timeout=dial)
        try:
            # one write per request: no Nagle wait when TLS splits it in several segments
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(self.timeout)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds
        if self.sock is not None:
            self.sock.settimeout(seconds)

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None = None) -> Response:
        """Send one request and read the response's head; read the body from the
        ``Response`` before the next request."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.peer}",
                 "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        while True:
            status, head = self.response_head()
            if status >= 200 or status == 101:
                break  # 1xx (100 Continue): informational, the real answer follows
        return Response(self, method, status, head)


class Response:
    """A response whose head is read; its body is read once, with ``read`` or ``lines``.
    The connection stays open for the next request only when the body was read to its end
    and the server did not say ``Connection: close``."""

    def __init__(self, conn: Connection, method: str, status: int,
                 headers: dict[str, str]) -> None:
        self.conn, self.status, self.headers = conn, status, headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.length = None if self.chunked or length is None else int(length)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self.length = 0
        self.keep_alive = headers.get("connection", "").lower() != "close"

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        """The body line by line (each with its ``\\n``), as the bytes arrive."""
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def chunks(self) -> Iterator[bytes]:
        conn = self.conn
        if self.chunked:
            while (chunk := conn.chunk()) is not None:
                yield chunk
        elif self.length is not None:
            if self.length:
                yield conn._exact(self.length)
        else:  # delimited by the connection's end
            self.keep_alive = False
            yield conn._rest()
        if not self.keep_alive:
            conn.close()
