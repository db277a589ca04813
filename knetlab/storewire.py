"""HTTP/1.1 to etcd's JSON gateway, small enough for a CNI plugin's start-up budget.

``http.client`` (with ``email``), ``socket`` (with ``enum``), ``base64`` and ``json`` (with
``re``) cost a ``python3 -S`` plugin 10x its whole import time on a loaded machine, so this
speaks just what the gateway needs over the C modules (``_socket``, ``_json``,
``binascii``): POST with a Content-Length body, a response with Content-Length or chunked,
and a chunked stream read message by message (``/v3/watch``). A unix socket (the lab's
endpoint) needs nothing else; ``https://`` wraps the socket with ``ssl`` (imported then).
"""

from __future__ import annotations

import _socket
import binascii

from knetlab.cni.types import dumps, loads  # json's C half only (see there)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms
if TYPE_CHECKING:
    from typing import Any


class WireError(OSError):
    """The connection failed or the server spoke no HTTP we understand (an ``OSError``, as a
    failed ``recv`` is: callers retry both the same way)."""


class Wire:
    """The reading half of an HTTP/1.1 client, over ``self.sock`` with a buffer: a response
    head, a Content-Length body, chunks, the rest up to the connection's end. Shared by the
    etcd ``Connection`` below and the API server's (``knetlab/kube/transport.py``)."""

    MAX_HEAD = 65536  # the longest status line, header block or chunk line accepted
    sock: Any
    buf = b""
    peer = "the server"  # named in errors

    def response_head(self) -> tuple[int, dict[str, str]]:
        """The status code and headers (lower-case names)."""
        raw = self._until(b"\r\n\r\n", self.MAX_HEAD)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"not an HTTP/1.1 response from {self.peer}: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None at its end (after any trailers)."""
        size = int(self._until(b"\r\n", self.MAX_HEAD).split(b";")[0], 16)
        if size == 0:
            while self._until(b"\r\n", self.MAX_HEAD):  # trailers, then the empty line
                pass
            return None
        data = self._exact(size)
        self._exact(2)
        return data

    def _fill(self) -> bool:
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
                raise WireError(f"over-long HTTP line from {self.peer}")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                raise WireError(f"{self.peer} closed the connection")

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise WireError(f"{self.peer} closed the connection mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _rest(self) -> bytes:
        """Everything up to the connection's end."""
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def b64(s: str | bytes) -> str:
    return binascii.b2a_base64(s.encode() if isinstance(s, str) else s, newline=False).decode()


def unb64(s: str) -> bytes:
    return binascii.a2b_base64(s)


class Connection(Wire):
    """One kept-alive HTTP/1.1 connection to etcd's gateway (not thread-safe: the caller
    locks)."""

    def __init__(self, endpoint: str, timeout: float, ssl_context: Any = None) -> None:
        scheme, _, rest = endpoint.partition("://")
        self.timeout, self.buf = timeout, b""
        if scheme == "unix":
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            address: Any = rest
        else:
            host, _, port = rest.rpartition(":")
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            address = (host, int(port))
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            if scheme == "https":
                import socket  # ssl wraps socket.socket objects, not _socket's
                sock = ssl_context.wrap_socket(socket.socket(fileno=sock.detach()),
                                               server_hostname=address[0])
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    # -- request / response ---------------------------------------------------------------
    def send(self, path: str, body: dict[str, Any]) -> None:
        data = dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        self.sock.sendall(head + data)

    def call(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST ``body``; the status and the decoded JSON answer."""
        self.send(path, body)
        status, headers = self.response_head()
        if "chunked" in headers.get("transfer-encoding", ""):
            data = b""
            while True:
                chunk = self.chunk()
                if chunk is None:
                    break
                data += chunk
        else:
            data = self._exact(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, loads(data) if data.strip() else {}
