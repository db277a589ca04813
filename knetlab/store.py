"""The lab's control-plane store: its etcd, through a small synchronous client.

Flannel's subnet leases, Calico's IPAM blocks, affinities and handles, and the OVS pod
registry live in the lab's etcd (the one the API server uses), at the keys flanneld and
Calico's etcd datastore use, so ``knetlab etcdctl get --prefix /coreos.com/network``
shows what a course shows.

Design notes:
- Stdlib only and cheap to import: CNI plugins (``python3 -S``) use it on every ADD.
  It speaks etcd's v3 JSON gateway (``/v3/kv/range|put|txn|deleterange``,
  ``/v3/lease/*``, ``/v3/watch``) over a minimal HTTP/1.1 (knetlab/storewire.py): a
  lab's clients use etcd's unix socket (they run in node namespaces, where the root
  namespace's loopback is not; knetlab/labstore.py); ``https://`` with a client
  certificate works too. One kept-alive connection per ``Store`` (under a lock: agents
  call from threads).
- Values are JSON objects. Atomic claims are etcd transactions: ``create`` compares
  ``create_revision == 0`` (the key is absent), ``put_if`` compares ``mod_revision``, so
  of any number of racing writers exactly one wins and the others re-read and retry.
- Leases are etcd leases: ``grant(ttl)``, ``keepalive`` (no new revision, so renewals
  wake no watcher), expiry deletes the key: expiry is release.
- Watches are level-triggered: ``wait(prefix, since)`` returns when anything under the
  prefix changed after revision ``since`` (an etcd watch from ``since + 1``); the caller
  re-reads the whole prefix and reconciles, so a missed or compacted event cannot drift.
- Where to connect is Calico's own configuration vocabulary: ``etcd_endpoints``,
  ``etcd_ca_cert_file``, ``etcd_cert_file``, ``etcd_key_file`` (``conf()``), which the CNI
  configuration carries; daemons get ``--store`` (``to_arg``).
"""

from __future__ import annotations

import _thread
import time

from knetlab.cni.types import dumps, loads
from knetlab.storewire import Connection, b64, unb64

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms
if TYPE_CHECKING:
    import ssl
    from typing import Any

TIMEOUT = 10.0  # seconds for one unary call (a loaded 2-core machine answers in ms)


class StoreError(Exception):
    """The store could not be reached or refused a request."""


def _b64(s: str | bytes) -> str:
    return b64(s)


def _unb64(s: str) -> str:
    return unb64(s).decode()


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


# -- transaction parts (etcd's Compare and RequestOp, as the JSON gateway spells them) ---
def absent(key: str) -> dict[str, Any]:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL",
            "mod_revision": str(mod_revision)}


def put_op(key: str, value: dict[str, Any], lease: int = 0) -> dict[str, Any]:
    req: dict[str, Any] = {"key": _b64(key), "value": _b64(dumps(value))}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


