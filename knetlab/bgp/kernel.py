"""Kernel routes learned over BGP, in the namespace the API program runs in (``proto bird``).

The route installer's kernel half: given every peer's paths for a prefix, install one path
(``ip route replace ... proto bird``) or delete the prefix when no peer has it. Only prefixes
inside the pod pool are accepted, never the speaker's own, so a bad or looped announcement
cannot overwrite connected routes. Next hops that are not on a connected subnet (another
rack's node, seen from a ToR or a node behind one) are resolved through the kernel's own
route to them, as BIRD's recursive next hops do (once per next hop: the underlay is built
before any speaker starts and does not move).

Changes go to one long-lived ``ip -force -batch -`` reading our pipe: spawning ``ip`` per
update (plus a ``route get`` per prefix) cost ~15 ms of CPU per event, and at 100 nodes a
join's 200 updates queued seconds of it on two cores.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading

from knetlab.bgp.messages import BgpPath

PROTO = "bird"  # rt_protos 12: what Calico's BIRD uses, so `ip route` reads the same
IP_TIMEOUT = 30  # one-shot `ip` runs (the long-lived `ip -batch` has none)


def _ip(args: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    # The API program runs inside its namespace already: plain ip, no nsenter.
    return subprocess.run(["ip", *args], input=input, capture_output=True, text=True,
                          timeout=IP_TIMEOUT)


class IpBatch:
    """One ``ip -batch`` for the program's life: a line written is a command applied (ip
    reads its stdin line by line); its errors go to our stderr, i.e. ExaBGP's log."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()  # the installer's main thread and its block watcher

    def send(self, lines: list[str]) -> None:
        with self.lock:
            self._send(lines)

    def _send(self, lines: list[str]) -> None:
        for _attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(["ip", "-force", "-batch", "-"], text=True,
                                             stdin=subprocess.PIPE, stderr=sys.stderr,
                                             stdout=subprocess.DEVNULL)  # ours: ExaBGP's
            assert self.proc.stdin
            try:
                self.proc.stdin.write("\n".join(lines) + "\n")
                self.proc.stdin.flush()
                return
            except BrokenPipeError:  # ip died (never seen): start another, send again
                self.proc = None


class KernelRoutes:
    def __init__(self, pool: str, own: set[str], self_ips: set[str], encap: str = "none"):
        self.pool = ipaddress.ip_network(pool)
        self.own, self.self_ips, self.encap = own, self_ips, encap
        self.installed: dict[str, str] = {}
        self.hops: dict[str, str] = {}  # next hop -> how to reach it
        self.subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
        self.batch = IpBatch()

    def accept(self, prefix: str, path: BgpPath) -> bool:
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            return False
        return (net.subnet_of(self.pool) and prefix not in self.own
                and path.next_hop not in self.self_ips
                and path.originator_id not in self.self_ips)

    def flush(self) -> None:
        """Routes of a previous instance are stale: start from what BGP says now."""
        _ip(["route", "flush", "proto", PROTO])

    def _hop(self, next_hop: str) -> str:
        if self.encap == "ipip" or (self.encap == "ipip-crosssubnet"
                                    and not self._connected(next_hop)):
            return f"via {next_hop} dev tunl0 onlink"  # Calico's IPIP: out of tunl0
        if next_hop not in self.hops and self._connected(next_hop):
            self.hops[next_hop] = f"via {next_hop}"  # the usual case: no ip to spawn
        if next_hop not in self.hops:
            out = _ip(["-j", "route", "get", next_hop]).stdout
            try:
                self.hops[next_hop] = f"via {json.loads(out)[0].get('gateway', next_hop)}"
            except (ValueError, IndexError):
                return f"via {next_hop}"  # no route to it yet: ask again next time
        return self.hops[next_hop]

    def _connected(self, address: str) -> bool:
        """Is ``address`` on one of our own subnets (read once: the underlay is fixed)?"""
        if self.subnets is None:
            out = _ip(["-j", "-4", "addr", "show"]).stdout
            try:
                self.subnets = [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
                                for link in json.loads(out) for a in link.get("addr_info", [])
                                if a.get("prefixlen", 32) < 32]
            except (ValueError, KeyError):
                self.subnets = []
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self.subnets)

    def sync(self, prefixes: set[str], paths_of: dict[str, dict[str, BgpPath]]) -> None:
        """Make the kernel agree with ``paths_of`` for ``prefixes`` (peer -> path)."""
        lines = []
        for prefix in sorted(prefixes):
            paths = [p for peer, p in sorted(paths_of.get(prefix, {}).items())
                     if self.accept(prefix, p)]
            if paths:
                best = min(paths, key=lambda p: len(p.cluster_list))  # shortest reflection
                hop = self._hop(best.next_hop)
                if self.installed.get(prefix) != hop:
                    lines.append(f"route replace {prefix} proto {PROTO} {hop}")
                    self.installed[prefix] = hop
            elif self.installed.pop(prefix, None) is not None:
                lines.append(f"route del {prefix} proto {PROTO}")
        if lines:
            self.batch.send(lines)
