"""Bring-up progress: one line per phase, with its time, for bring-ups longer than a second.

``Cluster.on_phase`` is told each phase as it ends; ``PhasePrinter`` stays silent while the
bring-up is younger than ``QUIET`` seconds (a small lab just comes up), then prints the
phases so far and every later one as it ends::

    [ 1.9s] underlay     0.41s  switches, routers, data plane setup
    [ 4.2s] nodes        2.30s  uplinks, sysctls, data plane agents
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

QUIET = 1.0  # seconds: faster bring-ups print nothing
WHAT = {"underlay": "switches, routers, data plane setup",
        "nodes": "uplinks, sysctls, data plane agents",
        "network": "the network, and the Kubernetes control plane booting beside it",
        "pods": "topology pods wired (CNI ADD)",
        "kubernetes": "kubelets ready, mirror pods, add-ons"}


class PhasePrinter:
    def __init__(self, out: TextIO | None = None, quiet: float = QUIET) -> None:
        self.out = out or sys.stderr
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.pending: list[str] = []
        self.loud = False

    def __call__(self, phase: str, seconds: float) -> None:
        elapsed = time.monotonic() - self.t0
        self.pending.append(f"[{elapsed:5.1f}s] {phase:<11} {seconds:6.2f}s  "
                            f"{WHAT.get(phase, '')}".rstrip())
        if elapsed >= self.quiet:
            self.loud = True
        if self.loud:
            for line in self.pending:
                print(line, file=self.out, flush=True)
            self.pending = []
