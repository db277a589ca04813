"""ExaBGP's JSON API (``encoder json``) parsed into small events, and the state file.

Only what knetlab acts on: a peer's session state, and announced / withdrawn IPv4 unicast
prefixes with the attributes route reflection needs (next hop, originator-id, cluster-list).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BgpPath:
    """One route as a peer sent it."""
    next_hop: str
    originator_id: str = ""
    cluster_list: tuple[str, ...] = ()


@dataclass
class Event:
    peer: str
    kind: str  # "state" | "update" | "eor" (the peer sent all it has)
    state: str = ""  # connected / up / down
    reason: str = ""
    announce: dict[str, BgpPath] = field(default_factory=dict)
    withdraw: list[str] = field(default_factory=list)


def api_bursts(tick: float | None = None) -> Iterator[list[str]]:
    """ExaBGP's messages on stdin, in bursts (all lines waiting at the time); with
    ``tick``, an empty burst after that many quiet seconds (for the caller's timers).

    A thread reads stdin all the time. An API program that reads only between its own
    writes deadlocks with ExaBGP at scale: ExaBGP blocks writing events to a full pipe
    while we block writing commands to ExaBGP's full pipe (seen at 100 nodes, both
    processes in pipe_write). Bursts also let callers save state once per burst."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True, name="exabgp-api-reader").start()
    while True:
        try:
            first = lines.get(timeout=tick)
        except queue.Empty:
            yield []
            continue
        if first is None:
            return
        burst = [first]
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                yield burst
                return
            burst.append(line)
        yield burst


def parse(line: str) -> Event | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    kind = msg.get("type")
    peer = msg.get("neighbor", {}).get("address", {}).get("peer", "")
    if kind == "state":
        n = msg["neighbor"]
        return Event(peer, "state", state=n.get("state", ""), reason=n.get("reason", ""))
    if kind != "update":
        return None
    message = msg["neighbor"].get("message", {})
    if "eor" in message:
        return Event(peer, "eor")
    update = message.get("update")
    if not update:
        return None
    ev = Event(peer, "update")
    attrs = update.get("attribute", {})
    orig = attrs.get("originator-id", "")
    clist = tuple(attrs.get("cluster-list", []))
    for nh, nlris in update.get("announce", {}).get("ipv4 unicast", {}).items():
        for n in nlris:
            ev.announce[n["nlri"]] = BgpPath(nh, orig, clist)
    for n in update.get("withdraw", {}).get("ipv4 unicast", []):
        ev.withdraw.append(n["nlri"])
    return ev


class PeerTable:
    """Routes learned per peer (two reflectors stay independent) and sessions' states."""

    def __init__(self, state_file: str | None) -> None:
        self.routes: dict[str, dict[str, BgpPath]] = {}
        self.peers: dict[str, dict[str, Any]] = {}
        self.state_file = Path(state_file) if state_file else None

    def apply(self, ev: Event) -> set[str]:
        """Record an event; return the prefixes whose set of paths changed."""
        table = self.routes.setdefault(ev.peer, {})
        if ev.kind == "eor":
            return set()
        if ev.kind == "state":
            old = self.peers.get(ev.peer, {}).get("state")
            if ev.state != old:
                self.peers[ev.peer] = {"state": ev.state, "since": time.time(),
                                       "info": ev.reason}
            if ev.state == "down":
                gone = set(table)
                table.clear()
                return gone
            return set()
        for prefix in ev.withdraw:
            table.pop(prefix, None)
        table.update(ev.announce)
        return set(ev.withdraw) | set(ev.announce)

    def paths(self, prefix: str) -> dict[str, BgpPath]:
        return {peer: t[prefix] for peer, t in self.routes.items() if prefix in t}

    def save(self, extra: dict[str, Any] | None = None) -> None:
        if not self.state_file:
            return
        data = {"pid": os.getpid(), "peers": self.peers,
                "routes": {peer: {p: asdict(v) for p, v in t.items()}
                           for peer, t in self.routes.items()}, **(extra or {})}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))  # per burst: keep it cheap
        tmp.replace(self.state_file)
