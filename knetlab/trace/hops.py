"""Hop assembly: from captured frames, netfilter events and routing answers to the path.

Every frame the capture kept is decoded; those that are the probe (``Probe.leg``) become
hops of the request or of the reply, in the order of their kernel timestamps. A packet is
seen once per interface and direction (the first time: a retransmitted SYN is not a new
hop). What changed between two hops of a leg is read off the headers: an outer header
more is an encapsulation, one less a decapsulation, another destination or source a DNAT
or SNAT. The netfilter events of a namespace are shown at the leg's first hop there; the
routing decision at each hop where the packet entered a namespace.

A request that never entered the destination's namespace, and drew no reply, was lost:
the last hop where it was seen is named, with the drop verdict of that namespace's rules,
or its routing decision (blackhole, unreachable) or an unanswered ARP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from knetlab.trace.capture import Frame
from knetlab.trace.nftrace import NOTABLE, NftEvent
from knetlab.trace.packets import ICMP_NAMES, Packet, decode
from knetlab.trace.probe import Probe
from knetlab.trace.routing import route_get, unresolved_neighbour


@dataclass
class Hop:
    ts: float
    where: str  # host name, or switch:NAME
    ifname: str
    direction: str  # in, out
    leg: str  # request, reply
    packet: Packet
    changes: list[str] = field(default_factory=list)
    route: str = ""  # the namespace's routing decision for the packet as it entered
    netfilter: list[str] = field(default_factory=list)

    @property
    def headers(self) -> str:
        return self.packet.text()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "packet"}
        out["headers"] = self.headers
        out["tunnels"] = [asdict(t) for t in self.packet.tunnels]
        out["inner"] = {"src": self.packet.ip.src, "dst": self.packet.ip.dst,
                        "proto": self.packet.l4.kind, "sport": self.packet.l4.sport,
                        "dport": self.packet.l4.dport}
        return out


@dataclass
class Trace:
    src: str
    dst: str
    probe: str
    request: list[Hop]
    reply: list[Hop]
    sender: str  # what the sending socket saw
    delivered: bool
    lost: str = ""  # where and why the request or the reply was lost
    notes: list[str] = field(default_factory=list)

    @property
    def hops(self) -> list[Hop]:
        return self.request + self.reply

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "probe": self.probe, "sender": self.sender,
                "delivered": self.delivered, "lost": self.lost, "notes": self.notes,
                "request": [h.to_dict() for h in self.request],
                "reply": [h.to_dict() for h in self.reply]}


def hops_of(frames: list[Frame], probe: Probe) -> tuple[list[Hop], list[Hop]]:
    """The probe's request and reply hops, in time order, first sighting per interface."""
    seen: set[tuple[str, str, str, bool]] = set()
    legs: dict[str, list[Hop]] = {"request": [], "reply": []}
    matcher = probe.matcher()  # learns what NAT makes of the probe, so: in time order
    for f in sorted(frames, key=lambda f: f.ts):
        pkt = decode(f.data, f.hatype)
        leg = matcher.leg(pkt)
        if leg is None or pkt is None:
            continue
        key = (leg, f.where, f.ifname, f.outgoing)
        if key in seen:
            continue
        seen.add(key)
        legs[leg].append(Hop(f.ts, f.where, f.ifname, "out" if f.outgoing else "in", leg, pkt))
    for hops in legs.values():
        _changes(hops)
    first = legs["request"][0] if legs["request"] else None
    if first is not None:  # NAT in the sender's namespace happens before its first tap
        l4 = first.packet.l4
        sent = probe.icmp_id if probe.proto == "icmp" else probe.sport
        seen = l4.icmp_id if probe.proto == "icmp" else l4.sport
        if seen != sent:
            what = "id" if probe.proto == "icmp" else "port"
            first.changes.append(f"SNAT in {first.where} before it left: source {what} "
                                 f"{sent} -> {seen}")
    return legs["request"], legs["reply"]


def _changes(hops: list[Hop]) -> None:
    for prev, hop in zip(hops, hops[1:], strict=False):
        a, b = prev.packet, hop.packet
        if len(b.tunnels) > len(a.tunnels):
            hop.changes += [f"encapsulated: {t.text()}" for t in b.tunnels[:len(b.tunnels)
                                                                          - len(a.tunnels)]]
        elif len(b.tunnels) < len(a.tunnels):
            hop.changes += [f"decapsulated: {t.text()}" for t in a.tunnels[:len(a.tunnels)
                                                                          - len(b.tunnels)]]
        # On the reply, conntrack undoes the request's NAT: a new source is the DNAT undone.
        dnat, snat = (("DNAT", "SNAT") if hop.leg == "request"
                      else ("reverse SNAT (conntrack)", "reverse DNAT (conntrack)"))
        if _dst(a) != _dst(b):
            hop.changes.append(f"{dnat} {_dst(a)} -> {_dst(b)}")
        if _src(a) != _src(b):
            hop.changes.append(f"{snat} {_src(a)} -> {_src(b)}")
        if b.ip.ttl < a.ip.ttl:
            hop.changes.append(f"routed (ttl {a.ip.ttl} -> {b.ip.ttl})")
    if hops:
        first = hops[0]
        l4 = first.packet.l4
        said = ("sent" if first.leg == "request" else "ICMP error sent about the request"
                if l4.kind == "icmp" and l4.icmp_type in (3, 11) else "answer sent")
        first.changes.insert(0, said)


