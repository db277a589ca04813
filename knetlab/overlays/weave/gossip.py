"""The peer list every router gossips: who exists, where, and whom each is connected to.

After weave's ``router/peers.go`` and topology gossip: each peer is the only writer of
its own entry (name, address, uid, connections) and bumps the entry's version on every
change; a merge keeps, per peer, the entry with the higher version. So a router that
knows one peer learns the whole mesh from it, then connects to every peer it learned.

A version is ``(start time in ns, counter)``: a restarted router (new uid, counter back at
1) still supersedes its old entry. Peers no longer reachable from us through anyone's
connections are forgotten (weave garbage-collects unreachable peers the same way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Peer:
    name: str
    uid: str
    addr: str  # the node IP its router listens on
    version: tuple[int, int]
    conns: list[str] = field(default_factory=list)

    def wire(self) -> dict[str, object]:
        return {"uid": self.uid, "addr": self.addr, "version": list(self.version),
                "conns": self.conns}


class Peers:
    def __init__(self, me: str, uid: str, addr: str) -> None:
        self.me = me
        self.started = time.time_ns()
        self.counter = 1
        self.table: dict[str, Peer] = {me: Peer(me, uid, addr, (self.started, 1))}

    @property
    def own(self) -> Peer:
        return self.table[self.me]

    def set_connections(self, names: list[str]) -> bool:
        names = sorted(names)
        if names == self.own.conns:
            return False
        self.counter += 1
        self.own.conns = names
        self.own.version = (self.started, self.counter)
        return True

    def to_wire(self) -> dict[str, dict[str, object]]:
        return {n: p.wire() for n, p in self.table.items() if n in self.reachable()}

    def merge(self, wire: dict[str, dict[str, object]]) -> bool:
        changed = False
        for name, e in wire.items():
            if name == self.me:
                continue  # only we write our own entry
            version = tuple(e["version"])  # type: ignore[arg-type]
            mine = self.table.get(name)
            if mine is None or version > mine.version:
                self.table[name] = Peer(name, str(e["uid"]), str(e["addr"]),
                                        version, list(e.get("conns", [])))  # type: ignore[call-overload,arg-type]
                changed = True
        return changed

    def reachable(self) -> set[str]:
        """Peers connected to us directly or through others. An edge counts only when
        both ends list it (as weave's routes): a dead peer's last entry still lists its
        connections, but no live peer lists it any more. Our own connections count as
        soon as we have them."""
        edges: dict[str, set[str]] = {}
        for p in self.table.values():
            for c in p.conns:
                other = self.table.get(c)
                if p.name == self.me or (other is not None and p.name in other.conns):
                    edges.setdefault(p.name, set()).add(c)
                    edges.setdefault(c, set()).add(p.name)
        seen, todo = {self.me}, [self.me]
        while todo:
            for n in edges.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    def forget_unreachable(self) -> list[str]:
        gone = [n for n in self.table if n not in self.reachable()]
        for n in gone:
            del self.table[n]
        return gone
