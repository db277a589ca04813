"""``knetlab policy explain FROM TO PORT``: walk one packet through the live nftables table.

Not a second model of the policies: it reads ``nft -j list table inet knetlab-policy`` from
the source pod's node and from the destination pod's node and interprets the rules exactly
as they are there (verdict-map dispatch, set lookups, concatenations, intervals, the accept
mark, jump/return/drop). The packet is a connection's first packet (``ct state new``), so
the ``established,related`` rule does not apply. Which policy decided is read from the
comment of the rule that allowed it, or of the endpoint chain's final drop.

Only the expressions the agent writes are understood; anything else is reported as such
rather than guessed (someone edited the table by hand).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from knetlab import shell
from knetlab.addons.netpolicy.render import FAMILY, POD_SIDE, TABLE
from knetlab.errors import KnetlabError

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


class UnsupportedRuleError(KnetlabError):
    """The table holds an expression the agent never writes."""


@dataclass
class Packet:
    saddr: str
    daddr: str
    proto: str  # tcp | udp | sctp
    dport: int
    mark: int = 0


@dataclass
class Explanation:
    allowed: bool
    decided_by: list[str] = field(default_factory=list)  # the deciding comments
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)


class LiveTable:
    """One node's table as nft lists it: chains (rules in order), sets and maps."""

    def __init__(self, node: str, listing: dict[str, Any]) -> None:
        self.node = node
        self.comment = ""
        self.pod_side = False  # the node's pods carry the enforcing tables (render_pod)
        self.chains: dict[str, list[dict[str, Any]]] = {}
        self.sets: dict[str, list[Any]] = {}
        for item in listing.get("nftables", []):
            if "table" in item:
                self.comment = item["table"].get("comment", "")
            elif "chain" in item:
                self.chains.setdefault(item["chain"]["name"], [])
            elif "rule" in item:
                self.chains.setdefault(item["rule"]["chain"], []).append(item["rule"])
                if item["rule"].get("comment") == POD_SIDE:
                    self.pod_side = True
            elif "set" in item or "map" in item:
                s = item.get("set") or item.get("map")
                self.sets[s["name"]] = s.get("elem", [])

    @classmethod
    def read(cls, node: str, netns: str) -> LiveTable:
        res = shell.run(["nft", "-j", "list", "table", FAMILY, TABLE], netns=netns, check=False)
        if not res.ok:
            raise KnetlabError(f"node {node} has no table {FAMILY} {TABLE} (is its policy "
                               f"agent running?): {res.stderr.strip()}")
        return cls(node, json.loads(res.stdout))


# -- values ------------------------------------------------------------------------------------

def _value(expr: Any, pkt: Packet) -> Any:
    """The packet's value of a left-hand expression (an int, an address, or a tuple)."""
    if isinstance(expr, dict):
        if "payload" in expr:
            field_ = expr["payload"]["field"]
            if field_ in ("saddr", "daddr"):
                return int(ipaddress.ip_address(getattr(pkt, field_)))
            if field_ == "dport":
                return pkt.dport
        if "meta" in expr:
            key = expr["meta"]["key"]
            if key == "l4proto":
                return PROTO_NUMBERS[pkt.proto]
            if key == "mark":
                return pkt.mark
        if expr.get("rt", {}).get("key") == "nexthop":
            # written only on macvlan pods (render_pod's via_node): between pods there,
            # all on one segment, the next hop is the peer itself
            return int(ipaddress.ip_address(pkt.daddr))
        if "concat" in expr:
            return tuple(_value(e, pkt) for e in expr["concat"])
        if "&" in expr:
            a, b = expr["&"]
            return _value(a, pkt) & _literal(b)
        if "|" in expr:
            a, b = expr["|"]
            return _value(a, pkt) | _literal(b)
    raise UnsupportedRuleError(f"expression {json.dumps(expr)} is not one the policy agent writes")


def _literal(v: Any) -> Any:
    """A right-hand constant: address, protocol name, number."""
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        if v in PROTO_NUMBERS:
            return PROTO_NUMBERS[v]
        if v.isdigit():
            return int(v)
        try:
            return int(ipaddress.ip_address(v))
        except ValueError:
            pass
    raise UnsupportedRuleError(f"constant {json.dumps(v)} is not one the policy agent writes")


