"""``kubectl port-forward``: SPDY/3.1 over a WebSocket, relayed to a port inside the pod.

kubectl 1.31+ opens ``GET .../pods/P/portforward`` as a WebSocket with the subprotocol
``SPDY/3.1+portforward.k8s.io``; the binary messages carry a raw SPDY/3.1 byte stream, cut
anywhere (an empty message is not EOF). Per local connection the client opens an *error*
stream, then a *data* stream (SYN_STREAM headers ``streamtype``, ``port``, ``requestid``).
We answer SYN_REPLY to each, connect to 127.0.0.1:<port> inside the pod's network
namespace and relay DATA both ways; on RST_STREAM or EOF we FIN the data stream, then the
error stream (a non-empty error text tells kubectl the forward failed). PINGs are echoed;
SETTINGS, WINDOW_UPDATE and GOAWAY need no answer.

Header blocks are zlib-compressed with the SPDY/3 dictionary, one zlib stream per
direction for the whole session, sync-flushed per frame. The socket to the pod is made in
a short-lived thread that entered the pod's netns with setns(2) (only that thread
changes namespace) and is then handed to asyncio.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from knetlab.errors import NotFoundError

from .errors import bad_request

log = logging.getLogger("knetlab.kube.apiserver.portforward")

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
CLONE_NEWNET = 0x40000000
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01

_WORDS = ("options head post put delete trace accept accept-charset accept-encoding "
          "accept-language accept-ranges age allow authorization cache-control connection "
          "content-base content-encoding content-language content-length content-location "
          "content-md5 content-range content-type date etag expect expires from host if-match "
          "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
          "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
          "server te trailer transfer-encoding upgrade user-agent vary via warning "
          "www-authenticate method get status").split() + ["200 OK"] + \
    "version HTTP/1.1 url public set-cookie keep-alive origin".split()
_TAIL = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417"
         "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
         "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
         "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
         "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
         "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
         "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
         "charset=iso-8859-1,utf-,*,enq=0.")


def _dictionary() -> bytes:
    """The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00 2.6.10.1):
    length-prefixed header names and values, then a tail of common strings."""
    out = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS)
    return out + _TAIL.encode()


SPDY3_DICT = _dictionary()


def connect_in_netns(netns: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port inside the network namespace at ``netns``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["sock"] = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as exc:
            result["error"] = exc
    # A thread of its own: setns changes only the calling thread, which then just ends.
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout + 1)
    if "sock" not in result:
        raise result.get("error") or OSError(f"connect to port {port} timed out")
    return result["sock"]


async def portforward_ws(request: web.Request, rundir: Path, pod: dict[str, Any]
                         ) -> web.StreamResponse:
    from knetlab.kube.runtime import sandbox_netns

    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise bad_request("Upgrade request required (port-forward is served over WebSocket)")
    try:
        netns = sandbox_netns(rundir, pod)
    except NotFoundError as exc:
        raise bad_request(f"unable to upgrade connection: {exc}") from None
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), autoping=True, max_msg_size=0)
    await ws.prepare(request)
    session = SpdySession(ws, netns, pod["metadata"]["name"])
    try:
        await session.run()
    finally:
        session.close()
    return ws


class SpdySession:
    def __init__(self, ws: web.WebSocketResponse, netns: str, pod: str) -> None:
        self.ws, self.netns, self.pod = ws, netns, pod
        self.inflate = zlib.decompressobj(zdict=SPDY3_DICT)
        self.deflate = zlib.compressobj(zdict=SPDY3_DICT)
        self.buf = b""
        self.lock = asyncio.Lock()
        self.streams: dict[int, dict[str, str]] = {}
        self.error_of: dict[str, int] = {}  # requestid -> error stream id
        self.writers: dict[int, asyncio.StreamWriter] = {}
        # Data can arrive before the connection to the pod is made: queue it per stream.
        self.inbox: dict[int, asyncio.Queue[tuple[bytes, bool] | None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                self.buf += msg.data
                await self._frames()
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in self.writers.values():
            w.close()

    # -- framing ---------------------------------------------------------------------------
    async def _frames(self) -> None:
        while len(self.buf) >= 8:
            length = int.from_bytes(self.buf[5:8], "big")
            if len(self.buf) < 8 + length:
                return
            head, body = self.buf[:8], self.buf[8:8 + length]
            self.buf = self.buf[8 + length:]
            flags = head[4]
            if head[0] & 0x80:
                await self._control(int.from_bytes(head[2:4], "big"), flags, body, head)
            else:
                sid = int.from_bytes(head[0:4], "big") & 0x7FFFFFFF
                await self._data(sid, flags, body)

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self.inflate.decompress(block)
        n, pos, out = int.from_bytes(raw[0:4], "big"), 4, {}
        for _ in range(n):
            klen = int.from_bytes(raw[pos:pos + 4], "big")
            key = raw[pos + 4:pos + 4 + klen].decode()
            pos += 4 + klen
            vlen = int.from_bytes(raw[pos:pos + 4], "big")
            out[key.lower()] = raw[pos + 4:pos + 4 + vlen].decode()
            pos += 4 + vlen
        return out

    async def _send(self, frame: bytes) -> None:
        async with self.lock:
            if not self.ws.closed:
                await self.ws.send_bytes(frame)

    async def send_control(self, typ: int, flags: int, body: bytes) -> None:
        await self._send(struct.pack(">HHI", 0x8003, typ, (flags << 24) | len(body)) + body)

    async def send_data(self, sid: int, data: bytes, fin: bool = False) -> None:
        await self._send(struct.pack(">II", sid, ((FLAG_FIN if fin else 0) << 24) | len(data))
                         + data)

    async def _control(self, typ: int, flags: int, body: bytes, head: bytes) -> None:
        log.debug("spdy control type %d flags %d len %d", typ, flags, len(body))
        if typ == SYN_STREAM:
            sid = int.from_bytes(body[0:4], "big") & 0x7FFFFFFF
            headers = self._headers(body[10:])
            self.streams[sid] = headers
            block = self.deflate.compress(b"\x00\x00\x00\x00") + \
                self.deflate.flush(zlib.Z_SYNC_FLUSH)
            await self.send_control(SYN_REPLY, 0, struct.pack(">I", sid) + block)
            kind, rid = headers.get("streamtype"), headers.get("requestid", "")
            if kind == "error":
                self.error_of[rid] = sid
            elif kind == "data":
                self.inbox[sid] = asyncio.Queue()
                self._spawn(self._open(sid, rid, headers.get("port", "")))
        elif typ == HEADERS:
            self._headers(body[4:])  # keep the zlib stream in step
        elif typ == PING:
            await self._send(head + body)
        elif typ == RST_STREAM:
            sid = int.from_bytes(body[0:4], "big") & 0x7FFFFFFF
            q = self.inbox.pop(sid, None)
            if q is not None:
                q.put_nowait(None)

    async def _data(self, sid: int, flags: int, body: bytes) -> None:
        log.debug("spdy data stream %d flags %d len %d", sid, flags, len(body))
        q = self.inbox.get(sid)
        if q is not None:
            q.put_nowait((body, bool(flags & FLAG_FIN)))

    async def _to_pod(self, sid: int, writer: asyncio.StreamWriter) -> None:
        q = self.inbox.get(sid)
        while q is not None:
            item = await q.get()
            if item is None:  # RST_STREAM: the client gave up on this connection
                writer.close()
                return
            body, fin = item
            if body:
                writer.write(body)
                await writer.drain()
            if fin:
                if writer.can_write_eof():
                    writer.write_eof()
                return

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # -- relaying --------------------------------------------------------------------------
    async def _open(self, sid: int, rid: str, port_text: str) -> None:
        err_sid = self.error_of.get(rid)
        try:
            port = int(port_text)
            sock = await asyncio.get_running_loop().run_in_executor(
                None, _connect_thread, self.netns, port)
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, ValueError) as exc:
            msg = (f"error forwarding port {port_text} to pod {self.pod}, uid : "
                   f"failed to connect to localhost:{port_text} inside namespace: {exc}")
            await self.send_data(sid, b"", fin=True)
            if err_sid is not None:
                await self.send_data(err_sid, msg.encode(), fin=True)
            return
        self.writers[sid] = writer
        self._spawn(self._to_pod(sid, writer))
        try:
            while True:
                data = await reader.read(1 << 15)
                if not data:
                    break
                await self.send_data(sid, data)
        except (OSError, ConnectionError):
            pass
        finally:
            self.writers.pop(sid, None)
            self.inbox.pop(sid, None)
            writer.close()
            await self.send_data(sid, b"", fin=True)
            if err_sid is not None:
                await self.send_data(err_sid, b"", fin=True)


def _connect_thread(netns: str, port: int) -> socket.socket:
    # Runs in an executor thread, but connect_in_netns does the setns in a thread of its
    # own, so the executor's thread never changes namespace.
    return connect_in_netns(netns, port)
