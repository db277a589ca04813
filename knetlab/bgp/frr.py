"""FRR as a BGP peer of knetlab's speakers (interoperability with a real router).

Two FRR daemons, each a Daemon of its own (config, pid file, log in its own dir): zebra,
FRR's kernel manager, and bgpd, talking to it over the zserv socket in zebra's dir, so
what bgpd learns lands in the namespace's kernel (``proto bgp``) as on a real FRR router.
``no bgp network import-check`` lets bgpd originate a prefix zebra has no route for. The
vty sockets are in the daemons' dirs (``vtysh --vty_socket DIR``). FRR runs as Debian's
``frr`` user (root is not in the compiled-in vty group ``frrvty``), so the dirs are
handed to that user; ``-P 0`` opens no telnet vty.

Readiness is FRR's own word, not a file: bgpd creates its vty socket before it has read
its config (the config is read by an event of its main loop), so ``is_ready`` asks bgpd
over vtysh for its BGP instance, and ``wait_established`` waits for the sessions. A caller
waiting for routes starts its route deadline only once the sessions are up: the time to
reach Established (FRR's first start, a peer that refuses it until it reloads, both slow on
a cold or loaded machine) is bounded by the connect timer and the hold time, the time from
Established to the routes by the peer's update rate; one deadline for both flaked.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knetlab import shell
from knetlab.daemon import Daemon, DaemonError

if TYPE_CHECKING:
    from knetlab.rundir import RunDir

BGPD = "/usr/lib/frr/bgpd"
ZEBRA = "/usr/lib/frr/zebra"
FRR_USER = ["-u", "frr", "-g", "frr", "-P", "0"]


class FrrZebra(Daemon):
    name = "zebra"

    def render_config(self) -> str:
        return f"hostname {self.owner}\nlog file {self.log_file}.frr\n"

    @property
    def zserv(self) -> str:
        return str(self.dir / "zserv.api")

    def command(self) -> list[str]:
        return [ZEBRA, *FRR_USER, "-f", str(self.config_file), "-i",
                str(self.dir / "zebra-own.pid"), "--vty_socket", str(self.dir), "-z", self.zserv]

    def start(self, wait: bool = True) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "frr", "frr")
        super().start(wait)

    def is_ready(self) -> bool:
        return (self.dir / "zserv.api").exists()


@dataclass
class FrrConfig:
    router_id: str
    asn: int
    neighbors: list[str]
    networks: list[str] = field(default_factory=list)
    hold_time: int = 3
    connect_retry: int = 1  # seconds between dials of a peer that is not up


class FrrBgpd(Daemon):
    name = "bgpd"

    def __init__(self, rundir: RunDir, owner: str, netns: str | None, cfg: FrrConfig) -> None:
        super().__init__(rundir, owner, netns)
        self.cfg = cfg
        self.socket = self.dir / "bgpd.vty"
        self.zebra = FrrZebra(rundir, owner, netns)

    def render_config(self) -> str:
        c = self.cfg
        lines = [f"hostname {self.owner}", f"log file {self.log_file}.frr", "!",
                 f"router bgp {c.asn}", f" bgp router-id {c.router_id}",
                 " no bgp ebgp-requires-policy", " no bgp network import-check",
                 " no bgp default ipv4-unicast"]
        keepalive = max(1, c.hold_time // 3)
        for n in c.neighbors:
            lines += [f" neighbor {n} remote-as {c.asn}",
                      f" neighbor {n} timers {keepalive} {c.hold_time}",
                      f" neighbor {n} timers connect {c.connect_retry}"]
        lines.append(" address-family ipv4 unicast")
        lines += [f"  network {p}" for p in c.networks]
        lines += [f"  neighbor {n} activate" for n in c.neighbors]
        lines += [" exit-address-family", "!"]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        return [BGPD, *FRR_USER, "-z", self.zebra.zserv,
                "-f", str(self.config_file), "-i", str(self.dir / "bgpd-own.pid"),
                "--vty_socket", str(self.dir)]

    def start(self, wait: bool = True) -> None:
        self.zebra.start()  # bgpd installs routes through it
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "frr", "frr")
        super().start(wait)

    def stop(self, timeout: float = 3.0) -> None:
        super().stop(timeout)
        self.zebra.stop(timeout)

    def is_ready(self) -> bool:
        """bgpd answers on its vty with the instance of its config (router id set)."""
        if not self.socket.exists():
            return False
        out = self._vtysh("show bgp summary json", check=False)
        try:
            data = json.loads(out or "{}")
        except ValueError:
            return False
        return data.get("ipv4Unicast", {}).get("routerId") == self.cfg.router_id

    def session_timeout(self, peer_reload: float = 5.0) -> float:
        """How long sessions may take to come up: the peer's own reload (``peer_reload``,
        e.g. an ExaBGP reflector learning about us), a refused dial and the next one after
        the connect timer, and an OPEN/KEEPALIVE exchange within the hold time."""
        return peer_reload + 2 * self.cfg.connect_retry + self.cfg.hold_time

    def wait_established(self, timeout: float | None = None) -> float:
        """Wait until every configured neighbour is Established; return the seconds it took.
        Raise DaemonError with FRR's summary when not within ``timeout``
        (``session_timeout()`` by default)."""
        limit = self.session_timeout() if timeout is None else timeout
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if not self.alive():
                raise DaemonError(f"bgpd on {self.owner} exited; log tail:\n{self.log_tail()}")
            if set(self.cfg.neighbors) <= self.established():
                return time.monotonic() - t0
            time.sleep(0.05)
        raise DaemonError(f"bgpd on {self.owner}: sessions not Established after {limit}s:\n"
                          f"{self._vtysh('show bgp summary', check=False)}")

    def _vtysh(self, command: str, check: bool = True) -> str:
        return shell.run(["vtysh", "-d", "bgpd", "--vty_socket", str(self.dir), "-c", command],
                         netns=self.netns, check=check, timeout=10,
                         context=f"vtysh on {self.owner}").stdout

    def vtysh(self, command: str) -> str:
        return self._vtysh(command)

    def routes(self) -> dict[str, dict[str, Any]]:
        """prefix -> the best path FRR holds (next hop, originator, cluster list...)."""
        data = json.loads(self.vtysh("show ip bgp json") or "{}")
        out = {}
        for prefix, paths in data.get("routes", {}).items():
            best = next((p for p in paths if p.get("bestpath")), paths[0])
            out[prefix] = best
        return out

    def established(self) -> set[str]:
        data = json.loads(self.vtysh("show ip bgp summary json") or "{}")
        peers = data.get("ipv4Unicast", {}).get("peers", {})
        return {a for a, p in peers.items() if p.get("state") == "Established"}
