"""The ``weave-ipam`` CNI IPAM plugin: addresses from the node's weave router.

As weave's own CNI plugin, it asks the router (the IPAM authority for the node's share of
the ring) instead of keeping files: ``{"op": "allocate", "id": ...}`` on the router's
unix socket (``ipam.socket`` in the network config) returns an address of the whole range
(``10.32.0.5/12``: every pod is on one flat L2 network) and the gateway, the bridge's own
address. DEL releases (idempotent); CHECK asks the router whether the container still has
its address.

A plugin's start-up time is paid by every pod: only C modules are imported (``_socket``,
not ``socket``, which pulls in enum, selectors and more; JSON through knetlab.cni.types,
not ``json``, which pulls in re): ~11 ms of CPU less per run. knetlab's bridge plugin runs
this one in its own process (knetlab.cni.invoke.IN_PROCESS), which saves the Python start;
in a lab that process is the weave router itself, serving the ``weave-net`` plugin
(knetlab/cni/agent.py), so the request below goes to its own event loop.
"""

from __future__ import annotations

import _socket

from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import (
    INVALID_CONFIG,
    TRY_AGAIN_LATER,
    CNIError,
    convert_result,
    dumps,
    loads,
)

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

TIMEOUT = 15.0  # the router may be waiting for a donation of address space


def ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request, one JSON line back (the router closes after replying)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(path)
        s.sendall(dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise CNIError(TRY_AGAIN_LATER, f"weave-ipam: cannot reach the weave router at {path}",
                       str(exc)) from None
    finally:
        s.close()
    try:
        reply = loads(data or b"{}")
    except ValueError as exc:
        raise CNIError(TRY_AGAIN_LATER, "weave-ipam: the weave router's reply is no JSON",
                       str(exc)) from None
    if reply.get("error"):
        raise CNIError(TRY_AGAIN_LATER, f"weave-ipam: {reply['error']}")
    return reply


def _router_socket(args: Args) -> str:
    ipam = args.conf.get("ipam") or {}
    path = ipam.get("socket")
    if not path:
        raise CNIError(INVALID_CONFIG, "weave-ipam: ipam.socket (the router's) is required")
    return str(path)


def _ident(args: Args) -> str:
    return f"{args.container_id}/{args.ifname}"


def add(args: Args) -> dict[str, Any]:
    reply = ask(_router_socket(args), {"op": "allocate", "id": _ident(args)})
    result = {"cniVersion": args.version,
              "ips": [{"address": reply["ip"], "gateway": reply["gateway"]}],
              "routes": (args.conf.get("ipam") or {}).get("routes", []), "dns": {}}
    return convert_result(result, args.version)


def delete(args: Args) -> None:
    try:
        ask(_router_socket(args), {"op": "release", "id": _ident(args)})
    except CNIError:
        pass  # DEL must succeed when the router (and its node) are already gone


def check(args: Args) -> None:
    if not ask(_router_socket(args), {"op": "lookup", "id": _ident(args)}).get("ip"):
        raise CNIError(INVALID_CONFIG, f"weave-ipam: no address for {_ident(args)}")


def status(args: Args) -> None:
    ask(_router_socket(args), {"op": "status"})


def main() -> None:
    plugin_main(add, delete, check, status)
