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
rebuilds, so everything is sent again to a peer whenever its session comes up and to all
peers when the config file changes.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from knetlab.cni.plugins.calico_ipam import BlockStore, node_blocks
from knetlab.store import DirWatch

SAFETY_NET = 5.0  # seconds: look again even if inotify said nothing


def aggregate(cidrs: list[str]) -> list[str]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


class BlockAnnouncer:
    def __init__(self, store: str, node: str, next_hop: str, config: str | None,
                 emit: Callable[[str], None], on_own: Callable[[set[str]], None]) -> None:
        self.store, self.node, self.next_hop = BlockStore(store), node, next_hop
        self.config = Path(config) if config else None
        self.emit, self.on_own = emit, on_own
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
                subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True)
            self.announced, self.blocks = want, blocks

    def resend(self, peer: str | None = None) -> None:
        """Everything again, to one peer (its session came up) or to all (config reload)."""
        with self.lock:
            where = f"neighbor {peer} " if peer else ""
            for prefix in self.announced:
                self.emit(f"{where}announce route {prefix} next-hop {self.next_hop}")

    def _mtime(self) -> float:
        try:
            return os.stat(self.config).st_mtime if self.config else 0.0
        except OSError:
            return 0.0

    def run(self) -> None:
        # Sleep on inotify: the store's revision files are renamed into place, the config
        # is rewritten in place. A hundred idle installers polling at 10 Hz cost a tenth
        # of the machine; the timeout is only a safety net.
        watch = DirWatch(self.store.root)
        if self.config:
            watch.add(self.config.parent, DirWatch.IN_CLOSE_WRITE | DirWatch.IN_MOVED_TO)
        rev, mtime = self.store.claims_revision(self.node), self._mtime()
        self.reconcile(self.read_blocks())
        while True:
            watch.sleep(SAFETY_NET)
            now_rev, now_mtime = self.store.claims_revision(self.node), self._mtime()
            if now_rev != rev:
                rev = now_rev
                blocks = self.read_blocks()
                if blocks != self.blocks:
                    self.reconcile(blocks)
            if now_mtime != mtime:
                mtime = now_mtime
                time.sleep(0.3)  # ExaBGP reloads on SIGUSR1, sent just after the write
                self.resend()

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True, name="blocks").start()
