"""Kernel routes owned by knetlab, reconciled level-triggered in one ``ip -batch``.

Every route knetlab's data planes install carries protocol number ``ROUTE_PROTO``, so a
sync can list exactly its own routes, replace the desired ones and delete the rest
without touching connected routes or anything a user added.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from knetlab import shell

if TYPE_CHECKING:
    from knetlab.nodes.host import NetnsHost

ROUTE_PROTO = "77"  # unassigned in /etc/iproute2/rt_protos; shown as "proto 77"


def owned_routes(host: NetnsHost | None) -> set[str]:
    out = shell.run(["ip", "-j", "route", "show", "proto", ROUTE_PROTO],
                    netns=host.netns if host else None).stdout
    return {r["dst"] for r in json.loads(out or "[]")}


def reconcile_routes(host: NetnsHost | None, desired: dict[str, str]) -> None:
    """Make ``host``'s knetlab routes exactly ``desired`` (dst -> "via X" / "nexthop ..." /
    "blackhole", whose type ip wants before the destination). ``host`` None: the current
    namespace (an agent process living in its node, as flanneld does)."""
    stale = owned_routes(host) - set(desired)
    lines = [f"route replace blackhole {dst} proto {ROUTE_PROTO}" if hop == "blackhole" else
             f"route replace {dst} proto {ROUTE_PROTO} {hop}" for dst, hop in desired.items()]
    lines += [f"route del {dst} proto {ROUTE_PROTO}" for dst in sorted(stale)]
    if lines:
        where = host.name if host else "this namespace"
        shell.ip_batch(lines, netns=host.netns if host else None,
                       context=f"sync routes on {where}")