class Store:
    def __init__(self, endpoint: str, ca: str = "", cert: str = "", key: str = "") -> None:
        self.endpoint = endpoint.split(",")[0].rstrip("/")
        self.ca, self.cert, self.key = ca, cert, key
        scheme, _, hostport = self.endpoint.partition("://")
        self.https = scheme == "https"
        self._ssl: ssl.SSLContext | None = None
        self._conn: Connection | None = None
        self._lock = _thread.allocate_lock()

    # -- where the store is ------------------------------------------------------------
    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> Store:
        """From Calico's configuration keys (a CNI network configuration, ``conf()``)."""
        endpoint = conf.get("etcd_endpoints") or ""
        if not endpoint and conf.get("etcd_authority"):  # Calico's older single host:port
            endpoint = f"{conf.get('etcd_scheme', 'http')}://{conf['etcd_authority']}"
        if not endpoint:
            raise StoreError("no etcd_endpoints in the configuration")
        return cls(endpoint, conf.get("etcd_ca_cert_file", ""),
                   conf.get("etcd_cert_file", ""), conf.get("etcd_key_file", ""))

    @classmethod
    def from_arg(cls, text: str) -> Store:
        """From ``to_arg()``'s text: an endpoint URL, or the JSON of ``conf()``."""
        return cls.from_conf(loads(text)) if text.startswith("{") else cls(text)

    def conf(self) -> dict[str, str]:
        out = {"etcd_endpoints": self.endpoint}
        if self.https:
            out.update(etcd_ca_cert_file=self.ca, etcd_cert_file=self.cert,
                       etcd_key_file=self.key)
        return out

    def to_arg(self) -> str:
        """For a daemon's ``--store``: the endpoint alone where no certificate is needed
        (ExaBGP's ``run`` line takes no JSON), else the JSON of ``conf()``."""
        return dumps(self.conf()) if self.https else self.endpoint

    # -- transport -----------------------------------------------------------------------
    def _connect(self, timeout: float) -> Connection:
        if self.https and self._ssl is None:
            import ssl
            ctx = ssl.create_default_context(cafile=self.ca or None)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key or None)
            self._ssl = ctx
        try:
            return Connection(self.endpoint, timeout, self._ssl)
        except OSError as exc:
            raise StoreError(f"etcd {self.endpoint}: {exc}") from None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One unary gateway call; reconnects once if the kept-alive connection went."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = self._connect(TIMEOUT)
                try:
                    status, out = self._conn.call(path, body)
                    break
                except (OSError, ValueError) as exc:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise StoreError(f"etcd {self.endpoint}{path}: {exc}") from None
        if status != 200 or "error" in out and "header" not in out:
            raise StoreError(f"etcd {path}: {out.get('message') or out.get('error') or out}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- keys ----------------------------------------------------------------------------
    def range(self, key: str, prefix: bool = False,
              keys_only: bool = False) -> tuple[int, list[tuple[str, Any, int, int]]]:
        """(revision of the read, [(key, value, mod_revision, lease)] sorted by key)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if keys_only:
            body["keys_only"] = True
        out = self.call("/v3/kv/range", body)
        kvs = []
        for kv in out.get("kvs", []):
            value = None if keys_only else loads(unb64(kv.get("value", "")))
            kvs.append((_unb64(kv["key"]), value, int(kv.get("mod_revision", 0)),
                        int(kv.get("lease", 0))))
        return int(out["header"]["revision"]), kvs

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_kv(key)[0]

    def get_kv(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """(value, mod_revision); (None, 0) when absent."""
        _, kvs = self.range(key)
        return (kvs[0][1], kvs[0][2]) if kvs else (None, 0)

    def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        """key -> value for every key under the directory ``prefix`` (a ``/`` is added:
        ``docker/overlay/a`` must not list ``docker/overlay/ab/...``)."""
        if not prefix.endswith("/"):
            prefix += "/"
        return {k: v for k, v, _, _ in self.range(prefix, prefix=True)[1]}

    def revision(self) -> int:
        out = self.call("/v3/kv/range", {"key": _b64("\0"), "count_only": True})
        return int(out["header"]["revision"])

    def put(self, key: str, value: dict[str, Any], lease: int = 0) -> int:
        """Write ``key``; the revision of the write."""
        body = put_op(key, value, lease)["request_put"]
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> tuple[bool, int]:
        """(succeeded, revision) of one etcd transaction."""
        out = self.call("/v3/kv/txn", {"compare": compare, "success": success,
                                       "failure": failure or []})
        return bool(out.get("succeeded")), int(out["header"]["revision"])

    def create(self, key: str, value: dict[str, Any], lease: int = 0,
               also: list[dict[str, Any]] | None = None) -> bool:
        """Put only if ``key`` is absent (with ``also``'s operations, atomically): a claim."""
        return self.txn([absent(key)], [put_op(key, value, lease), *(also or [])])[0]

    def put_if(self, key: str, value: dict[str, Any], mod_revision: int,
               also: list[dict[str, Any]] | None = None, lease: int = 0) -> bool:
        """Put only if ``key`` is unchanged since ``mod_revision`` (0: absent)."""
        cmp = absent(key) if mod_revision == 0 else unchanged(key, mod_revision)
        return self.txn([cmp], [put_op(key, value, lease), *(also or [])])[0]

    def delete(self, key: str, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self.call("/v3/kv/deleterange", body)["header"]["revision"])

    # -- leases ---------------------------------------------------------------------------
    def grant(self, ttl: float) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        return int(self.call("/v3/lease/grant", {"TTL": str(int(ttl))})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease`` to its full TTL; the TTL granted, 0 if the lease is gone."""
        out = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(out.get("result", out).get("TTL", 0))

    def time_to_live(self, lease: int) -> int:
        """Seconds left on ``lease`` (-1: gone)."""
        out = self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(out.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: etcd deletes every key attached to it."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    # -- watch ----------------------------------------------------------------------------
    def wait(self, prefix: str, since: int, timeout: float) -> int:
        """Block until a key under ``prefix`` changes after revision ``since`` (or
        ``timeout`` seconds pass); the store's revision then, or ``since`` if nothing
        changed. Re-read after it: the events themselves are not returned."""
        deadline = time.monotonic() + timeout
        req = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                  "start_revision": str(since + 1)}}
        conn = self._connect(max(timeout, 0.01))
        try:
            conn.send("/v3/watch", req)
            status, headers = conn.response_head()
            if status != 200 or "chunked" not in headers.get("transfer-encoding", ""):
                raise StoreError(f"etcd watch {prefix}: HTTP {status}")
            pending = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return since
                conn.settimeout(left)
                chunk = conn.chunk()
                if chunk is None:
                    raise StoreError(f"etcd watch {prefix}: the stream ended")
                pending += chunk
                while b"\n" in pending:  # one JSON message per line
                    line, pending = pending.split(b"\n", 1)
                    if not line.strip():
                        continue
                    res = loads(line).get("result", {})
                    if int(res.get("compact_revision", 0) or 0) or res.get("canceled"):
                        return self.revision()  # events lost: the caller re-reads all
                    if res.get("events"):
                        return int(res["header"]["revision"])
        except TimeoutError:
            return since
        except (OSError, ValueError) as exc:
            raise StoreError(f"etcd watch {prefix}: {exc}") from None
        finally:
            conn.close()
