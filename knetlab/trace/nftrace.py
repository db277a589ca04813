"""The netfilter trace of the probe: which rule of which chain NATed, accepted or dropped it.

In each namespace traced, a table of the trace's own (``inet kltrace<id>``) has two chains
that run before every other (priority -350, before raw and conntrack) at prerouting and
output, with one rule per direction that matches only the probe and sets ``meta nftrace
set 1``. From then on, every chain the packet meets in that namespace (iptables-nft's and
nftables' alike) reports each rule it matched and each verdict to ``nft monitor trace``,
one process per namespace, started and subscribed before the probe is sent. The table is
deleted after the trace; nothing else in the namespace is touched.

Readiness is read from the kernel: ``/proc/PID/net/netlink`` lists the monitor's socket
with the netfilter trace group (NFNLGRP_NFTRACE, bit 9) once it listens.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from knetlab import shell
from knetlab.trace.probe import Probe

log = logging.getLogger("knetlab.trace.nftrace")
NETLINK_NETFILTER = 12
NFTRACE_GROUP_BIT = 1 << (9 - 1)  # NFNLGRP_NFTRACE
_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet: |rule |verdict |policy )(.*)$")
_VERDICT = re.compile(r"\(verdict (\w+)")
#: rule texts that change the packet or decide its fate: what a hop report shows
NOTABLE = re.compile(r"\b(dnat|snat|masquerade|redirect|drop|reject|mark set)\b", re.I)


@dataclass
class NftEvent:
    where: str
    trace_id: str
    family: str
    table: str
    chain: str
    kind: str  # packet, rule, verdict, policy
    text: str
    leg: str = ""  # request or reply, from the trace's ``packet:`` line

    @property
    def verdict(self) -> str:
        if self.kind in ("verdict", "policy"):
            return self.text.split()[0] if self.text else ""
        m = _VERDICT.search(self.text)
        return m.group(1) if m else ""

    def summary(self) -> str:
        rule = re.sub(r"\s*\(verdict \w+.*\)$", "", self.text) if self.kind == "rule" else ""
        what = f"rule `{' '.join(rule.split())}`" if rule else self.kind
        what = re.sub(r" counter packets \d+ bytes \d+", "", what)
        return f"{self.family} {self.table} {self.chain}: {what} -> {self.verdict}"


@dataclass
class _Monitor:
    where: str
    netns: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)


class NftTrace:
    """Trace the probe's packets in the namespaces ``points`` (name -> netns path)."""

    def __init__(self, points: dict[str, str], probe: Probe, ident: str) -> None:
        self.points, self.probe = points, probe
        self.table = f"kltrace{ident}"
        self.monitors: list[_Monitor] = []
        self.events: list[NftEvent] = []
        self.unavailable: list[str] = []  # namespaces where tracing could not be set up

    def __enter__(self) -> NftTrace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ruleset(self) -> str:
        rules = "\n".join(f"    {m} meta nftrace set 1" for m in self.probe.nft_matches())
        chains = [("pre", "prerouting"), ("out", "output")]
        body = "\n".join(f"  chain {name} {{\n    type filter hook {hook} priority -350;\n"
                         f"{rules}\n  }}" for name, hook in chains)
        return f"table inet {self.table} {{\n{body}\n}}\n"

    def start(self, timeout: float = 10) -> None:
        for where, netns in self.points.items():
            argv = shell.in_netns(["nft", "monitor", "trace"], netns)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, text=True)
            self.monitors.append(_Monitor(where, netns, proc))
        deadline = time.monotonic() + timeout
        for mon in self.monitors:
            while not _listening(mon.proc.pid) and time.monotonic() < deadline:
                if mon.proc.poll() is not None:
                    break
                time.sleep(0.01)
            if not _listening(mon.proc.pid):
                self.unavailable.append(mon.where)
        text = self.ruleset()
        for where, netns in self.points.items():
            res = shell.run(["nft", "-f", "-"], netns=netns, input=text, check=False,
                            timeout=20)
            if not res.ok:
                log.warning("no netfilter trace in %s: %s", where, res.stderr.strip())
                self.unavailable.append(where)

    def stop(self) -> list[NftEvent]:
        for netns in self.points.values():
            shell.run(["nft", "delete", "table", "inet", self.table], netns=netns,
                      check=False, timeout=20)
        for mon in self.monitors:
            mon.proc.terminate()
        for mon in self.monitors:
            try:
                out, _ = mon.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                mon.proc.kill()
                out, _ = mon.proc.communicate()
            self.events += self._parse(mon.where, out or "")
        self.monitors = []
        return self.events

    def _parse(self, where: str, text: str) -> list[NftEvent]:
        events, legs = [], {}
        for line in text.splitlines():
            m = _LINE.match(line.strip())
            if not m:
                continue
            tid, family, table, chain, kind, rest = m.groups()
            ev = NftEvent(where, tid, family, table, chain, kind.rstrip(": "), rest.strip())
            if ev.kind == "packet" and tid not in legs:
                legs[tid] = self._leg(rest)
            events.append(ev)
        for ev in events:
            ev.leg = legs.get(ev.trace_id, "")
        return events

    def _leg(self, packet: str) -> str:
        """Request or reply, from the headers ``nft`` prints for the traced packet."""
        if self.probe.proto == "icmp":
            return "reply" if "type echo-request" not in packet else "request"
        if self.probe.proto == "tcp":
            return "request" if re.search(r"tcp flags == syn\b(?! *\|)", packet) else "reply"
        m = re.search(r"udp dport (\d+)", packet)
        return "reply" if m and int(m.group(1)) == self.probe.sport else "request"


def _listening(pid: int) -> bool:
    """True once the process has a netfilter netlink socket in the trace group."""
    try:
        sockets = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
        inodes = {os.readlink(p) for p in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return False
    for line in sockets:
        cols = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if (len(cols) >= 10 and int(cols[1]) == NETLINK_NETFILTER
                and int(cols[3], 16) & NFTRACE_GROUP_BIT and f"socket:[{cols[9]}]" in inodes):
            return True
    return False
