"""A VXLAN device and its per-peer state, programmed level-triggered: the one helper behind
flannel's ``flannel.1``, Calico's ``vxlan.calico`` and docker's overlay networks.

- ``ensure``: make the device exist with exactly these settings (a device with another VNI,
  port, local address or learning mode is recreated, as flanneld does), then its MTU, MAC,
  address, master and up state.
- ``sync_unicast``: per peer a permanent neighbour (peer VTEP address -> VTEP MAC) and an
  FDB entry (VTEP MAC -> peer node IP); stale ones deleted. flannel and Calico use this
  (no learning, no flooding: the control plane knows every VTEP).
- ``sync_flood``: all-zero FDB entries (head-end replication of unknown/broadcast frames
  to every peer) with learning on; docker's overlay driver uses this.

Runs in the namespace ``netns`` (a path; None: the current one, as in an agent process
that already lives in its node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from knetlab import shell

FLOOD_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    local: str  # this node's underlay address
    uplink: str  # the underlay interface
    port: int
    mtu: int
    mac: str | None = None
    address: str | None = None  # e.g. "10.244.1.0/32" (flannel) or the VTEP /32 (Calico)
    learning: bool = False
    master: str | None = None  # a bridge to enslave it to (docker's overlay)

    def _json(self, argv: list[str], netns: str | None) -> list[dict[str, Any]]:
        res = shell.run(argv, netns=netns, check=False)
        return json.loads(res.stdout or "[]") if res.ok else []

    def ensure(self, netns: str | None = None) -> None:
        links = self._json(["ip", "-d", "-j", "addr", "show", "dev", self.name], netns)
        info = links[0].get("linkinfo", {}).get("info_data", {}) if links else {}
        lines: list[str] = []
        if links and (info.get("id") != self.vni or info.get("port") != self.port
                      or info.get("local") != self.local
                      or bool(info.get("learning", False)) != self.learning):
            lines.append(f"link del {self.name}")
            links = []
        if not links:
            lines.append(f"link add {self.name} type vxlan id {self.vni} local {self.local} "
                         f"dev {self.uplink} dstport {self.port}"
                         + ("" if self.learning else " nolearning"))
        link = links[0] if links else {}
        if self.mac and link.get("address") != self.mac:
            lines.append(f"link set {self.name} address {self.mac}")
        if self.master and link.get("master") != self.master:
            lines.append(f"link set {self.name} master {self.master}")
        if link.get("mtu") != self.mtu or "UP" not in link.get("flags", []):
            lines.append(f"link set {self.name} mtu {self.mtu} up")
        have = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                if a.get("family") == "inet"}
        if self.address and self.address not in have:
            lines.append(f"addr replace {self.address} dev {self.name}")
        if lines:
            shell.ip_batch(lines, netns=netns, context=f"configure {self.name}")

    def exists(self, netns: str | None = None) -> bool:
        return bool(self._json(["ip", "-j", "link", "show", "dev", self.name], netns))

    def sync_unicast(self, peers: dict[str, tuple[str, str]], netns: str | None = None
                     ) -> None:
        """``peers``: VTEP address -> (VTEP MAC, peer node IP); everything else removed."""
        want_neigh = {vtep: mac for vtep, (mac, _ip) in peers.items()}
        want_fdb = {mac: ip for mac, ip in peers.values()}
        have_neigh = {n["dst"]: n.get("lladdr") for n in self._json(
            ["ip", "-j", "neigh", "show", "dev", self.name, "nud", "permanent"], netns)}
        have_fdb = {f["mac"]: f["dst"] for f in self._fdb(netns) if f["mac"] != FLOOD_MAC}
        # Order as flanneld does: FDB and neighbours before the routes that use them.
        fdb = [f"fdb replace {mac} dev {self.name} dst {ip} self permanent"
               for mac, ip in want_fdb.items() if have_fdb.get(mac) != ip]
        fdb += [f"fdb del {mac} dev {self.name} dst {have_fdb[mac]} self"
                for mac in set(have_fdb) - set(want_fdb)]
        neigh = [f"neigh replace {ip} lladdr {mac} dev {self.name} nud permanent"
                 for ip, mac in want_neigh.items() if have_neigh.get(ip) != mac]
        neigh += [f"neigh del {ip} dev {self.name}" for ip in set(have_neigh) - set(want_neigh)]
        self._bridge_batch(fdb, netns)
        if neigh:
            shell.ip_batch(neigh, netns=netns, context=f"neighbours on {self.name}")

    def sync_flood(self, peer_ips: list[str], netns: str | None = None) -> None:
        """One all-zero FDB entry per peer node (and none for departed ones)."""
        have = {f["dst"] for f in self._fdb(netns) if f["mac"] == FLOOD_MAC}
        want = set(peer_ips) - {self.local}
        lines = [f"fdb append {FLOOD_MAC} dev {self.name} dst {ip}" for ip in sorted(want - have)]
        lines += [f"fdb del {FLOOD_MAC} dev {self.name} dst {ip}" for ip in sorted(have - want)]
        self._bridge_batch(lines, netns)

    def _fdb(self, netns: str | None) -> list[dict[str, Any]]:
        return [f for f in self._json(["bridge", "-j", "fdb", "show", "dev", self.name], netns)
                if "dst" in f]

    def _bridge_batch(self, lines: list[str], netns: str | None) -> None:
        if lines:
            shell.run(["bridge", "-batch", "-"], netns=netns, input="\n".join(lines) + "\n",
                      context=f"fdb on {self.name}")
