"""The lab's etcd: one ``etcd`` process per lab, and an asyncio client over its v3 JSON gateway.

``EtcdDaemon`` runs Debian's etcd 3.4 on loopback (client and peer URLs on free 127.0.0.1
ports, data dir 0700 in its daemon dir, which is on tmpfs under /run so fsync is cheap;
3.4 has no ``--unsafe-no-fsync``). Auto-compaction keeps the last revisions a watcher can
resume from; older resume points get "compacted" and the API server answers 410 Gone.

``EtcdClient`` speaks the grpc-gateway JSON API (``/v3/kv/range|put|txn|deleterange``,
``/v3/watch``): keys and values are base64, int64 fields are strings. Only what the API
server needs: range (prefix, limit, revision), put, compare-and-swap txns on
``mod_revision`` / ``create_revision``, delete, and a streaming watch with ``prev_kv``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from knetlab.daemon import Daemon
from knetlab.errors import KnetlabError
from knetlab.rundir import RunDir

log = logging.getLogger("knetlab.kube.etcd")

COMPACTION_RETENTION = 20000  # revisions kept for watchers resuming after a pause
SOCKET = "client.sock:0"  # etcd's unix listener (EtcdDaemon.socket_url), in its cwd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdDaemon(Daemon):
    """etcd for one lab: ``client_url`` is what the API server is given."""

    name = "etcd"
    ready_timeout = 15.0

    def __init__(self, rundir: RunDir, owner: str = "control-plane",
                 client_port: int | None = None, peer_port: int | None = None) -> None:
        super().__init__(rundir, owner)
        self.data_dir = self.dir / "data"
        ports = self.dir / "ports"
        if client_port is None and ports.exists():  # a restart keeps its URL
            client_port, peer_port = (int(p) for p in ports.read_text().split())
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        ports.write_text(f"{self.client_port} {self.peer_port}\n")

    @property
    def kube_dir(self) -> Path:
        return self.rundir.path / "kube"

    @property
    def tls(self) -> bool:
        """Client-certificate TLS once the lab's PKI has etcd's certificates (pki.make_pki)."""
        return (self.kube_dir / "etcd-server.crt").exists()

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def socket_url(self) -> str:
        """The lab store's endpoint: a unix socket (root only) in etcd's dir, reachable from
        every node's namespace, where agents and CNI plugins run and 127.0.0.1 is not
        this one. Plain HTTP: a file system permission guards it, and no TLS handshake
        is paid per CNI call. (etcd names it ``host:port``, relative to its cwd.)"""
        return f"unix://{self.dir / SOCKET}"

    def command(self) -> list[str]:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.data_dir.chmod(0o700)
        (self.dir / SOCKET).unlink(missing_ok=True)  # a killed etcd's: it would not bind
        peer = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.peer_port}"
        tls: list[str] = []
        if self.tls:
            k = self.kube_dir
            for side in ("", "peer-"):
                tls += [f"--{side}cert-file", str(k / "etcd-server.crt"),
                        f"--{side}key-file", str(k / "etcd-server.key"),
                        f"--{side}trusted-ca-file", str(k / "ca.crt"),
                        f"--{side}client-cert-auth"]
        return ["etcd", "--name", "knetlab", "--data-dir", str(self.data_dir), *tls,
                "--listen-client-urls", f"{self.client_url},unix://{SOCKET}",
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"knetlab={peer}",
                "--initial-cluster-token", f"knetlab-{self.rundir.cluster}",
                "--auto-compaction-mode", "revision",
                "--auto-compaction-retention", str(COMPACTION_RETENTION),
                "--snapshot-count", "20000", "--logger", "zap", "--log-level", "warn",
                # One member, no peers: it elects itself after the election timeout, which
                # is all of its boot time at the default 1 s (every lab waits for it).
                "--heartbeat-interval", "20", "--election-timeout", "100"]

    def is_ready(self) -> bool:
        ctx = client_ssl(self.kube_dir) if self.tls else None
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own URL
                    self.client_url + "/health", timeout=0.5, context=ctx) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


def client_ssl(kube_dir: Path) -> ssl.SSLContext:
    """TLS for a client of the lab's etcd: the lab CA and the etcd client certificate."""
    ctx = ssl.create_default_context(cafile=str(kube_dir / "ca.crt"))
    ctx.load_cert_chain(kube_dir / "etcd-client.crt", kube_dir / "etcd-client.key")
    return ctx


def etcdctl_tls_args(kube_dir: Path) -> list[str]:
    return ["--cacert", str(kube_dir / "ca.crt"), "--cert", str(kube_dir / "etcd-client.crt"),
            "--key", str(kube_dir / "etcd-client.key")]


class EtcdError(KnetlabError):
    pass


