"""The ExaBGP daemon: one process per speaker, its own config, env, log and pid file.

ExaBGP speaks BGP but touches no kernel: every instance runs an API program of knetlab's
(``installer`` or ``reflector``) that reads ExaBGP's JSON on stdin and writes commands on
stdout. Settings that matter here (see KERNEL.md): run as root without dropping privileges
(else the API helper dies with EACCES), no daemonizing, no CLI fifos, ``tcp.bind`` on the
speaker's own addresses (ExaBGP only listens when told to, and two speakers that both only
connect never meet), ``reactor.speed=10`` for low idle CPU (reflectors: 1, see ``speed``).

Of each pair of speakers only the lower address dials (see ``passive``).

Membership changes rewrite the config and send SIGUSR1: ExaBGP reloads it and only the
neighbours that changed are touched.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from knetlab.daemon import Daemon, DaemonError

if TYPE_CHECKING:
    from knetlab.rundir import RunDir

RELOADED = "loaded new configuration successfully"  # ExaBGP's log line after a (re)load
STATE_FILE = "bgp-state.json"  # written by the API program: peers and learned routes
MEMBERS_FILE = "members"  # a reflector's current clients (not its spares), one a line


@dataclass(frozen=True)
class Neighbor:
    address: str
    local_address: str
    kind: str = "node-to-node mesh"  # shown by ``bgp status``: mesh / route reflector / ToR


@dataclass
class SpeakerConfig:
    router_id: str
    asn: int
    hold_time: int
    neighbors: list[Neighbor] = field(default_factory=list)
    announce: list[tuple[str, str]] = field(default_factory=list)  # (prefix, next hop)
    api_args: list[str] = field(default_factory=list)  # the API program's argv after -m


NEIGHBOR = """\
neighbor {address} {{
    description "{kind}";
    router-id {router_id};
    local-address {local};
    local-as {asn};
    peer-as {asn};
    hold-time {hold};
    passive {passive};
    family {{ ipv4 unicast; }}
    api {{ processes [ knetlab ]; receive {{ parsed; update; }} neighbor-changes; }}
{static}}}
"""


def passive(n: Neighbor) -> bool:
    """Only the lower address of a pair dials. ExaBGP 4.2 breaks on a connection collision
    (both ends dial at once: "'NoneType' object has no attribute 'router_id'" in its log,
    and the session never comes up); a reflector or ToR with a higher address than its
    clients waits for them, as BIRD's ``passive on`` does."""
    return ipaddress.ip_address(n.local_address) > ipaddress.ip_address(n.address)


def render(cfg: SpeakerConfig, python: str = sys.executable) -> str:
    """The whole ExaBGP configuration of one speaker."""
    argv = " ".join([python, "-m", *cfg.api_args])
    out = [f"process knetlab {{\n    run {argv};\n    encoder json;\n}}\n"]
    static = ""
    if cfg.announce:
        routes = "".join(f"        route {p} next-hop {nh};\n" for p, nh in cfg.announce)
        static = f"    static {{\n{routes}    }}\n"
    for n in sorted(cfg.neighbors, key=lambda n: n.address):
        out.append(NEIGHBOR.format(address=n.address, kind=n.kind, router_id=cfg.router_id,
                                   local=n.local_address, asn=cfg.asn, hold=cfg.hold_time,
                                   static=static, passive=str(passive(n)).lower()))
    return "\n".join(out)


NEIGHBOR_BLOCK = re.compile(r"^neighbor (\S+) \{\n(.*?)^\}", re.M | re.S)


def configured_neighbors(text: str) -> dict[str, str]:
    """A rendered config's neighbours: address -> its block (to see which ones changed)."""
    return {m.group(1): m.group(2) for m in NEIGHBOR_BLOCK.finditer(text)}


class ExaBGP(Daemon):
    name = "exabgp"
    ready_timeout = 60.0  # a hundred booting at once on 2 cores take a while

    def __init__(self, rundir: RunDir, owner: str, netns: str | None,
                 cfg: SpeakerConfig, speed: float = 10.0) -> None:
        super().__init__(rundir, owner, netns)
        self.cfg = cfg
        # reactor.speed 10 sleeps 100 ms per idle loop and runs ~25 queued API commands
        # per loop: fine for a node, far too slow for a reflector that sends every route
        # to every client (it lagged by minutes at 80 nodes). Reflectors use 1 (10 ms).
        self.speed = speed
        self.state_file = self.dir / STATE_FILE

    def render_config(self) -> str:
        return render(self.cfg)

    def command(self) -> list[str]:
        return ["exabgp", str(self.config_file)]

    def env(self) -> dict[str, str]:
        binds = sorted({n.local_address for n in self.cfg.neighbors} | {self.cfg.router_id})
        return {
            "exabgp.daemon.user": "root",
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.daemonize": "false",
            "exabgp.api.cli": "false",
            "exabgp.log.destination": str(self.dir / "exabgp-internal.log"),
            "exabgp.reactor.speed": str(self.speed),
            "exabgp.tcp.bind": " ".join(binds),
            "KNETLAB_BGP_STATE": str(self.state_file),
        }

    def is_ready(self) -> bool:
        return self.state_file.exists()  # the API program is up and has written its state

    def start(self, wait: bool = True) -> None:
        self.state_file.unlink(missing_ok=True)
        if not wait:  # the owner boots many at once and calls wait_ready / retry itself
            super().start(wait=False)
            return
        try:
            super().start()
        except DaemonError:
            # Rare on a loaded 2-core VM: the speaker dies at start with an empty log
            # (cause not found yet). Stop whatever is left by pid, then try once more;
            # a real configuration error fails again and is raised.
            self.stop()
            self.state_file.unlink(missing_ok=True)
            super().start()

    def internal_log(self) -> Path:
        return self.dir / "exabgp-internal.log"  # where ExaBGP logs once it runs

    def _log_size(self) -> int:
        try:
            return self.internal_log().stat().st_size
        except OSError:
            return 0

    def reconfigure(self, cfg: SpeakerConfig) -> int | None:
        """Rewrite the config; SIGUSR1 makes ExaBGP reload it. If it changed, return the
        reload count before the signal (for ``wait_reloaded``), else None."""
        self.cfg = cfg
        text = render(cfg)
        if self.config_file.exists() and self.config_file.read_text() == text:
            return None
        before = self._log_size()
        self.config_file.write_text(text)
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGUSR1)
        return before

    def reload_until_applied(self, before: int, timeout: float = 6.0) -> bool:
        """Wait for the reload ``reconfigure`` asked for, signalling again every 2 s: a
        SIGUSR1 that reaches ExaBGP before it has installed its handler is lost, and the
        peer it was meant for is then refused for good (FRR's interop run saw that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.wait_reloaded(before, timeout=min(2.0, deadline - time.monotonic())):
                return True
            before = self._log_size()
            if self.pid is not None and self.alive():
                os.kill(self.pid, signal.SIGUSR1)
        return False

    def wait_reloaded(self, before: int, timeout: float = 5.0) -> bool:
        """Wait until ExaBGP has applied a new config. A speaker that dials a peer which
        does not know it yet is refused, and ExaBGP backs off for seconds (the slow joins
        seen before): new speakers start only once their reflectors have reloaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.internal_log().open("rb") as f:
                    f.seek(before)
                    if RELOADED.encode() in f.read():
                        return True
            except OSError:
                pass
            if not self.alive():
                return True
            time.sleep(0.01)
        return False
