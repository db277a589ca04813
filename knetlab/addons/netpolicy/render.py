"""The nftables text of one node's policy state: table ``inet knetlab-policy``, Felix's layout.

Design notes (Calico Felix ``felix/rules/``, translated to nftables):

- One base chain ``forward`` (hook forward, priority filter). Replies and related packets
  of allowed connections are accepted first (``ct state established,related``), so only a
  connection's first packet walks the policy chains.
- Dispatch by the local pod's address through two verdict maps: ``from-workload``
  (``ip saddr``) jumps to the pod's ``fw-<ns>/<pod>`` chain (its egress), ``to-workload``
  (``ip daddr``) to its ``tw-<ns>/<pod>`` chain (its ingress). Felix keys these on the
  host-side interface; here the address is the key because on bridge data planes
  (host-gw, flannel) the forward hook sees ``cni0``, not the pod's veth (br_netfilter
  hands bridged packets to it with the bridge as device). A map lookup costs the same for
  10 or 10,000 pods.
- An endpoint chain clears the accept mark, jumps to each policy chain that selects the
  pod (``pi-<ns>/<policy>`` ingress, ``po-<ns>/<policy>`` egress) and returns as soon as
  one set the mark; after the last, ``drop``. So a packet leaving pod A for pod B on the
  same node is checked against A's egress and then B's ingress, as Kubernetes requires.
- A policy chain has one rule per (rule, peer, port kind); peers and ports are sets
  (``ipv4_addr``, ``inet_proto . inet_service`` with intervals for endPort, and
  ``ipv4_addr . inet_proto . inet_service`` for named ports), so a rule's cost does not
  grow with the number of pods it names.
- Every rule carries a comment naming its policy, rule and peer; ``knetlab policy
  explain`` reads them back from the live table.

- Where pod traffic never crosses the node's IP hooks (OVS's userspace datapath), the
  same chains go into a table in each selected pod's namespace (``render_pod``): egress
  from the ``output`` hook, ingress from ``input``, the pod's own conntrack.

The whole table is replaced in one ``nft -f`` transaction (add, delete, define), as
kube-proxy's nftables mode does: no half-applied state is ever visible to packets.
"""

from __future__ import annotations

from knetlab.addons.netpolicy.model import Desired, Endpoint, NftSet, PolicyChain, Rule

TABLE = "knetlab-policy"
FAMILY = "inet"
#: the accept bit a policy chain sets (Calico's "accept" mark bit, 0x10000)
ACCEPT_MARK = 0x10000
_CLEAR = f"meta mark set meta mark & {0xFFFFFFFF ^ ACCEPT_MARK:#010x}"
_MARKED = f"meta mark & {ACCEPT_MARK:#010x} == {ACCEPT_MARK:#010x}"
_ALLOW = f"meta mark set meta mark | {ACCEPT_MARK:#010x} return"


#: nft keeps at most 128 bytes of a comment
COMMENT_MAX = 127


def _q(text: str) -> str:
    text = text.replace('"', "'")
    if len(text.encode()) > COMMENT_MAX:
        text = text.encode()[:COMMENT_MAX - 3].decode(errors="ignore") + "..."
    return '"' + text + '"'


def _set(s: NftSet) -> list[str]:
    out = [f"\tset {s.name} {{", f"\t\ttype {s.type}"]
    if s.interval:
        out.append("\t\tflags interval")
        if " . " not in s.type:  # overlapping except blocks merge (nft cannot for concats)
            out.append("\t\tauto-merge")
    if s.elements:
        out.append("\t\telements = { " + ", ".join(s.elements) + " }")
    out.append("\t}")
    return out


def _rule(chain: PolicyChain, r: Rule) -> str:
    peer = "ip saddr" if chain.direction == "ingress" else "ip daddr"
    parts = []
    if r.peer_set:
        parts.append(f"{peer} @{r.peer_set}")
    if r.except_set:
        parts.append(f"{peer} != @{r.except_set}")
    if r.ports_set:
        parts.append(f"meta l4proto . th dport @{r.ports_set}")
    if r.named_set:
        parts.append(f"ip daddr . meta l4proto . th dport @{r.named_set}")
    parts.append(f"{_ALLOW} comment {_q(r.comment)}")
    return "\t\t" + " ".join(parts)


def _policy_chain(chain: PolicyChain) -> list[str]:
    return [f"\tchain {chain.name} {{", *(_rule(chain, r) for r in chain.rules), "\t}"]


def _endpoint_chain(name: str, pod: str, direction: str, policies: list[str]) -> list[str]:
    out = [f"\tchain {name} {{", f"\t\t{_CLEAR}"]
    for p in policies:
        policy = p.split("-", 1)[1]
        out.append(f"\t\tjump {p}")
        allowed = f"{direction} of {pod} allowed by {policy}"
        out.append(f"\t\t{_MARKED} return comment {_q(allowed)}")
    names = ", ".join(p.split("-", 1)[1] for p in policies)
    if len(policies) > 3:
        names = f"the {len(policies)} policies selecting it"
    denied = f"{direction} of {pod} denied: no rule of {names} allows it"
    out.append(f"\t\tdrop comment {_q(denied)}")
    out.append("\t}")
    return out


