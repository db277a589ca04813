"""What NetworkPolicy asks of one node, computed from API objects: endpoints, policy rules, sets.

A pure function of (pods, namespaces, policies, node name) -> ``Desired``; no kernel, no I/O,
so it is unit-tested without root and the renderer (``render.py``) only turns it into text.

Semantics (networking.k8s.io/v1, as Kubernetes documents them and Cyclonus tests them):
- A policy selects the pods of its namespace matching ``podSelector`` ({} = all of them).
  A pod selected by no policy of a direction is untouched in that direction; a selected pod
  accepts in that direction only what some rule of some selecting policy allows (policies
  add up; there is no deny rule).
- ``policyTypes`` defaults to Ingress, plus Egress when ``egress`` is present.
- A rule allows when any peer matches (no peers = every source/destination) and any port
  matches (no ports = every port and protocol).
- A peer is ``podSelector`` (pods of the policy's namespace), ``namespaceSelector`` (every
  pod of the matching namespaces), both in one peer (pods matching in those namespaces:
  AND), or ``ipBlock`` (cidr minus ``except``).
- A named port is looked up in the containers' ports: for ingress on the selected (target)
  pod, for egress on the destination pod, so each (pod IP, protocol, number) is one element.
- hostNetwork pods are never endpoints and never match a pod selector (their address is the
  node's); pods without an IP or that have finished are not peers.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    node: str
    labels: dict[str, str]
    #: (port name, protocol) -> container port number
    named_ports: dict[tuple[str, str], int]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class NftSet:
    """One nftables set: ``type`` is nft's type expression, elements are nft literals."""

    name: str
    type: str
    interval: bool
    elements: list[str]


@dataclass
class Rule:
    """One nft rule of a policy chain: every present match must hold."""

    comment: str
    peer_set: str | None = None      # @set of addresses on the peer side (saddr or daddr)
    except_set: str | None = None    # ... and not in this one (ipBlock.except)
    ports_set: str | None = None     # @set of l4proto . dport
    named_set: str | None = None     # @set of daddr . l4proto . dport (named ports)


@dataclass
class PolicyChain:
    """``pi-<ns>/<name>`` (ingress) or ``po-<ns>/<name>`` (egress)."""

    name: str
    policy: str   # ns/name
    direction: str  # ingress | egress
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Endpoint:
    """A local pod selected by at least one policy: its to- and from-workload chains."""

    pod: PodInfo
    ingress: list[str] = field(default_factory=list)  # policy chain names, in order
    egress: list[str] = field(default_factory=list)

    @property
    def to_chain(self) -> str:
        return f"tw-{self.pod.key}"

    @property
    def from_chain(self) -> str:
        return f"fw-{self.pod.key}"


@dataclass
class Desired:
    node: str
    endpoints: list[Endpoint]
    chains: list[PolicyChain]
    sets: list[NftSet]
    #: policies that could not be read (each enforced as allowing nothing)
    errors: list[str] = field(default_factory=list)

    def policy_names(self) -> list[str]:
        return sorted({c.policy for c in self.chains})


# -- selectors ------------------------------------------------------------------------------

def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions ANDed; {} matches all."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# -- API objects -> model ---------------------------------------------------------------------

def pod_info(pod: dict[str, Any]) -> PodInfo | None:
    """A pod that can be a peer or an endpoint, or None (no IP, hostNetwork, finished)."""
    spec, status, meta = pod.get("spec", {}), pod.get("status", {}), pod["metadata"]
    ip = status.get("podIP")
    if not ip or spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    if meta.get("deletionTimestamp") and status.get("phase") != "Running":
        return None
    try:
        if ipaddress.ip_address(ip).version != 4:
            return None
    except ValueError:
        return None
    named: dict[tuple[str, str], int] = {}
    for c in spec.get("containers", []) or []:
        for p in c.get("ports", []) or []:
            if p.get("name"):
                named[(p["name"], p.get("protocol", "TCP"))] = int(p["containerPort"])
    return PodInfo(meta.get("namespace", "default"), meta["name"], ip,
                   spec.get("nodeName", ""), dict(meta.get("labels") or {}), named)


