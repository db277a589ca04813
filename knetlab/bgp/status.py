"""``knetlab bgp status`` and ``bgp routes``: read from the running speakers themselves.

Every API program (installer, reflector) runs as ExaBGP's child and writes
``bgp-state.json`` next to its ExaBGP's config from what ExaBGP tells it: sessions with
state and since, and the routes learned per peer with originator-id and cluster-list.
That file is believed only while both writers live: ExaBGP (its pid file, its command
line naming its own dir) and the API program (the pid inside the file). A killed speaker
leaves a file saying "Established"; status says it is not running and its sessions down.
BIRD is asked through ``birdc`` on its control socket. Reading files and sockets means
these views work from any process (CLI, supervisor, Mininet CLI) without an RPC.

A reflector's spare neighbours (addresses of nodes yet to join, configured ahead so a join
needs no reload, see ``CalicoBgpBackend._spare_clients``) are not peers anyone
configured: they are summed up in one line, and only the current members (the file
``members`` the backend keeps beside the config) and the other reflectors are listed.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.bgp.exabgp import MEMBERS_FILE, STATE_FILE, configured_neighbors
from knetlab.errors import NotFoundError
from knetlab.rundir import RunDir, pid_alive

CLIENT = "route reflector client"


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


def running(d: Path) -> bool:
    """The speaker whose dir is ``d`` runs (a zombie or a reused pid does not count)."""
    try:
        pid = int((d / f"{d.name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid, str(d))


def _live_state(d: Path) -> dict[str, Any] | None:
    """The API program's state file, if ExaBGP and the program that wrote it both run."""
    if not running(d):
        return None
    state = _load(d)
    pid = state.get("pid")
    return state if isinstance(pid, int) and pid_alive(pid, "knetlab.bgp") else {}


def _members(d: Path) -> set[str] | None:
    try:
        return set((d / MEMBERS_FILE).read_text().split())
    except OSError:
        return None  # not a reflector (or an old one): every neighbour is real


def _rows(rundir: RunDir, owner: str) -> tuple[list[list[str]], list[str]]:
    """The peer rows of a speaker, and a line for each kind of slot left out."""
    d = _speakers(rundir).get(owner)
    if d is None:
        raise NotFoundError(f"no BGP speaker on {owner!r}")
    if d.name == "bird":
        return _bird_peers(d)
    state = _live_state(d)
    config = d / "exabgp.conf"
    kinds = _kinds(config)
    blocks = configured_neighbors(config.read_text()) if config.exists() else {}
    members, rows, spares = _members(d), [], 0
    for addr in sorted(kinds, key=ipaddress.ip_address):
        p = (state or {}).get("peers", {}).get(addr, {"state": "idle", "since": 0, "info": ""})
        if state is None:
            rows.append([addr, kinds[addr], "down", "-", "speaker not running"])
            continue
        if (members is not None and kinds[addr] == CLIENT and addr not in members
                and p["state"] != "up"):
            spares += 1  # a node yet to join (or one that left): no peer of anyone's
            continue
        waiting = "Passive" if "passive true;" in blocks.get(addr, "") else "Active"
        info = "Established" if p["state"] == "up" else (p.get("info") or waiting)
        rows.append([addr, kinds[addr], p["state"], _since(p["since"]) if p["since"] else "-",
                     info])
    notes = [f"{spares} spare slots for joining nodes (passive, not shown)"] if spares else []
    return rows, notes


def peers(rundir: RunDir, owner: str) -> list[list[str]]:
    return _rows(rundir, owner)[0]


def _bird_peers(d: Path) -> tuple[list[list[str]], list[str]]:
    """BIRD's BGP sessions from ``show protocols all``, by neighbour address. A
    ``neighbor range`` protocol is the template dynamic clients are made from, no peer."""
    if not running(d):
        return [], []
    out = shell.run(["birdc", "-s", str(d / "bird.ctl"), "show", "protocols", "all"],
                    check=False).stdout
    rows, notes = [], []
    for block in re.split(r"\n(?=\S)", out):
        head, *rest = block.splitlines() or [""]
        f = head.split()
        if len(f) < 5 or f[1] != "BGP":
            continue
        attrs = dict(line.strip().split(":", 1) for line in rest if ":" in line)
        attrs = {k.strip(): v.strip() for k, v in attrs.items()}
        if "Neighbor range" in attrs:
            notes.append(f"clients may join from {attrs['Neighbor range']} "
                         f"(dynamic neighbours, {f[0]})")
            continue
        kind = attrs.get("Description", "")
        kind = CLIENT if kind == "route reflector clients" else kind or "BGP"
        rows.append([attrs.get("Neighbor address", f[0]), kind, f[3], f[4],
                     " ".join(f[5:])])
    return sorted(rows, key=lambda r: _addr_key(r[0])), notes


def _addr_key(addr: str) -> tuple[int, Any]:
    try:
        return 0, ipaddress.ip_address(addr)
    except ValueError:
        return 1, addr  # a protocol without an address (never seen, but keep it)


def _load(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def status_text(rundir: RunDir, owner: str | None = None) -> str:
    speakers = _speakers(rundir)
    if not speakers:
        raise NotFoundError(f"lab {rundir.cluster} runs no BGP speaker (BGP comes with the "
                            "calico-* data planes and the bgp underlay)")
    if owner and owner not in speakers:
        raise NotFoundError(f"no BGP speaker on {owner!r}; speakers: {', '.join(speakers)}")
    owners = [owner] if owner else list(speakers)
    parts = []
    for o in owners:
        rows, notes = _rows(rundir, o)
        what = "BIRD" if speakers[o].name == "bird" else "Calico process"
        if running(speakers[o]):
            parts.append(f"{what} is running on {o}.")
        else:
            parts.append(f"{what} is not running on {o} (exited; it is started again "
                         "after a back-off).")
        parts.append("IPv4 BGP status")
        parts.append(_table(rows, ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]))
        parts += notes
    return "\n".join(parts)


def routes(rundir: RunDir, owner: str) -> list[list[str]]:
    d = _speakers(rundir).get(owner)
    if d is None:
        raise NotFoundError(f"no BGP speaker on {owner!r}")
    if d.name == "bird":
        out = shell.run(["birdc", "-s", str(d / "bird.ctl"), "show", "route", "all"],
                        check=False).stdout
        return [[line.strip(), "", "", "", ""] for line in out.splitlines()[1:] if line.strip()]
    rows = []  # a speaker that is not running has learned nothing
    for peer, table in sorted((_live_state(d) or {}).get("routes", {}).items()):
        for prefix, path in sorted(table.items()):
            rows.append([prefix, path["next_hop"], peer, path["originator_id"] or "-",
                         " ".join(path["cluster_list"]) or "-"])
    return rows


def routes_text(rundir: RunDir, owner: str) -> str:
    if not owner:
        return "usage: bgp routes NODE"
    return _table(routes(rundir, owner), ["PREFIX", "NEXT HOP", "FROM", "ORIGINATOR-ID",
                                          "CLUSTER-LIST"])
