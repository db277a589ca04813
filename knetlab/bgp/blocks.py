"""A node's IPAM blocks as BGP announcements and kernel blackholes (Calico's BIRD export).

Runs inside the node's route installer (ExaBGP's API program): a thread watches the lab
store's claims revision, reads the blocks affine to this node (written by ``calico-ipam``),
and keeps two things level-triggered:

- ExaBGP announces the blocks, aggregated where they are adjacent, next hop = node IP
  (``announce route``; withdrawn when a block goes);
- the kernel has ``blackhole <block> proto bird``: traffic to an unused address of our
  own block dies here instead of bouncing to the default route (the pods' /32 routes are
  more specific).

ExaBGP forgets API-injected routes for neighbours a config reload (SIGUSR1) adds or
rebuilds; such a neighbour's session comes up afterwards, and everything is sent again to
a peer whenever its session comes up.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable

from knetlab.cni.plugins.calico_ipam import BlockStore, node_blocks
from knetlab.store import DirWatch

SAFETY_NET = 5.0  # seconds: look again even if inotify said nothing


def aggregate(cidrs: list[str]) -> list[str]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


class BlockAnnouncer:
    def __init__(self, store: str, node: str, next_hop: str,
                 emit: Callable[[str], None], on_own: Callable[[set[str]], None],
                 ip: Callable[[list[str]], None]) -> None:
        self.store, self.node, self.next_hop = BlockStore(store), node, next_hop
        self.emit, self.on_own, self.ip = emit, on_own, ip  # ip: the installer's ip -batch
        self.announced: list[str] = []
        self.blocks: set[str] = set()
        self.lock = threading.Lock()

    def read_blocks(self) -> set[str]:
        return {b["cidr"] for b in node_blocks(self.store, self.node)}

    def reconcile(self, blocks: set[str]) -> None:
        """Announce / withdraw the aggregates and set blackholes for ``blocks``."""
        with self.lock:
            self.on_own(blocks)
            want = aggregate(sorted(blocks))
            for prefix in sorted(set(self.announced) - set(want)):
                self.emit(f"withdraw route {prefix} next-hop {self.next_hop}")
            for prefix in sorted(set(want) - set(self.announced)):
                self.emit(f"announce route {prefix} next-hop {self.next_hop}")
            lines = [f"route replace blackhole {p} proto bird" for p in want]
            lines += [f"route del blackhole {p} proto bird"
                      for p in set(self.announced) - set(want)]
            if lines:
                self.ip(lines)
            self.announced, self.blocks = want, blocks

    def resend(self, peer: str) -> None:
        """Everything again to a peer whose session came up."""
        with self.lock:
            for prefix in self.announced:
                self.emit(f"neighbor {peer} announce route {prefix} next-hop {self.next_hop}")

    def run(self) -> None:
        # Sleep on inotify (the store's revision files are renamed into place): a hundred
        # idle installers polling at 10 Hz cost a tenth of the machine. The timeout is
        # only a safety net.
        watch = DirWatch(self.store.root)
        rev = self.store.claims_revision(self.node)
        self.reconcile(self.read_blocks())
        while True:
            watch.sleep(SAFETY_NET)
            now = self.store.claims_revision(self.node)
            if now != rev:
                rev = now
                blocks = self.read_blocks()
                if blocks != self.blocks:
                    self.reconcile(blocks)

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True, name="blocks").start()
