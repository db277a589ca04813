"""A minimal OVSDB client (RFC 7047 ``transact`` over a unix socket) for CNI plugins.

``ovs-vsctl`` costs a pod ~4 ms to start and then fetches every table it might touch
(Open_vSwitch, Bridge, Port, Interface: it grows with the ports on the node) before it
commits; by default it then waits for vswitchd to reconfigure. A plugin that knows the
exact rows it writes needs one ``transact``: this sends it on ``_socket`` with ``_json``
(nothing to import) and reads the one reply.
"""

from __future__ import annotations

import _socket

from knetlab.cni.types import dumps, loads

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms
if TYPE_CHECKING:
    from typing import Any

DATABASE = "Open_vSwitch"
TIMEOUT = 10.0


class OvsdbError(Exception):
    """The server cannot be reached, or it refused an operation (the message says which)."""


def transact(endpoint: str, ops: list[dict[str, Any]], timeout: float = TIMEOUT
             ) -> list[dict[str, Any]]:
    """Run ``ops`` as one transaction on ``endpoint`` (``unix:PATH``); the per-operation
    results. A failed operation aborts the whole transaction (RFC 7047 4.1.3): its result
    carries ``error`` and the ones after it are null; the caller decides what to make of
    it (``wait`` ops fail with "timed out" by design). A transaction-wide error raises."""
    scheme, _, path = endpoint.partition(":")
    if scheme != "unix" or not path:
        raise OvsdbError(f"ovsdb endpoint {endpoint!r}: only unix:PATH is supported")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(dumps({"method": "transact", "params": [DATABASE, *ops],
                            "id": 0}).encode())
        reply = _read_reply(sock, 0)
    except OSError as exc:
        raise OvsdbError(f"ovsdb {path}: {exc}") from None
    finally:
        sock.close()
    if reply.get("error") is not None:
        raise OvsdbError(f"ovsdb {path}: {reply['error']}")
    return [r or {} for r in reply.get("result") or []]


def _read_reply(sock: _socket.socket, msg_id: int) -> dict[str, Any]:
    """Read until the reply to ``msg_id`` (the server sends nothing unasked on a fresh
    connection, but an ``echo`` keep-alive would come first: answer nothing, skip it)."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed before the reply")
        buf += chunk
        try:
            msg = loads(buf)
        except ValueError:
            continue  # not a whole JSON document yet (replies are not framed)
        if isinstance(msg, dict) and msg.get("id") == msg_id and "method" not in msg:
            return msg
        buf = b""


def where_name(name: str) -> list[list[str]]:
    return [["name", "==", name]]


def omap(items: dict[str, str]) -> list[Any]:
    """An OVSDB map (string -> string) in the wire format."""
    return ["map", [[k, v] for k, v in items.items()]]
