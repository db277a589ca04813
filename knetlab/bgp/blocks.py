"""A node's IPAM blocks as BGP announcements and kernel blackholes (Calico's BIRD export).

Runs inside the node's route installer (ExaBGP's API program): a thread watches the node's
affinity keys in the lab's etcd (``/calico/ipam/v2/host/<node>/``, written when
``calico-ipam`` claims or frees a block, not when it hands out an address), reads the
blocks affine to this node, and keeps two things level-triggered:

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
import time
from collections.abc import Callable

from knetlab.cni.plugins.calico_ipam import BlockStore, affinity_prefix
from knetlab.store import Store, StoreError

SAFETY_NET = 5.0  # seconds: look again even if the watch said nothing
RETRY = 1.0  # seconds between attempts while the store is unreachable


def aggregate(cidrs: list[str]) -> list[str]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


class BlockAnnouncer:
    def __init__(self, store: str, node: str, next_hop: str,
                 emit: Callable[[str], None], on_own: Callable[[set[str]], None],
                 ip: Callable[[list[str]], None]) -> None:
        self.store, self.node, self.next_hop = BlockStore(Store.from_arg(store)), node, next_hop
        self.emit, self.on_own, self.ip = emit, on_own, ip  # ip: the installer's ip -batch
        self.announced: list[str] = []
        self.blocks: set[str] = set()
        self.lock = threading.Lock()

    def read_blocks(self) -> set[str]:
        return self.read_blocks_at()[1]

    def read_blocks_at(self) -> tuple[int, set[str]]:
        """(revision of the read, the cidrs of the node's blocks): affinity keys only."""
        rev, kvs = self.store.store.range(affinity_prefix(self.node), prefix=True,
                                          keys_only=True)
        return rev, {k.rpartition("/")[2].replace("-", "/") for k, _v, _r, _l in kvs}

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
        # Sleep in an etcd watch of the node's affinities: a hundred idle installers
        # polling at 10 Hz would cost a tenth of the machine. Level-triggered: every wake
        # (or SAFETY_NET) re-reads the affinities, so a lost event cannot drift.
        while True:
            try:
                rev, blocks = self.read_blocks_at()
                if blocks != self.blocks:
                    self.reconcile(blocks)
                self.store.store.wait(affinity_prefix(self.node), rev, SAFETY_NET)
            except StoreError:
                time.sleep(RETRY)  # etcd restarting or going down with the lab

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True, name="blocks").start()
