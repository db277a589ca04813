"""The underlay: switches, routers and node uplinks, built into Mininet.

``segment``: every node on one L2 switch (plus a VPC-style router when the data plane
programs a fabric). ``leaf-spine``: one switch and ToR router per rack (its own /24), each
ToR linked to every spine by a /30, ECMP routes between racks.

Switches live in the root namespace, so their names carry the lab's tag (``kl1a2bs1``),
as do their ports (``kl1a2bs1-eth3``); routers and nodes are namespaces.

The fabric's static routes are reconciled level-triggered: a cut link flushes the routes
over it and nothing in the kernel brings them back, so one thread of the lab's owner
process polls the fabric links' state and re-applies every router's desired routes (ECMP
next hops only over spines whose both links are up) whenever a link changes, and every
``RESYNC`` seconds anyway. Data planes that program the fabric (``fabric_routes``) are
told through the change callback, and get the same link-aware next hops.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mininet.node import OVSSwitch, Switch

from knetlab import shell
from knetlab.nodes.host import NetnsHost, Router

if TYPE_CHECKING:
    from mininet.net import Mininet

    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.underlay")
FABRIC_LINKS_PER_24 = 64  # /30 links in the last /24 of the underlay CIDR
POLL = 0.4  # seconds between looks at the fabric links (recovery within about 2 s)
RESYNC = 10.0  # seconds between full re-applies when nothing changed (drift repair)


class KernelBridge(Switch):
    """A Linux bridge in the root namespace, made with ``ip`` (no bridge-utils)."""

    def start(self, controllers: list[Any]) -> None:
        shell.run(["ip", "link", "add", self.name, "type", "bridge", "stp_state", "0",
                   "forward_delay", "0"])
        # Bridged underlay frames must not meet the host's own iptables (br_netfilter).
        shell.run(["ip", "link", "set", self.name, "type", "bridge", "nf_call_iptables", "0",
                   "nf_call_ip6tables", "0", "nf_call_arptables", "0"], check=False)
        shell.run(["ip", "link", "set", self.name, "up"])
        for intf in self.intfList():
            if intf.name != "lo":
                self.attach(intf)

    def attach(self, intf: Any) -> None:
        shell.run(["ip", "link", "set", str(intf), "master", self.name, "up"])

    def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 - Mininet's name
        shell.run(["ip", "link", "del", self.name], check=False)
        super().stop(deleteIntfs)


class Underlay:
    def __init__(self, spec: ClusterSpec, net: Mininet, rundir: RunDir,
                 with_segment_router: bool) -> None:
        self.spec, self.net, self.rundir = spec, net, rundir
        self.u = spec.underlay
        self.switches: dict[int, Any] = {}
        self.tors: dict[int, Router] = {}
        self.spines: list[Router] = []
        self.with_segment_router = with_segment_router
        self.spine_links: dict[tuple[int, int], tuple[str, str]] = {}  # (rack, k) -> tor, spine
        self.tor_ports: dict[tuple[int, int], str] = {}  # (rack, k) -> the ToR's interface
        self.nodes: dict[str, K8sNode] = {}  # attached nodes, by name
        self.node_ports: dict[str, str] = {}  # node -> its uplink's switch port (root netns)
        self.cut: set[tuple[int, int]] = set()  # fabric links (rack, spine) seen down
        self.uplinks_down: set[str] = set()  # nodes whose uplink is seen down
        self.flaps: dict[Any, int] = {}  # link -> carrier changes seen (a flap between looks)
        self.events: list[dict[str, Any]] = []  # link changes and how fast routes followed
        self.lock = threading.RLock()  # one reconcile at a time; attach/detach under it
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[list[K8sNode]], object] = lambda nodes: None

    # -- build -----------------------------------------------------------------
    def build(self) -> None:
        racks = range(1, self.u.racks + 1)
        for r in racks:
            self.switches[r] = self._switch(r)
        if self.u.type == "segment":
            if self.with_segment_router:
                self.tors[1] = self._router("vpc-router", 1)
            return
        for r in racks:
            self.tors[r] = self._router(f"tor-{r}", r)
        self.spines = [self._host(f"spine-{k}") for k in range(1, self.u.spines + 1)]
        fabric = list(self.u.cidr.subnets(new_prefix=24))[-1]
        links = list(fabric.subnets(new_prefix=30))
        for r in racks:
            for k, spine in enumerate(self.spines, start=1):
                net30 = links[(r - 1) * self.u.spines + (k - 1)]
                tor_ip, spine_ip = (str(h) for h in list(net30.hosts())[:2])
                link = self.net.addLink(self.tors[r], spine)
                link.intf1.setIP(f"{tor_ip}/30")
                link.intf2.setIP(f"{spine_ip}/30")
                self.spine_links[(r, k)] = (tor_ip, spine_ip)
                self.tor_ports[(r, k)] = link.intf1.name
        self._apply_fabric()

    def _switch(self, rack: int) -> Any:
        name = f"{self.rundir.tag}s{rack}"
        if self.spec.switch == "ovs":
            sw = self.net.addSwitch(name, cls=OVSSwitch, datapath="user", failMode="standalone",
                                    dpid=f"{rack:016x}")
        else:
            sw = self.net.addSwitch(name, cls=KernelBridge, dpid=f"{rack:016x}")
        self.rundir.record_process(sw.pid, f"mininet:{name}", name)
        sw.start([])
        return sw

    def _host(self, name: str) -> Router:
        return self.net.addHost(name, cls=Router, rundir=self.rundir, ip=None)

    def _router(self, name: str, rack: int) -> Router:
        router = self._host(name)
        link = self.net.addLink(router, self.switches[rack])
        self.switches[rack].attach(link.intf2)
        gw = self.u.gateway(rack)
        link.intf1.setIP(f"{gw}/{self.u.rack_subnet(rack).prefixlen}")
        self._software_checksums(router, link.intf1.name)
        return router

    def _software_checksums(self, host: NetnsHost, intf: str) -> None:
        """OVS's userspace datapath reads frames with AF_PACKET and does not finish partial
        checksums; a sender whose NIC 'offloads' them would stall TCP. Compute them first."""
        if self.spec.switch == "ovs":
            host.run(["ethtool", "-K", intf, "tx", "off"])

    def _up(self, rack: int, k: int) -> bool:
        return (rack, k) not in self.cut

    def _spine_hops(self, rack: int, to_rack: int | None = None) -> str:
        """ECMP next hops from the ToR of ``rack`` over every spine whose links (this
        rack's, and ``to_rack``'s if given) are up; ``blackhole`` when none is."""
        ks = [k for k in range(1, len(self.spines) + 1)
              if self._up(rack, k) and (to_rack is None or self._up(to_rack, k))]
        if not ks:
            return "blackhole"
        return " ".join(f"nexthop via {self.spine_links[(rack, k)][1]}" for k in ks)

    def _desired(self) -> dict[NetnsHost, list[str]]:
        """The underlay's own routes, as ``ip -batch`` lines per host: rack subnets on the
        spines (via the ToR, when that link is up) and the ToRs (ECMP over the spines), the
        underlay CIDR on every node's uplink (leaf-spine)."""
        out: dict[NetnsHost, list[str]] = {}
        for r, tor in self.tors.items():
            lines = []
            for o in self.tors:
                if o != r and self.spines:
                    hops = self._spine_hops(r, o)
                    subnet = self.u.rack_subnet(o)
                    lines.append(f"route replace blackhole {subnet}" if hops == "blackhole"
                                 else f"route replace {subnet} {hops}")
            out[tor] = lines
        for k, spine in enumerate(self.spines, start=1):
            out[spine] = [f"route replace {self.u.rack_subnet(r)} via "
                          f"{self.spine_links[(r, k)][0]}" if self._up(r, k) else
                          f"route del {self.u.rack_subnet(r)}" for r in self.tors]
        if self.u.type == "leaf-spine":
            for node in self.nodes.values():
                if node.name not in self.uplinks_down:
                    out[node] = [f"route replace {self.u.cidr} via "
                                 f"{self.u.gateway(node.spec.rack)}"]
        return out

    def _apply_fabric(self) -> None:
        """Apply ``_desired`` everywhere; ``-force`` so one stale delete stops nothing."""
        for host, lines in self._desired().items():
            if lines:
                res = shell.run(["ip", "-force", "-batch", "-"], netns=host.netns,
                                check=False, input="\n".join(lines) + "\n")
                if not res.ok and "No such process" not in res.stderr:
                    log.warning("fabric routes on %s: %s", host.name, res.stderr.strip())

    # -- reconciler: link state -> routes ---------------------------------------
    def start_reconciler(self, on_change: Callable[[list[K8sNode]], object]) -> None:
        """Watch the fabric links from now on; after each re-apply call ``on_change(nodes
        whose uplink came back)`` (the data plane re-programs what it owns)."""
        if self._thread is None and self.tors:
            self._on_change = on_change
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"fabric-{self.spec.name}")
            self._thread.start()

    def stop_reconciler(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(POLL):
            try:
                with self.lock:
                    if not self._stopping.is_set() and self.reconcile(
                            force=time.monotonic() - last > RESYNC):
                        last = time.monotonic()
            except Exception:  # noqa: BLE001 - the next pass tries again; never die
                log.exception("fabric reconcile failed")

    def reconcile(self, force: bool = False) -> bool:
        """One pass: read link state; if it changed (or ``force``), re-apply every route.
        Returns whether routes were applied."""
        t0 = time.monotonic()
        cut, down, flaps = self._link_state()
        # A flap between two looks leaves the state as it was, but the routes flushed.
        flapped = {key for key, n in flaps.items() if self.flaps.get(key, n) != n}
        self.flaps = flaps
        changed = cut != self.cut or down != self.uplinks_down or bool(flapped)
        if not (changed or force):
            return False
        back = [node for name, node in self.nodes.items() if name not in down
                and (name in self.uplinks_down or name in flapped)]
        now_events = [{"link": self._link_name(key), "kind": what,
                       "state": "down" if key in now else "up", "at": time.time()}
                      for what, before, now in (("fabric link", self.cut, cut),
                                                ("uplink", self.uplinks_down, down))
                      for key in sorted(now ^ before, key=str)]
        now_events += [{"link": self._link_name(key), "kind": "flap", "state": "flapped",
                        "at": time.time()} for key in sorted(flapped, key=str)
                       if key not in (cut ^ self.cut) | (down ^ self.uplinks_down)]
        self.cut, self.uplinks_down = cut, down
        self._apply_fabric()
        self._on_change(back)
        if now_events:
            took = round(time.monotonic() - t0, 3)
            for ev in now_events:
                ev["routes_applied_in"] = took
            self.events = [*self.events[-99:], *now_events]
            log.warning("fabric: %s; routes re-applied in %.2f s",
                        ", ".join(f"{e['link']} {e['state']}" for e in now_events), took)
        return True

    def _link_name(self, key: Any) -> str:
        if isinstance(key, tuple):
            return f"tor-{key[0]}<->spine-{key[1]}"
        return f"{key} uplink"

    def _link_state(self) -> tuple[set[tuple[int, int]], set[str], dict[Any, int]]:
        """Fabric links and node uplinks that are down. One end tells: a veth end is UP with
        LOWER_UP only while both ends are up. A ToR's ports are read with ``ip`` in its
        namespace; a node's uplink from its switch port's operstate in sysfs (root
        namespace), so nodes cost no process however many there are."""
        cut: set[tuple[int, int]] = set()
        flaps: dict[Any, int] = {}
        for r, tor in self.tors.items():
            state = _links_up(tor)
            for key, port in self.tor_ports.items():
                if key[0] == r and port in state:
                    up, flaps[key] = state[port]
                    if not up:
                        cut.add(key)
        down = set()
        for name, port in list(self.node_ports.items()):
            try:
                sysfs = Path("/sys/class/net") / port
                state = (sysfs / "operstate").read_text().strip()
                flaps[name] = int((sysfs / "carrier_changes").read_text())
            except (OSError, ValueError):
                continue  # being removed
            if state != "up":
                down.add(name)
        return cut, down, flaps

    # -- nodes -----------------------------------------------------------------
    def attach_node(self, node: K8sNode) -> None:
        sw = self.switches[node.spec.rack]
        link = self.net.addLink(node, sw, intfName1=node.uplink)
        sw.attach(link.intf2)
        lines = [f"addr add {node.spec.ip} dev {node.uplink}", f"link set {node.uplink} up"]
        if self.u.type == "leaf-spine":
            lines.append(f"route replace {self.u.cidr} via {self.u.gateway(node.spec.rack)}")
        node.ip_batch(lines, context=f"configure uplink of {node.name}")
        self._software_checksums(node, node.uplink)
        with self.lock:
            self.nodes[node.name] = node
            self.node_ports[node.name] = link.intf2.name

    def detach_node(self, node: K8sNode) -> None:
        with self.lock:
            self.nodes.pop(node.name, None)
            self.node_ports.pop(node.name, None)
            self.uplinks_down.discard(node.name)
        for link in [lk for lk in self.net.links if node in (lk.intf1.node, lk.intf2.node)]:
            link.delete()
            self.net.links.remove(link)

    def routers(self) -> list[Router]:
        return [*self.tors.values(), *self.spines]

    def fabric_routes(self, node: K8sNode) -> dict[Router, str]:
        """For every router, the next hop(s) that lead to ``node``."""
        rack = node.spec.rack
        out: dict[Router, str] = {}
        for r, tor in self.tors.items():
            out[tor] = f"via {node.node_ip}" if r == rack else self._spine_hops(r, rack)
        for k, spine in enumerate(self.spines, start=1):
            if self._up(rack, k):  # else that spine has no way to the rack: no route
                out[spine] = f"via {self.spine_links[(rack, k)][0]}"
        return out

    def gateway_for(self, node: K8sNode) -> str | None:
        """The router a node sends fabric-routed traffic to, if there is one."""
        if node.spec.rack in self.tors:
            return str(self.u.gateway(node.spec.rack))
        return None

    def is_l2_adjacent(self) -> bool:
        return self.u.type == "segment"


def _links_up(host: NetnsHost) -> dict[str, tuple[bool, int]]:
    """Interface name -> (up: UP and LOWER_UP, carrier changes so far) in ``host``'s
    namespace; empty if it is gone."""
    res = shell.run(["ip", "-j", "-s", "-s", "link", "show"], netns=host.netns, check=False,
                    timeout=10)
    if not res.ok:
        return {}
    return {link["ifname"]: ({"UP", "LOWER_UP"} <= set(link.get("flags", [])),
                             link.get("stats64", {}).get("tx", {}).get("carrier_changes", 0))
            for link in json.loads(res.stdout or "[]")}