def _map(name: str, elements: list[str]) -> list[str]:
    out = [f"\tmap {name} {{", "\t\ttype ipv4_addr : verdict"]
    if elements:
        out.append("\t\telements = { " + ", ".join(elements) + " }")
    out.append("\t}")
    return out


#: the node table's mark when its pods' traffic bypasses the kernel's IP hooks (OVS
#: userspace): the rules are enforced by a table in each selected pod's namespace instead
POD_SIDE = "enforced in the pods' namespaces"
_ESTABLISHED = ("\t\tct state established,related accept comment "
                "\"replies of allowed connections\"")


def _body(desired: Desired, comment: str) -> list[str]:
    """The table up to its base chains: maps, sets, policy and endpoint chains."""
    eps: list[Endpoint] = desired.endpoints
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}",
             f"table {FAMILY} {TABLE} {{", f"\tcomment {_q(comment)}"]
    lines += _map("from-workload", [f"{e.pod.ip} : jump {e.from_chain}" for e in eps
                                    if e.egress])
    lines += _map("to-workload", [f"{e.pod.ip} : jump {e.to_chain}" for e in eps if e.ingress])
    for s in desired.sets:
        lines += _set(s)
    for c in desired.chains:
        lines += _policy_chain(c)
    for e in eps:
        if e.egress:
            lines += _endpoint_chain(e.from_chain, e.pod.key, "egress", e.egress)
        if e.ingress:
            lines += _endpoint_chain(e.to_chain, e.pod.key, "ingress", e.ingress)
    return lines


def render(desired: Desired, pod_side: bool = False) -> str:
    """The ``nft -f`` script that makes the node's table exactly ``desired``. With
    ``pod_side`` the node's pods bypass its IP hooks: the table still shows the node's whole
    state, and a rule comment (nft -j of 1.0.6 drops table comments) tells ``explain`` to
    read the pods' own tables (``render_pod``)."""
    comment = f"knetlab NetworkPolicy agent of {desired.node}"
    lines = _body(desired, comment)
    lines += [
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        *([f"\t\tcounter comment {_q(POD_SIDE)}"] if pod_side else []),
        _ESTABLISHED,
        "\t\tip saddr vmap @from-workload",
        "\t\tip daddr vmap @to-workload",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def for_endpoint(desired: Desired, endpoint: Endpoint) -> Desired:
    """The part of ``desired`` one endpoint needs: its policy chains and their sets."""
    names = set(endpoint.ingress) | set(endpoint.egress)
    chains = [c for c in desired.chains if c.name in names]
    used = {n for c in chains for r in c.rules
            for n in (r.peer_set, r.except_set, r.ports_set, r.named_set) if n}
    return Desired(desired.node, [endpoint], chains,
                   [s for s in desired.sets if s.name in used])


def render_pod(desired: Desired, endpoint: Endpoint, node_addresses: list[str],
               via_node: bool = False) -> str:
    """The same chains as the node's table, inside the pod's own namespace, for data planes
    whose pod traffic never crosses the node's IP hooks (OVS userspace datapath, macvlan):
    egress from the ``output`` hook, ingress from the ``input`` hook, with the pod's
    conntrack. Traffic between the pod and its own node (``node_addresses``: probes, the
    gateway) passes, as on the other planes.

    ``via_node``: what the pod routes through its node (next hop one of the node's
    addresses: a Service's ClusterIP, anything off the segment) is left to the node's
    table, whose forward hook sees it after kube-proxy's DNAT, with the real destination
    pod; here the pod would only see the ClusterIP. Only where every packet sent to the
    node's gateway does cross its IP stack (macvlan's shim); not on OVS, whose pods route
    other nodes' pods via a gateway that OVS itself answers for."""
    part = for_endpoint(desired, endpoint)
    lines = _body(part, f"knetlab NetworkPolicy agent of {desired.node}, pod "
                        f"{endpoint.pod.key}")
    lines += ["\tset node {", "\t\ttype ipv4_addr"]
    if node_addresses:
        lines.append("\t\telements = { " + ", ".join(sorted(node_addresses)) + " }")
    lines.append("\t}")
    through = ("\n\t\trt ip nexthop @node accept comment "
               "\"routed through the node: its forward hook decides\"" if via_node else "")
    for hook, peer, vmap in (("output", "oif lo accept\n\t\tip daddr @node accept" + through,
                              "ip saddr vmap @from-workload"),
                             ("input", "iif lo accept\n\t\tip saddr @node accept",
                              "ip daddr vmap @to-workload")):
        lines += [f"\tchain {hook} {{",
                  f"\t\ttype filter hook {hook} priority filter; policy accept;",
                  _ESTABLISHED, f"\t\t{peer}", f"\t\t{vmap}", "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete() -> str:
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
