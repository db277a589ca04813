"""ExaBGP as a route reflector (RFC 4456): the API program that reflects.

ExaBGP has no route reflection, so this program does it: every path learned from a peer is
kept per source; for each prefix and each target peer it picks the best path the rules
allow and sends it with ``neighbor T announce route ...``:

- from a client: to every other peer (clients and non-client reflectors);
- from a non-client (another reflector): to clients only;
- never back to the peer it came from, nor to its originator;
- ORIGINATOR_ID is set to the source's router id if absent; our CLUSTER_ID is prepended
  to CLUSTER_LIST; a path already carrying our cluster id (or our router id as
  originator) is a loop and is dropped.

Level-triggered per prefix: what each target was last sent is remembered, so a withdraw
from one source while another still has the prefix re-announces instead of withdrawing.

Targets are ExaBGP's configured neighbours, up or not: ExaBGP keeps an adj-rib-out per
neighbour, sends it when the session comes up and again after every flap (resend on client
return), so a prefix change is ONE command naming every target, and a session coming up
costs no command at all. A neighbour is "primed" once it holds our routes: those of the
config ExaBGP started with at once, spares and those a reload adds (ExaBGP starts them
empty) at their first session's End-of-RIB. Before this, every session up cost a command
per prefix: at 100 nodes bring-up queued ~10,000 commands (ExaBGP parses ~25 per loop)
and the reflectors lagged by minutes. A peer going down withdraws what it sent.
With ``--install`` (a ToR in Calico's IP-fabric design) the reflector also installs the
routes in its own kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from knetlab.bgp.exabgp import configured_neighbors
from knetlab.bgp.kernel import KernelRoutes
from knetlab.bgp.messages import BgpPath, PeerTable, api_bursts, parse

# A peer that comes up unprimed (a joining node) gets every route only after its End-of-RIB
# (or this many seconds): sent at once, its ~100 commands queued in ExaBGP ahead of the one
# that reflects the joiner's own route to everybody, and delayed that by ~250 ms.
PRIME_WAIT = 1.0


def selector(targets: list[str]) -> str:
    """ExaBGP's API prefix addressing several neighbours at once."""
    return " , ".join(f"neighbor {t}" for t in targets)


