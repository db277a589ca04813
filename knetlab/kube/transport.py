"""HTTP/1.1 over TLS to the lab's API server: the transport of ``knetlab.kube.client``.

Why not ``http.client``: it imports ``email`` (its header parser), ~6 ms of start-up CPU in
every process that talks to the API, and three such agents run on every node. This speaks
just what the client needs (as ``knetlab/storewire.py`` does for etcd): a request with a
Content-Length body on a kept-alive connection; a response framed by Content-Length,
chunked, or the connection's end; a chunked body read whole or line by line (a watch sends
one JSON event per line).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

#: the longest status line or header block we accept (the API server's are tiny)
MAX_HEAD = 65536


class WireError(OSError):
    """The server closed the connection early or spoke no HTTP/1.1 we understand (an
    ``OSError``, as a failed ``recv`` is: callers retry both the same way)."""


class Connection:
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
        self.host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

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
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}",
                 "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        while True:
            status, head = self._head()
            if status >= 200 or status == 101:
                break  # 1xx (100 Continue): informational, the real answer follows
        return Response(self, method, status, head)

    # -- buffered reads --------------------------------------------------------------------
    def _head(self) -> tuple[int, dict[str, str]]:
        raw = self._until(b"\r\n\r\n", MAX_HEAD)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"not an HTTP/1.1 response from {self.host_header}: {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _fill(self) -> bool:
        assert self.sock is not None
        more = self.sock.recv(65536)
        self.buf += more
        return bool(more)

    def _until(self, delim: bytes, limit: int = 1 << 30) -> bytes:
        start = 0
        while True:
            at = self.buf.find(delim, start)
            if at >= 0:
                out, self.buf = self.buf[:at], self.buf[at + len(delim):]
                return out
            if len(self.buf) > limit:
                raise WireError(f"over-long HTTP head from {self.host_header}")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                raise WireError(f"{self.host_header} closed the connection")

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise WireError(f"{self.host_header} closed the connection mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


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
            while True:
                size = int(conn._until(b"\r\n", MAX_HEAD).split(b";")[0], 16)
                if size == 0:
                    while conn._until(b"\r\n", MAX_HEAD):  # trailers, then the empty line
                        pass
                    break
                yield conn._exact(size)
                conn._exact(2)
        elif self.length is not None:
            if self.length:
                yield conn._exact(self.length)
        else:  # delimited by the connection's end
            self.keep_alive = False
            yield conn._rest()
        if not self.keep_alive:
            conn.close()