def is_named(port: Any) -> bool:
    """A port given by name (an IntOrString holding a string that is not a number)."""
    return isinstance(port, str) and not port.isdigit()


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec", {})
    types = spec.get("policyTypes")
    if types:
        return list(types)
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class _Builder:
    def __init__(self, pods: list[PodInfo], ns_labels: dict[str, dict[str, str]]) -> None:
        self.pods, self.ns_labels = pods, ns_labels
        self.by_ns: dict[str, list[PodInfo]] = {}  # selectors look at one namespace's pods
        for p in pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
        self.sets: dict[str, NftSet] = {}

    def add_set(self, name: str, type_: str, interval: bool, elements: list[str]) -> str:
        self.sets[name] = NftSet(name, type_, interval, sorted(set(elements)))
        return name

    def peer_pods(self, peer: dict[str, Any], policy_ns: str) -> list[PodInfo]:
        ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
        if ns_sel is not None:
            namespaces = [n for n in self.by_ns if selector_matches(ns_sel, self.labels_of(n))]
        else:
            namespaces = [policy_ns]
        return [p for n in namespaces for p in self.by_ns.get(n, [])
                if pod_sel is None or selector_matches(pod_sel, p.labels)]

    def labels_of(self, namespace: str) -> dict[str, str]:
        return self.ns_labels.get(namespace, {"kubernetes.io/metadata.name": namespace})

    def rules(self, chain: PolicyChain, k8s_rules: list[dict[str, Any]], policy_ns: str,
              selected: list[PodInfo]) -> None:
        peer_key = "from" if chain.direction == "ingress" else "to"
        for i, r in enumerate(k8s_rules):
            base = f"{chain.name}-r{i}"
            peers: list[tuple[str | None, str | None]] = []
            for j, peer in enumerate(r.get(peer_key) or []):
                if "ipBlock" in peer:
                    block = peer["ipBlock"]
                    cidr = str(ipaddress.ip_network(block["cidr"], strict=False))
                    excepts = [str(ipaddress.ip_network(e, strict=False))
                               for e in block.get("except") or []]
                    if ipaddress.ip_network(cidr).version != 4:
                        continue  # an IPv6 block never matches this IPv4 lab
                    inc = self.add_set(f"{base}-p{j}", "ipv4_addr", True, [cidr])
                    exc = self.add_set(f"{base}-p{j}-except", "ipv4_addr", True,
                                       excepts) if excepts else None
                    peers.append((inc, exc))
                else:
                    ips = [p.ip for p in self.peer_pods(peer, policy_ns)]
                    peers.append((self.add_set(f"{base}-p{j}", "ipv4_addr", False, ips), None))
            if r.get(peer_key):
                if not peers:
                    continue  # only IPv6 blocks: this rule allows nothing here
            else:
                peers = [(None, None)]
            numbered, named = self._ports(r.get("ports") or [], chain.direction, selected)
            port_matches: list[tuple[str | None, str | None]] = []
            if not r.get("ports"):
                port_matches = [(None, None)]
            else:
                if numbered:
                    port_matches.append((self.add_set(f"{base}-ports", "inet_proto . inet_service",
                                                      True, numbered), None))
                if any(is_named(p.get("port")) for p in r["ports"]):
                    port_matches.append((None, self.add_set(
                        f"{base}-named", "ipv4_addr . inet_proto . inet_service", False, named)))
            for j, (inc, exc) in enumerate(peers):
                for ports_set, named_set in port_matches:
                    chain.rules.append(Rule(
                        f"{chain.policy} {chain.direction} rule {i} peer {j}",
                        inc, exc, ports_set, named_set))

    def _ports(self, ports: list[dict[str, Any]], direction: str, selected: list[PodInfo]
               ) -> tuple[list[str], list[str]]:
        numbered: list[str] = []
        named: list[str] = []
        # ingress: the name is the target's (selected pods); egress: the destination's (any pod)
        owners = selected if direction == "ingress" else self.pods
        for p in ports:
            proto = p.get("protocol", "TCP")
            port = p.get("port")
            if port is None:
                numbered.append(f"{proto.lower()} . 0-65535")
            elif is_named(port):
                for pod in owners:
                    num = pod.named_ports.get((port, proto))
                    if num is not None:
                        named.append(f"{pod.ip} . {proto.lower()} . {num}")
            else:
                end = p.get("endPort")
                numbered.append(f"{proto.lower()} . {int(port)}"
                                + (f"-{int(end)}" if end and int(end) > int(port) else ""))
        return numbered, named


def compute(node: str, pods: list[dict[str, Any]], namespaces: list[dict[str, Any]],
            policies: list[dict[str, Any]]) -> Desired:
    """The whole desired policy state of ``node``."""
    if not policies:  # the common case, on every pod event of a big lab: nothing to do
        return Desired(node, [], [], [])
    infos = sorted((i for i in map(pod_info, pods) if i is not None), key=lambda p: p.key)
    ns_labels = {}
    for ns in namespaces:
        name = ns["metadata"]["name"]
        ns_labels[name] = {"kubernetes.io/metadata.name": name,
                           **(ns["metadata"].get("labels") or {})}
    b = _Builder(infos, ns_labels)
    local = [p for p in infos if p.node == node]
    endpoints = {p.key: Endpoint(p) for p in local}
    chains: list[PolicyChain] = []
    errors: list[str] = []
    for pol in sorted(policies, key=lambda o: (o["metadata"].get("namespace", "default"),
                                               o["metadata"]["name"])):
        ns = pol["metadata"].get("namespace", "default")
        key = f"{ns}/{pol['metadata']['name']}"
        spec = pol.get("spec", {})
        selected = [p for p in b.by_ns.get(ns, [])
                    if selector_matches(spec.get("podSelector", {}), p.labels)]
        local_selected = [p for p in selected if p.node == node]
        if not local_selected:
            continue  # nothing of it to enforce here: keep the table small
        for ptype, prefix, direction in (("Ingress", "pi", "ingress"),
                                         ("Egress", "po", "egress")):
            if ptype not in policy_types(pol):
                continue
            chain = PolicyChain(f"{prefix}-{key}", key, direction)
            try:
                b.rules(chain, spec.get(direction) or [], ns, selected)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # fail closed: a policy we cannot read allows nothing (it still selects)
                chain.rules = []
                errors.append(f"{key} {direction}: {exc}")
            chains.append(chain)
            for p in local_selected:
                getattr(endpoints[p.key], direction).append(chain.name)
    used = [e for e in endpoints.values() if e.ingress or e.egress]
    return Desired(node, used, chains, list(b.sets.values()), errors)


def fingerprint(desired: Desired) -> str:
    """A short hash of the desired state (the agent re-applies only when it changes)."""
    return short_hash(repr((desired.endpoints, desired.chains, desired.sets)))