class Reflector:
    def __init__(self, router_id: str, cluster_id: str, non_clients: set[str],
                 out: object = sys.stdout) -> None:
        # Every peer that is not a fellow reflector is a client: membership can change
        # by reloading ExaBGP's neighbours without restarting this program.
        self.router_id, self.cluster_id = router_id, cluster_id
        self.non_clients = non_clients
        self.table = PeerTable(os.environ.get("KNETLAB_BGP_STATE"))
        self.members: dict[str, str] = {}  # ExaBGP's neighbours -> their config blocks
        self.primed: set[str] = set()  # neighbours whose adj-rib-out holds what we sent
        self.waiting: dict[str, float] = {}  # up, not primed yet -> since when
        self.sent: dict[str, dict[str, BgpPath]] = {}  # target -> prefix -> path sent
        self.out = out

    def configure(self, members: dict[str, str], prime: set[str] | frozenset[str] = frozenset()
                  ) -> None:
        """Take ExaBGP's neighbours from its config and prime ``prime`` of them now.

        At our start ExaBGP already runs every configured neighbour (it starts its API
        programs after loading the config), so the lab's current clients are primed at
        once: one grouped command per prefix reaches them all. Spare neighbours (configured
        ahead of joins, see CalicoBgpBackend) and those a reload adds or changes start empty
        in ExaBGP and are primed once their first session is up: only then is it sure
        ExaBGP runs them, and a spare named in every command would only slow ExaBGP down."""
        for peer in set(self.members) | set(members):
            if self.members.get(peer) != members.get(peer):
                self.primed.discard(peer)
                self.sent.pop(peer, None)
        self.members = members
        self.prime(set(prime) & set(members) - self.primed)

    def prime(self, peers: set[str]) -> None:
        self.primed |= peers
        for peer in peers:
            self.sent[peer] = {}
        for prefix in sorted(self.all_prefixes()):
            self.advertise(prefix, peers)

    def looped(self, path: BgpPath) -> bool:
        return self.cluster_id in path.cluster_list or path.originator_id == self.router_id

    def best_for(self, prefix: str, target: str) -> BgpPath | None:
        candidates = []
        for source, path in sorted(self.table.paths(prefix).items()):
            if source == target or self.looped(path):
                continue
            if source in self.non_clients and target in self.non_clients:
                continue  # non-client to non-client: never
            originator = path.originator_id or source
            if originator == target or path.next_hop == target:
                continue
            candidates.append(BgpPath(path.next_hop, originator,
                                      (self.cluster_id, *path.cluster_list)))
        return min(candidates, key=lambda p: len(p.cluster_list)) if candidates else None

    def advertise(self, prefix: str, targets: set[str]) -> None:
        """Bring what ``targets`` were sent of ``prefix`` to their best paths. Targets that
        get the same path share ONE command (``neighbor A , neighbor B announce ...``):
        ExaBGP parses API commands slowly (~25 per reactor loop), and one command per
        target made bring-up O(nodes^2) commands: at 80-100 nodes the reflectors lagged by
        minutes and joins never converged."""
        announce: dict[BgpPath, list[str]] = {}
        withdraw: dict[str, list[str]] = {}  # next hop last sent -> targets
        for target in sorted(targets & self.primed):
            sent = self.sent.setdefault(target, {})
            best = self.best_for(prefix, target)
            if best is not None and sent.get(prefix) != best:
                announce.setdefault(best, []).append(target)
                sent[prefix] = best
            elif best is None and prefix in sent:
                withdraw.setdefault(sent.pop(prefix).next_hop, []).append(target)
        for best, group in announce.items():
            clist = " ".join(best.cluster_list)
            self.emit(f"{selector(group)} announce route {prefix} next-hop {best.next_hop} "
                      f"origin igp local-preference 100 originator-id {best.originator_id} "
                      f"cluster-list [ {clist} ]")
        for next_hop, group in withdraw.items():
            self.emit(f"{selector(group)} withdraw route {prefix} next-hop {next_hop}")

    def emit(self, command: str) -> None:
        self.out.write(command + "\n")  # type: ignore[attr-defined]
        self.out.flush()  # type: ignore[attr-defined]

    def handle(self, line: str) -> set[str]:
        ev = parse(line)
        if ev is None:
            return set()
        changed = self.table.apply(ev)
        if ev.kind == "state" and ev.state == "up" and ev.peer not in self.primed:
            self.waiting[ev.peer] = time.monotonic()
        elif ev.kind == "state" and ev.state == "down":
            self.waiting.pop(ev.peer, None)
        for prefix in sorted(changed):
            self.advertise(prefix, self.primed)
        if ev.kind == "eor" and self.waiting.pop(ev.peer, None) is not None:
            self.prime({ev.peer})
        return changed

    def tick(self) -> None:
        """Prime peers that came up but sent no End-of-RIB within PRIME_WAIT."""
        late = {p for p, t in self.waiting.items() if time.monotonic() - t > PRIME_WAIT}
        for peer in late:
            del self.waiting[peer]
        if late:
            self.prime(late)

    def all_prefixes(self) -> set[str]:
        return {p for t in self.table.routes.values() for p in t}

    def save(self) -> None:
        self.table.save({"role": "reflector", "routerId": self.router_id,
                         "clusterId": self.cluster_id, "nonClients": sorted(self.non_clients)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="knetlab.bgp.reflector")
    p.add_argument("--router-id", required=True)
    p.add_argument("--cluster-id", required=True)
    p.add_argument("--peer", action="append", default=[], help="a non-client reflector")
    p.add_argument("--install", metavar="POOL", action="append",
                   help="also install routes inside POOL into this kernel (repeatable)")
    p.add_argument("--self", dest="self_ips", action="append", default=[])
    p.add_argument("--config", help="ExaBGP's config file: its neighbours are the targets")
    p.add_argument("--members", help="a file of the clients to prime at start, one per line")
    args = p.parse_args(argv)
    rr = Reflector(args.router_id, args.cluster_id, set(args.peer))
    config = Path(args.config) if args.config else None
    seen = _mtime(config)
    if config:
        neighbors = configured_neighbors(config.read_text())
        members = Path(args.members).read_text().split() if args.members else neighbors
        rr.configure(neighbors, prime=set(members) | set(args.peer))
    kernel = (KernelRoutes(",".join(args.install), set(), set(args.self_ips))
              if args.install else None)
    if kernel:
        kernel.flush()
    rr.save()
    for burst in api_bursts(tick=PRIME_WAIT / 2):
        # A reload's new neighbours come up only after ExaBGP loaded the rewritten file,
        # so looking at it before each burst is never too late.
        if config and _mtime(config) != seen:
            seen = _mtime(config)
            rr.configure(configured_neighbors(config.read_text()))
        changed: set[str] = set()
        for line in burst:
            changed |= rr.handle(line)
        rr.tick()
        if kernel and changed:
            kernel.sync(changed, {pfx: rr.table.paths(pfx) for pfx in changed})
        if burst:
            rr.save()


def _mtime(path: Path | None) -> int:
    try:
        return path.stat().st_mtime_ns if path else 0
    except OSError:
        return 0


if __name__ == "__main__":
    main()