def _src(p: Packet) -> str:
    """Source address and what NAT maps with it: the port, or an echo's identifier."""
    if p.l4.kind == "icmp" and p.l4.icmp_type in (0, 8):
        return f"{p.ip.src} id {p.l4.icmp_id}"
    return f"{p.ip.src}:{p.l4.sport}" if p.l4.sport else p.ip.src


def _dst(p: Packet) -> str:
    return f"{p.ip.dst}:{p.l4.dport}" if p.l4.dport else p.ip.dst


def add_routes(hops: list[Hop], netns_of: dict[str, str]) -> None:
    """Ask each namespace the packet entered (and the one it left first) for its route."""
    for i, hop in enumerate(hops):
        netns = netns_of.get(hop.where)
        if netns is None:
            continue  # a switch port: L2, no routing
        outer = hop.packet.outer
        nxt = hops[i + 1] if i + 1 < len(hops) else None
        if nxt is not None and nxt.where == hop.where and nxt.direction == "in":
            continue  # a bridge port on the way in: the bridge device's hop routes it
        if hop.direction == "in":
            hop.route = route_get(netns, outer.dst, outer.src, hop.ifname)
            out = next((h for h in hops[i + 1:] if h.where == hop.where
                        and h.direction == "out"), None)
            if out is not None and out.packet.ip.ttl == hop.packet.ip.ttl:
                # The kernel routes with a TTL decrement: this went through untouched by
                # it (a bridge, or OVS in userspace), its table was not asked.
                hop.route = f"switched, not routed (TTL unchanged); kernel route: {hop.route}"
        elif i == 0:  # the leg's origin: the output route of whoever sent it
            hop.route = route_get(netns, outer.dst)


def add_netfilter(hops: list[Hop], events: list[NftEvent]) -> None:
    """Notable rules (NAT, drop, reject, marks) and drop verdicts, at the first hop of
    their namespace in their leg."""
    first: dict[tuple[str, str], Hop] = {}
    for hop in hops:
        first.setdefault((hop.where, hop.leg), hop)
    for ev in events:
        if ev.table.startswith("kltrace") or ev.kind == "packet":
            continue
        notable = (ev.kind == "rule" and NOTABLE.search(ev.text)) or ev.verdict in (
            "drop", "reject")
        hop = first.get((ev.where, ev.leg))
        if notable and hop is not None and ev.summary() not in hop.netfilter:
            hop.netfilter.append(ev.summary())


def loss(request: list[Hop], reply: list[Hop], dst_host: str, events: list[NftEvent],
         netns_of: dict[str, str], pods: set[str]) -> tuple[bool, str]:
    """(delivered, where it was lost) for the request; a missing reply is named too.
    ``pods``: the pods' namespaces (where a Service's endpoint can answer)."""
    if not request:
        return False, "the probe was never seen leaving its source (no route there?)"
    last = request[-1]
    where = f"hop {len(request)}: {last.where} {last.ifname} ({last.direction})"
    drops = [ev for ev in events if ev.leg == "request" and ev.verdict in ("drop", "reject")
             and not ev.table.startswith("kltrace")]
    if drops:  # a reject is a drop that sends an ICMP error: a reply, but no delivery
        d = drops[-1]
        how = "rejected" if "reject" in d.text.lower() else "dropped"
        return False, f"{how} in {d.where} by {d.summary()}; last seen at {where}"
    error = next((h.packet.l4 for h in reply[:1] if h.packet.l4.kind == "icmp"
                  and h.packet.l4.icmp_type in (3, 11)), None)
    if dst_host:
        delivered = any(h.where == dst_host and h.direction == "in" for h in request)
    else:  # a Service or bare address: an answer from where the request last arrived
        delivered = bool(reply) and (error is None or (
            error.icmp_type == 3 and error.icmp_code == 3 and last.direction == "in"
            and reply[0].where == last.where and last.where in pods))
    if not delivered and error is not None:
        return False, (f"ICMP {ICMP_NAMES.get(error.icmp_type)} code {error.icmp_code} "
                       f"from {reply[0].where}; the request was last seen at {where}")
    if delivered:
        if reply:
            return True, ""
        last = request[-1]
        return True, f"no reply: the request reached {last.where} ({last.ifname}), " \
                     "nothing answered"
    route, netns = last.route, netns_of.get(last.where)
    if netns is not None and last.direction == "in":
        words = route.split()
        if words and words[0] in ("blackhole", "unreachable", "prohibit"):
            return False, f"dropped at {where} by its {words[0]} route: {route}"
        if "RTNETLINK" in route or "unreachable" in route:
            return False, f"dropped at {where}: no route ({route})"
        arp = unresolved_neighbour(netns, last.packet.outer.dst, route)
        if arp:
            return False, f"lost at {where}: {arp}"
    if last.direction == "out":
        return False, f"lost after {where}: sent there, never seen arriving anywhere"
    return False, f"lost at {where}: not seen leaving it (route: {route or 'none'})"
