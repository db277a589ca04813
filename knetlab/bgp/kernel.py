"""Kernel routes learned over BGP, in the namespace the API program runs in (``proto bird``).

The route installer's kernel half: given every peer's paths for a prefix, install one path
(``ip route replace ... proto bird``) or delete the prefix when no peer has it. Only prefixes
inside the pod pool are accepted, never the speaker's own, so a bad or looped announcement
cannot overwrite connected routes. Next hops that are not on a connected subnet (another
rack's node, seen from a ToR or a node behind one) are resolved through the kernel's own
route to them, as BIRD's recursive next hops do: to every next hop of that route (a ToR's
route to another rack is ECMP over the spines), and again whenever a route other than ours
changes (a netlink listener; the fabric withdraws a spine whose link died), so a pod route
never stays on a dead path.

Changes go to one long-lived ``ip -force -batch -`` reading our pipe: spawning ``ip`` per
update (plus a ``route get`` per prefix) cost ~15 ms of CPU per event, and at 100 nodes a
join's 200 updates queued seconds of it on two cores.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
import time

from knetlab.bgp.messages import BgpPath

PROTO = "bird"  # rt_protos 12: what Calico's BIRD uses, so `ip route` reads the same
PROTO_NUM = 12
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
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
        # A comma-separated list: the pod pool, and on routers of the fabric (ToRs,
        # spines) also what Calico advertises of Services (LoadBalancer, ClusterIP ranges).
        self.pools = [ipaddress.ip_network(p) for p in pool.split(",") if p]
        self.pool = self.pools[0]
        self.own, self.self_ips, self.encap = own, self_ips, encap
        self.installed: dict[str, str] = {}
        self.next_hop: dict[str, str] = {}  # prefix -> the BGP next hop it was installed for
        self.hops: dict[str, str] = {}  # next hop -> how to reach it
        self.recursive: set[str] = set()  # next hops resolved through another route
        self.subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
        self.batch = IpBatch()
        self.lock = threading.Lock()  # sync (the BGP reader) and refresh (the listener)
        self.changed = threading.Event()
        self.listener: threading.Thread | None = None

    def accept(self, prefix: str, path: BgpPath) -> bool:
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            return False
        return (any(net.version == p.version and net.subnet_of(p) for p in self.pools)
                and prefix not in self.own
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
            hop = self._resolve(next_hop)
            if hop is None:
                return f"via {next_hop}"  # no route to it yet: ask again next time
            self.hops[next_hop] = hop
            self.recursive.add(next_hop)
            self._listen()
        return self.hops[next_hop]

    @staticmethod
    def _resolve(next_hop: str) -> str | None:
        """Every next hop of the kernel's longest-prefix route to ``next_hop`` (not ours)."""
        try:
            routes = json.loads(_ip(["-j", "-d", "route", "show", "table", "main"]).stdout)
        except ValueError:
            return None
        addr, best, best_len = ipaddress.ip_address(next_hop), None, -1
        for r in routes:
            if r.get("protocol") == PROTO or r.get("type", "unicast") != "unicast":
                continue
            dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"]
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            if addr in net and net.prefixlen > best_len:
                best, best_len = r, net.prefixlen
        if best is None:
            return None
        hops = [(h["gateway"], h["dev"]) for h in best.get("nexthops", []) if "gateway" in h
                and "dead" not in h.get("flags", []) and "linkdown" not in h.get("flags", [])]
        if len(hops) > 1:
            return " ".join(f"nexthop via {gw} dev {dev} weight 1" for gw, dev in hops)
        if hops:
            return f"via {hops[0][0]} dev {hops[0][1]}"
        if "gateway" in best:
            return f"via {best['gateway']} dev {best['dev']}"
        return None

    def _listen(self) -> None:
        """Start the netlink listener once a next hop depends on another route."""
        if self.listener is None:
            self.listener = threading.Thread(target=self._watch_routes, daemon=True,
                                             name="route-listener")
            self.listener.start()
            threading.Thread(target=self._refresher, daemon=True, name="refresher").start()

    def _watch_routes(self) -> None:
        """Wake the refresher on any IPv4 route change that is not one of ours."""
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.bind((0, RTMGRP_IPV4_ROUTE))
            while True:
                data, off = s.recv(1 << 16), 0
                while off + 24 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, off)
                    # rtmsg follows the 16-byte header; its 6th byte is the protocol
                    if kind in (RTM_NEWROUTE, RTM_DELROUTE) and data[off + 21] != PROTO_NUM:
                        self.changed.set()
                    if length < 16:
                        break
                    off += (length + 3) & ~3

    def _refresher(self) -> None:
        while True:
            self.changed.wait()
            time.sleep(0.02)  # a fabric change is a burst of route events: take it whole
            self.changed.clear()
            self.refresh()

    def refresh(self) -> None:
        """Re-resolve every recursive next hop; move the routes whose path changed."""
        with self.lock:
            for nh in self.recursive:
                self.hops.pop(nh, None)
            self.recursive.clear()
            lines = []
            for prefix, nh in sorted(self.next_hop.items()):
                hop = self._hop(nh)
                if self.installed.get(prefix) != hop:
                    lines.append(f"route replace {prefix} proto {PROTO} {hop}")
                    self.installed[prefix] = hop
            if lines:  # under the lock: a refresh and a sync reach ip in the order decided
                self.batch.send(lines)

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
        with self.lock:
            for prefix in sorted(prefixes):
                paths = [p for peer, p in sorted(paths_of.get(prefix, {}).items())
                         if self.accept(prefix, p)]
                if paths:
                    best = min(paths, key=lambda p: len(p.cluster_list))  # shortest reflection
                    hop = self._hop(best.next_hop)
                    self.next_hop[prefix] = best.next_hop
                    if self.installed.get(prefix) != hop:
                        lines.append(f"route replace {prefix} proto {PROTO} {hop}")
                        self.installed[prefix] = hop
                elif self.installed.pop(prefix, None) is not None:
                    self.next_hop.pop(prefix, None)
                    lines.append(f"route del {prefix} proto {PROTO}")
            if lines:
                self.batch.send(lines)