class Compacted(EtcdError):  # noqa: N818 - named as etcd names the condition
    """The requested revision was compacted away."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"required revision has been compacted (compacted to {compact_revision})")


@dataclass
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass
class WatchEvent:
    type: str  # PUT | DELETE
    kv: KV
    prev_kv: KV | None


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _kv(d: dict[str, Any]) -> KV:
    return KV(key=base64.b64decode(d.get("key", "")).decode(),
              value=base64.b64decode(d.get("value", "")),
              create_revision=int(d.get("create_revision", 0)),
              mod_revision=int(d.get("mod_revision", 0)),
              version=int(d.get("version", 0)))


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


class EtcdClient:
    """asyncio client of one etcd (create it inside the running loop)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None)

    async def close(self) -> None:
        await self.session.close()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url + path, json=body,
                                     timeout=aiohttp.ClientTimeout(total=30)) as r:
            data = await r.json(content_type=None)
        if r.status != 200 or "error" in data and "header" not in data:
            msg = data.get("message") or data.get("error") or data
            if "compacted" in str(msg):
                raise Compacted(0)
            raise EtcdError(f"etcd {path}: {msg}")
        return data

    async def range(self, key: str, *, prefix: bool = False, range_end: str = "",
                    limit: int = 0, revision: int = 0,
                    count_only: bool = False) -> tuple[int, list[KV], bool, int]:
        """(revision of the read, kvs sorted by key, more, count)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix or range_end:
            body["range_end"] = _b64(range_end or prefix_end(key))
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision
        if count_only:
            body["count_only"] = True
        data = await self._call("/v3/kv/range", body)
        kvs = [_kv(k) for k in data.get("kvs", [])]
        return (int(data["header"]["revision"]), kvs, bool(data.get("more")),
                int(data.get("count", 0)))

    async def get(self, key: str) -> tuple[int, KV | None]:
        rev, kvs, _, _ = await self.range(key)
        return rev, (kvs[0] if kvs else None)

    async def revision(self) -> int:
        rev, _, _, _ = await self.range("/", count_only=True)
        return rev

    async def put(self, key: str, value: bytes) -> int:
        data = await self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(data["header"]["revision"])

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return await self._call("/v3/kv/txn", {"compare": compare, "success": success,
                                               "failure": failure or []})

    async def put_if(self, key: str, value: bytes, mod_revision: int) -> int | None:
        """Put only if the key's mod_revision is ``mod_revision`` (0: only if absent);
        the new revision, or None when the compare failed."""
        target = "CREATE" if mod_revision == 0 else "MOD"
        field = "create_revision" if mod_revision == 0 else "mod_revision"
        cmp = {"key": _b64(key), "target": target, "result": "EQUAL", field: str(mod_revision)}
        res = await self.txn([cmp], [{"request_put": {"key": _b64(key), "value": _b64(value)}}])
        if not res.get("succeeded"):
            return None
        return int(res["header"]["revision"])

    async def delete_if(self, key: str, mod_revision: int) -> int | None:
        """Delete if unchanged since ``mod_revision``; the revision, or None."""
        cmp = {"key": _b64(key), "target": "MOD", "result": "EQUAL",
               "mod_revision": str(mod_revision)}
        res = await self.txn([cmp], [{"request_delete_range": {"key": _b64(key)}}])
        if not res.get("succeeded"):
            return None
        return int(res["header"]["revision"])

    async def delete(self, key: str, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        data = await self._call("/v3/kv/deleterange", body)
        return int(data["header"]["revision"])

    async def watch(self, key: str, start_revision: int, *,
                    prefix: bool = True) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events from ``start_revision`` on (``prev_kv`` included), forever;
        raises Compacted when that revision is gone, EtcdError when the stream ends."""
        req: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision),
                               "prev_kv": True}
        if prefix:
            req["range_end"] = _b64(prefix_end(key))
        async with self.session.post(self.url + "/v3/watch",
                                     json={"create_request": req}) as r:
            if r.status != 200:
                raise EtcdError(f"etcd watch: HTTP {r.status}")
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        raise EtcdError(f"etcd watch: {msg['error']}")
                    res = msg.get("result", {})
                    if int(res.get("compact_revision", 0) or 0):
                        raise Compacted(int(res["compact_revision"]))
                    if res.get("canceled"):
                        raise EtcdError(f"etcd watch canceled: {res.get('cancel_reason')}")
                    events = [WatchEvent(e.get("type", "PUT"), _kv(e["kv"]),
                                         _kv(e["prev_kv"]) if e.get("prev_kv") else None)
                              for e in res.get("events", [])]
                    if events:
                        yield events
        raise EtcdError("etcd watch stream ended")


async def wait_ready(url: str, timeout: float = 10.0,
                     ssl_context: ssl.SSLContext | None = None) -> None:
    """Wait until etcd answers (the API server may start while etcd is still booting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None
    async with aiohttp.ClientSession(connector=connector) as s:
        while True:
            try:
                async with s.get(url.rstrip("/") + "/health",
                                 timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            if loop.time() > deadline:
                raise EtcdError(f"etcd at {url} not ready after {timeout}s")
            await asyncio.sleep(0.05)
