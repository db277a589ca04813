"""Kernel routes owned by knetlab, reconciled level-triggered in one ``ip -batch``.

Every route knetlab's data planes install carries protocol number ``ROUTE_PROTO``, so a
sync can list exactly its own routes, replace the desired ones and delete the rest
without touching connected routes or anything a user added.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING

from knetlab import shell

if TYPE_CHECKING:
    from knetlab.nodes.host import NetnsHost

ROUTE_PROTO = "77"  # unassigned in /etc/iproute2/rt_protos; shown as "proto 77"


def owned_routes(host: NetnsHost | None) -> dict[str, dict]:
    """dst -> the route as ``ip -j route`` lists it, for knetlab's routes. In the current
    namespace (an agent's periodic repair pass) read by netlink: no ``ip`` process."""
    if host is None:
        try:
            return {r["dst"]: r for r in dump_routes(int(ROUTE_PROTO))}
        except OSError:
            pass  # fall back to ip
    out = shell.run(["ip", "-j", "route", "show", "proto", ROUTE_PROTO],
                    netns=host.netns if host else None).stdout
    return {r["dst"]: r for r in json.loads(out or "[]")}


# linux/rtnetlink.h
RTM_NEWROUTE, RTM_GETROUTE, NLMSG_ERROR, NLMSG_DONE = 24, 26, 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RTN_UNICAST, RTN_BLACKHOLE, RTNH_F_ONLINK = 254, 1, 6, 0x4


def dump_routes(protocol: int) -> list[dict]:
    """The main table's IPv4 routes of ``protocol`` in this namespace, in the fields of
    ``ip -j route`` that ``already`` compares (dst, gateway, dev, flags onlink, type)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sk:
        # nlmsghdr + rtmsg (family AF_INET, everything else 0: the kernel filters nothing)
        sk.send(struct.pack("=IHHII", 28, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                + struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))
        routes: list[dict] = []
        while True:
            data, off = sk.recv(1 << 16), 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    return routes
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], "route dump")
                if kind == RTM_NEWROUTE:
                    route = _route(data[off + 16:off + length], protocol)
                    if route is not None:
                        routes.append(route)
                if length < 16:
                    raise OSError("route dump: bad netlink message")
                off += (length + 3) & ~3


def _route(msg: bytes, protocol: int) -> dict | None:
    family, dst_len, _src, _tos, table, proto, _scope, rtype, flags = struct.unpack_from(
        "=BBBBBBBBI", msg)
    if family != socket.AF_INET or proto != protocol:
        return None
    attrs, off = {}, 12
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        attrs[atype] = msg[off + 4:off + alen]
        off += (alen + 3) & ~3
    if RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[RTA_TABLE])[0]
    if table != RT_TABLE_MAIN:
        return None
    dst = socket.inet_ntoa(attrs[RTA_DST]) if RTA_DST in attrs else "default"
    route: dict = {"dst": dst if dst_len in (0, 32) else f"{dst}/{dst_len}",  # as ip prints
                   "flags": ["onlink"] if flags & RTNH_F_ONLINK else []}
    if rtype != RTN_UNICAST:  # ip names the type of all others; a number says "not ours"
        route["type"] = "blackhole" if rtype == RTN_BLACKHOLE else str(rtype)
    if RTA_GATEWAY in attrs:
        route["gateway"] = socket.inet_ntoa(attrs[RTA_GATEWAY])
    if RTA_OIF in attrs:
        route["dev"] = socket.if_indextoname(struct.unpack("=I", attrs[RTA_OIF])[0])
    return route


def already(route: dict | None, hop: str) -> bool:
    """Whether a listed route is ``hop`` already. Conservative: only the forms "blackhole"
    and "via X [dev Y] [onlink]" are compared, anything else counts as different (and is
    replaced, as before), so a periodic repair pass costs one listing when nothing is
    missing instead of an ``ip -batch`` rewriting every route."""
    if route is None:
        return False
    if hop == "blackhole":
        return route.get("type") == "blackhole"
    words, want = hop.split(), {"onlink": False}
    while words:
        key = words.pop(0)
        if key == "onlink":
            want["onlink"] = True
        elif key in ("via", "dev") and words:
            want[key] = words.pop(0)
        else:
            return False
    return (route.get("type", "unicast") == "unicast" and "via" in want
            and route.get("gateway") == want["via"]
            and ("dev" not in want or route.get("dev") == want["dev"])
            and ("onlink" in route.get("flags", [])) == want["onlink"])


def reconcile_routes(host: NetnsHost | None, desired: dict[str, str]) -> None:
    """Make ``host``'s knetlab routes exactly ``desired`` (dst -> "via X" / "nexthop ..." /
    "blackhole", whose type ip wants before the destination). ``host`` None: the current
    namespace (an agent process living in its node, as flanneld does). Routes already as
    desired are left alone."""
    have = owned_routes(host)
    stale = set(have) - set(desired)
    lines = [f"route replace blackhole {dst} proto {ROUTE_PROTO}" if hop == "blackhole" else
             f"route replace {dst} proto {ROUTE_PROTO} {hop}" for dst, hop in desired.items()
             if not already(have.get(dst), hop)]
    lines += [f"route del {dst} proto {ROUTE_PROTO}" for dst in sorted(stale)]
    if lines:
        where = host.name if host else "this namespace"
        shell.ip_batch(lines, netns=host.netns if host else None,
                       context=f"sync routes on {where}")
