"""The routing decision of one namespace for a packet, asked of its kernel (``ip route get``).

For a packet that arrived on an interface the question carries that interface (``iif``),
so the answer is the forwarding decision (or ``local`` delivery); for the packet's origin
it is the output decision. A blackhole, unreachable or prohibit route is reported as the
kernel's answer, and where the next hop has no neighbour entry that resolved, that too:
a packet the kernel could not put on the wire.
"""

from __future__ import annotations

import json
import re
from typing import Any

from knetlab import shell


def route_get(netns: str | None, dst: str, src: str = "", iif: str = "") -> str:
    """The kernel's route for ``dst`` (from ``src``, arriving on ``iif``), one line."""
    argv = ["ip", "route", "get", dst]
    if iif:
        argv += ["from", src, "iif", iif] if src else ["iif", iif]
    res = shell.run(argv, netns=netns, check=False, timeout=10)
    text = (res.stdout if res.ok else res.stderr).strip().splitlines()
    line = " ".join(text[0].split()) if text else ""
    if not res.ok:  # the kernel refuses to answer for blackhole and friends: which route?
        route = _matching_route(netns, dst)
        return f"{route} ({line})" if route else line
    return re.sub(r" (cache|uid \d+)\b", "", line).strip()


def _matching_route(netns: str | None, dst: str) -> str:
    """The most specific route of the main table that holds ``dst``, as ``ip`` shows it."""
    res = shell.run(["ip", "-j", "route", "show", "match", dst], netns=netns, check=False,
                    timeout=10)
    routes = json.loads(res.stdout or "[]") if res.ok else []
    if not routes:
        return ""

    def prefix(r: dict[str, Any]) -> int:
        d = r.get("dst", "")
        return 0 if d == "default" else int(d.split("/")[1]) if "/" in d else 32

    best = max(routes, key=prefix)
    kind = best.get("type", "")
    dest = best.get("dst", "")
    via = f" via {best['gateway']}" if "gateway" in best else ""
    dev = f" dev {best['dev']}" if "dev" in best else ""
    return " ".join(p for p in (kind, dest) if p) + via + dev


def unresolved_neighbour(netns: str | None, dst: str, route: str) -> str:
    """If the route's next hop (its gateway, else ``dst`` on a connected route) has a
    FAILED or INCOMPLETE neighbour entry, say so; else ''."""
    words = route.split()
    if not words or words[0] in ("local", "blackhole", "unreachable", "prohibit"):
        return ""
    hop = words[words.index("via") + 1] if "via" in words else dst
    res = shell.run(["ip", "-j", "neigh", "show", "to", hop], netns=netns, check=False,
                    timeout=10)
    for entry in json.loads(res.stdout or "[]") if res.ok else []:
        states = set(entry.get("state", []))
        if states & {"FAILED", "INCOMPLETE"}:
            return f"no ARP answer for {hop} (neighbour {'/'.join(sorted(states))})"
    return ""
