"""weave's IPAM ring: one address range split among peers, merged by gossip (a CRDT).

Design notes (after weaveworks/weave ``ipam/ring``):

- The range is a ring of *tokens*: a token at address T owned by peer P means "from T up
  to the next token, the addresses are P's". Tokens are never deleted, only handed over.
- Only a token's current owner changes it (donates it, or splits its range by adding a
  token), and every change bumps the token's version. Merging two rings is then taking,
  per token, the entry with the higher version: order-independent and idempotent, so
  peers converge whatever order gossip arrives in.
- A peer without space asks the peer owning the most space for a donation; the donor
  gives the upper half of one of its ranges that has no address in use (ranges start as
  the whole CIDR and halve, so every range stays a CIDR: ``weave status`` prints them so).
- A peer that is gone for good keeps its tokens until someone runs ``rmpeer`` (weave's
  ``weave rmpeer``): the caller takes them over.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    owner: str
    version: int


class Ring:
    def __init__(self, cidr: str) -> None:
        net = ipaddress.IPv4Network(cidr)
        self.cidr = str(net)
        self.start = int(net.network_address)
        self.end = int(net.broadcast_address) + 1  # exclusive
        self.tokens: dict[int, Token] = {}

    # -- gossip ----------------------------------------------------------------------
    def to_wire(self) -> dict[str, list[object]]:
        return {str(t): [tok.owner, tok.version] for t, tok in sorted(self.tokens.items())}

    def merge(self, wire: dict[str, list[object]]) -> bool:
        """Take every token of ``wire`` newer than ours; True if anything changed."""
        changed = False
        for key, (owner, version) in wire.items():
            t = int(key)
            if not self.start <= t < self.end:
                continue  # another range's ring (misconfigured peer): ignore
            mine = self.tokens.get(t)
            if mine is None or int(version) > mine.version:  # type: ignore[arg-type]
                self.tokens[t] = Token(str(owner), int(version))  # type: ignore[arg-type]
                changed = True
        return changed

    # -- ownership -------------------------------------------------------------------
    def empty(self) -> bool:
        return not self.tokens

    def ranges(self, owner: str | None = None) -> list[tuple[int, int, str]]:
        """(start, end exclusive, owner) of every range, or of one owner's."""
        keys = sorted(self.tokens)
        out = []
        for i, t in enumerate(keys):
            end = keys[i + 1] if i + 1 < len(keys) else self.end
            tok = self.tokens[t]
            if owner is None or tok.owner == owner:
                out.append((t, end, tok.owner))
        return out

    def owned(self, owner: str) -> int:
        return sum(e - s for s, e, _ in self.ranges(owner))

    def owners(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, e, o in self.ranges():
            out[o] = out.get(o, 0) + e - s
        return out

    def claim_all(self, me: str) -> None:
        """The seed peer's first act: the whole range is its own."""
        if self.empty():
            self.tokens[self.start] = Token(me, 1)

    def _set(self, t: int, owner: str) -> None:
        old = self.tokens.get(t)
        self.tokens[t] = Token(owner, (old.version if old else 0) + 1)

    def donate(self, me: str, to: str, used: set[int], min_size: int = 4) -> tuple[int, int] | None:
        """Give ``to`` the upper half of one of my ranges with nothing in use there;
        the largest such half. Returns the donated (start, end) or None."""
        best: tuple[int, int] | None = None
        for s, e, _ in self.ranges(me):
            half = (e - s) // 2
            if half < min_size:
                continue
            mid = s + half
            if any(mid <= ip < e for ip in used):
                continue
            if best is None or e - mid > best[1] - best[0]:
                best = (mid, e)
        if best is None:
            return None
        self._set(best[0], to)
        return best

    def take_over(self, me: str, gone: str) -> int:
        """``rmpeer``: every token of ``gone`` becomes mine; returns how many addresses."""
        moved = 0
        for s, e, _ in self.ranges(gone):
            self._set(s, me)
            moved += e - s
        return moved

    def cidrs(self, owner: str) -> list[str]:
        out: list[str] = []
        for s, e, _ in self.ranges(owner):
            first, last = ipaddress.IPv4Address(s), ipaddress.IPv4Address(e - 1)
            out += [str(n) for n in ipaddress.summarize_address_range(first, last)]
        return out


class Allocator:
    """A peer's addresses in use (container id -> address), from its own ranges only."""

    def __init__(self, ring: Ring, me: str, allocations: dict[str, int] | None = None) -> None:
        self.ring, self.me = ring, me
        self.allocations: dict[str, int] = dict(allocations or {})

    def used(self) -> set[int]:
        return set(self.allocations.values())

    def allocate(self, ident: str) -> int | None:
        if ident in self.allocations:
            return self.allocations[ident]  # ADD retried: same address (idempotent)
        used = self.used()
        reserved = {self.ring.start, self.ring.end - 1}  # network and broadcast of the range
        for s, e, _ in self.ring.ranges(self.me):
            for ip in range(s, e):
                if ip not in used and ip not in reserved:
                    self.allocations[ident] = ip
                    return ip
        return None

    def release(self, ident: str) -> int | None:
        return self.allocations.pop(ident, None)

    def free(self) -> int:
        return self.ring.owned(self.me) - len(self.allocations)