def _element_matches(elem: Any, value: Any) -> bool:
    """Does one set element (as nft -j prints it) contain ``value``?"""
    if isinstance(elem, dict) and "elem" in elem:
        return _element_matches(elem["elem"]["val"], value)
    if isinstance(elem, dict) and "concat" in elem:
        parts = elem["concat"]
        return (isinstance(value, tuple) and len(parts) == len(value)
                and all(_element_matches(p, v) for p, v in zip(parts, value, strict=True)))
    if isinstance(elem, dict) and "prefix" in elem:
        net = ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
        return int(net.network_address) <= value <= int(net.broadcast_address)
    if isinstance(elem, dict) and "range" in elem:
        lo, hi = (_literal(x) for x in elem["range"])
        return lo <= value <= hi
    return _literal(elem) == value


def _in_set(table: LiveTable, name: str, value: Any) -> bool:
    return any(_element_matches(e, value) for e in table.sets.get(name, []))


def _map_lookup(table: LiveTable, name: str, value: Any) -> dict[str, Any] | None:
    for key, verdict in table.sets.get(name, []):
        if _element_matches(key, value):
            return verdict
    return None


# -- rules -------------------------------------------------------------------------------------

def _match(table: LiveTable, m: dict[str, Any], pkt: Packet) -> bool:
    left, right, op = m["left"], m["right"], m["op"]
    if isinstance(left, dict) and "ct" in left:
        return False  # the first packet of a connection is ct state new
    if isinstance(left, dict) and left.get("meta", {}).get("key") in ("iif", "oif"):
        return op == "!="  # a packet between pods never uses the loopback device
    value = _value(left, pkt)
    if isinstance(right, str) and right.startswith("@"):
        found = _in_set(table, right[1:], value)
    else:
        found = _element_matches(right, value)
    return found if op in ("==", "in") else not found


class _Walker:
    def __init__(self, table: LiveTable, pkt: Packet, out: list[str]) -> None:
        self.table, self.pkt, self.out = table, pkt, out
        self.last_comment = ""

    def chain(self, name: str, depth: int) -> str | None:
        """Run chain ``name``; return a terminal verdict (accept/drop) or None (returned
        or fell off the end)."""
        if name not in self.table.chains:
            raise UnsupportedRuleError(f"chain {name} is not in the table")
        for rule in self.table.chains[name]:
            verdict = self.rule(name, rule, depth)
            if verdict == "return":
                return None
            if verdict in ("accept", "drop"):
                return verdict
        return None

    def rule(self, chain: str, rule: dict[str, Any], depth: int) -> str | None:
        comment = rule.get("comment", "")
        for expr in rule["expr"]:
            if "match" in expr:
                if not _match(self.table, expr["match"], self.pkt):
                    return None
            elif "mangle" in expr:
                key = expr["mangle"]["key"]
                if key != {"meta": {"key": "mark"}}:
                    raise UnsupportedRuleError(f"mangle of {json.dumps(key)}")
                self.pkt.mark = _value(expr["mangle"]["value"], self.pkt)
            elif "vmap" in expr:
                value = _value(expr["vmap"]["key"], self.pkt)
                verdict = _map_lookup(self.table, expr["vmap"]["data"].lstrip("@"), value)
                if verdict is None:
                    return None
                return self.verdict(chain, verdict, comment, depth,
                                    via=f"{expr['vmap']['data']}")
            elif "counter" in expr:
                continue
            else:
                return self.verdict(chain, expr, comment, depth)
        return None

    def verdict(self, chain: str, v: dict[str, Any], comment: str, depth: int,
                via: str = "") -> str | None:
        pad = "  " * depth
        if "jump" in v or "goto" in v:
            target = (v.get("jump") or v.get("goto"))["target"]
            self.out.append(f"{pad}{chain}: {'vmap ' + via + ' -> ' if via else ''}"
                            f"jump {target}")
            res = self.chain(target, depth + 1)
            return res if "jump" in v else (res or "return")
        if "return" in v:
            if comment:
                self.out.append(f"{pad}{chain}: {comment}")
                self.last_comment = comment
            return "return"
        if "accept" in v or "drop" in v:
            word = "accept" if "accept" in v else "drop"
            self.out.append(f"{pad}{chain}: {word}" + (f" ({comment})" if comment else ""))
            self.last_comment = comment
            return word
        raise UnsupportedRuleError(f"verdict {json.dumps(v)}")


def walk(table: LiveTable, pkt: Packet, base: str = "forward"
         ) -> tuple[bool, list[str], list[str]]:
    """The verdict of ``table``'s ``base`` chain for ``pkt``: (allowed, trace, deciders)."""
    out: list[str] = []
    walker = _Walker(table, pkt, out)
    deciders: list[str] = []
    verdict = walker.chain(base, 0)
    for line in out:
        body = line.split(": ", 1)[1]
        if body.startswith("drop ("):
            deciders.append(body[len("drop ("):-1])
        elif " allowed by " in body:
            deciders.append(body)
    return verdict != "drop", out, deciders


