"""``knetlab bgp status`` and ``bgp routes``: read from the speakers' own state files.

Every API program (installer, reflector) writes ``bgp-state.json`` next to its ExaBGP's
config: sessions with state and since, and the routes learned per peer with originator-id
and cluster-list. BIRD reflectors are asked through ``birdc``. Reading files means these
views work from any process (CLI, supervisor, Mininet CLI) without an RPC.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.bgp.exabgp import configured_neighbors
from knetlab.errors import NotFoundError
from knetlab.rundir import RunDir


def _speakers(rundir: RunDir) -> dict[str, Path]:
    """owner -> its exabgp or bird daemon dir."""
    base = rundir.path / "daemons"
    out = {}
    for d in sorted(base.glob("*/exabgp")) + sorted(base.glob("*/bird")):
        out[d.parent.name] = d
    return out


def _kinds(config: Path) -> dict[str, str]:
    """peer address -> the description written in the ExaBGP config (peer type)."""
    text = config.read_text() if config.exists() else ""
    return dict(re.findall(r'neighbor (\S+) \{\s*description "([^"]*)"', text))


def _since(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    return "\n".join([line, fmt(header), line, *map(fmt, rows), line])


def peers(rundir: RunDir, owner: str) -> list[list[str]]:
    d = _speakers(rundir).get(owner)
    if d is None:
        raise NotFoundError(f"no BGP speaker on {owner!r}")
    if d.name == "bird":
        return _bird_peers(d)
    state = _load(d)
    config = d / "exabgp.conf"
    kinds = _kinds(config)
    blocks = configured_neighbors(config.read_text()) if config.exists() else {}
    rows = []
    for addr in sorted(kinds, key=ipaddress.ip_address):
        p = state.get("peers", {}).get(addr, {"state": "idle", "since": 0, "info": ""})
        # a passive neighbour that never connected: a reflector's spare (a node to come)
        waiting = "Passive" if "passive true;" in blocks.get(addr, "") else "Active"
        info = "Established" if p["state"] == "up" else (p.get("info") or waiting)
        rows.append([addr, kinds[addr], p["state"], _since(p["since"]) if p["since"] else "-",
                     info])
    return rows


def _bird_peers(d: Path) -> list[list[str]]:
    out = shell.run(["birdc", "-s", str(d / "bird.ctl"), "show", "protocols"], check=False)
    rows = []
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[1] == "BGP":
            rows.append([f[0], "route reflector client" if f[0].startswith("client")
                         else "route reflector", f[3], f[4], " ".join(f[5:])])
    return rows


def _load(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "bgp-state.json").read_text())
    except (OSError, ValueError):
        return {}


def status_text(rundir: RunDir, owner: str | None = None) -> str:
    owners = [owner] if owner else list(_speakers(rundir))
    parts = []
    for o in owners:
        parts.append(f"Calico process is running on {o}.")
        parts.append("IPv4 BGP status")
        parts.append(_table(peers(rundir, o), ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE",
                                               "INFO"]))
    return "\n".join(parts)


def routes(rundir: RunDir, owner: str) -> list[list[str]]:
    d = _speakers(rundir).get(owner)
    if d is None:
        raise NotFoundError(f"no BGP speaker on {owner!r}")
    if d.name == "bird":
        out = shell.run(["birdc", "-s", str(d / "bird.ctl"), "show", "route", "all"],
                        check=False).stdout
        return [[line.strip(), "", "", "", ""] for line in out.splitlines()[1:] if line.strip()]
    rows = []
    for peer, table in sorted(_load(d).get("routes", {}).items()):
        for prefix, path in sorted(table.items()):
            rows.append([prefix, path["next_hop"], peer, path["originator_id"] or "-",
                         " ".join(path["cluster_list"]) or "-"])
    return rows


def routes_text(rundir: RunDir, owner: str) -> str:
    if not owner:
        return "usage: bgp routes NODE"
    return _table(routes(rundir, owner), ["PREFIX", "NEXT HOP", "FROM", "ORIGINATOR-ID",
                                          "CLUSTER-LIST"])