# -- the command -------------------------------------------------------------------------------

@dataclass
class Party:
    """FROM or TO: a pod (namespace, name, node) or a bare address."""

    ip: str
    label: str
    node: str | None
    pod: dict[str, Any] | None = None


def resolve(pods: list[dict[str, Any]], text: str) -> Party:
    """``ns/name``, ``name`` (namespace default), or an IPv4 address."""
    try:
        ip = str(ipaddress.ip_address(text))
        for p in pods:
            if p.get("status", {}).get("podIP") == ip and not p["spec"].get("hostNetwork"):
                meta = p["metadata"]
                return Party(ip, f"{meta['namespace']}/{meta['name']} ({ip})",
                             p["spec"].get("nodeName"), p)
        return Party(ip, ip, None)
    except ValueError:
        pass
    ns, _, name = text.rpartition("/")
    ns = ns or "default"
    for p in pods:
        meta = p["metadata"]
        if meta["name"] == name and meta.get("namespace", "default") == ns:
            ip = p.get("status", {}).get("podIP")
            if not ip:
                raise KnetlabError(f"pod {ns}/{name} has no IP yet")
            node = None if p["spec"].get("hostNetwork") else p["spec"].get("nodeName")
            return Party(ip, f"{ns}/{name} ({ip})", node, p)
    raise KnetlabError(f"no pod {ns}/{name} (give ns/name, a name in default, or an IP)")


def explain(pods: list[dict[str, Any]], netns_of: Callable[[str], str], src: str, dst: str,
            port: int, proto: str = "tcp",
            pod_netns_of: Callable[[dict[str, Any]], str] | None = None) -> Explanation:
    """Allowed or denied, and by which policy, for a new ``proto`` connection src -> dst:port,
    from the live tables the packet meets: the forward chain of each node it is forwarded
    by or, on nodes that enforce in the pods (OVS userspace), the source pod's ``output``
    and the destination pod's ``input`` chains (``pod_netns_of`` finds their namespaces)."""
    proto = proto.lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise KnetlabError(f"protocol {proto!r}: use tcp, udp or sctp")
    a, b = resolve(pods, src), resolve(pods, dst)
    ex = Explanation(True, lines=[f"{a.label} -> {b.label}, {proto} port {port}"])
    nodes = [n for n in dict.fromkeys([a.node, b.node]) if n]
    if not nodes:
        ex.lines.append("neither end is a pod of this lab: no policy agent sees it")
    for node in nodes:
        table = LiveTable.read(node, netns_of(node))
        hops: list[tuple[str, LiveTable | None, str]] = [
            (f"node {node}, table {FAMILY} {TABLE}, chain forward:", table, "forward")]
        if table.pod_side:
            hops = [(f"node {node}: {POD_SIDE}; pod {party.label}, chain {base}:",
                     _pod_table(node, party, pod_netns_of), base)
                    for party, base in ((a, "output"), (b, "input"))
                    if party.node == node and party.pod is not None]
        for title, t, base in hops:
            ex.lines.append(title)
            if t is None:
                ex.lines.append("  no table: no policy selects this pod")
                continue
            allowed, trace, deciders = walk(t, Packet(a.ip, b.ip, proto, port), base)
            ex.lines += ["  " + line for line in trace] or [
                "  no policy selects this packet's pods in its direction here: accepted"]
            ex.decided_by += deciders
            if not allowed:
                ex.allowed = False
                break
        if not ex.allowed:
            break
    verdict = "ALLOWED" if ex.allowed else "DENIED"
    if not ex.decided_by:
        why = "no policy selects either pod in that direction"
    else:  # denied: the drop that decided; allowed: every allowing policy on the way
        why = ex.decided_by[-1] if not ex.allowed else "; ".join(ex.decided_by)
    ex.lines.append(f"{verdict}: {why}")
    return ex


def _pod_table(node: str, party: Party, pod_netns_of: Callable[[dict[str, Any]], str] | None
               ) -> LiveTable | None:
    if pod_netns_of is None or party.pod is None:
        raise KnetlabError(f"node {node} enforces policy in its pods' namespaces; this "
                           "caller cannot enter them")
    try:
        return LiveTable.read(f"{node}/{party.label}", pod_netns_of(party.pod))
    except KnetlabError:
        return None  # not selected by any policy: the agent put no table there
