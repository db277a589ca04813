"""kube-proxy's iptables mode: its chain layout, names and rules, one restore per sync.

The layout is kube-proxy's (pkg/proxy/iptables/proxier.go, 1.28+), so what a learner reads
in ``iptables-save`` here is what a real node shows::

    nat   PREROUTING/OUTPUT -> KUBE-SERVICES
            -d CLUSTER_IP --dport P              -> KUBE-SVC-<h>  (KUBE-SVL-<h>: ITP Local)
            -d EXTERNAL_IP/LB_IP --dport P       -> KUBE-EXT-<h>
            last: -m addrtype --dst-type LOCAL   -> KUBE-NODEPORTS  --dport NP -> KUBE-EXT-<h>
          KUBE-SVC-<h>   ! -s CLUSTER_CIDR -> KUBE-MARK-MASQ; [recent --rcheck per endpoint];
                         statistic random 1/n, 1/(n-1), ... -> KUBE-SEP-<h'>
          KUBE-EXT-<h>   -> KUBE-MARK-MASQ, KUBE-SVC-<h> (ETP Local: pods and the node itself
                         -> KUBE-SVC, the rest -> KUBE-SVL-<h>, no SNAT)
          KUBE-SEP-<h'>  -s ENDPOINT -> KUBE-MARK-MASQ (hairpin); [recent --set]; DNAT
          POSTROUTING -> KUBE-POSTROUTING: MASQUERADE what KUBE-MARK-MASQ marked (0x4000)
    filter KUBE-SERVICES (OUTPUT, FORWARD; new connections): REJECT a ClusterIP without
          endpoints, DROP one whose ITP Local finds none on this node;
          KUBE-EXTERNAL-SERVICES (INPUT, FORWARD): the same for NodePorts and external
          addresses (DROP for ETP Local without a local endpoint); KUBE-FORWARD accepts
          marked and established traffic.

Chain names are kube-proxy's hashes: sha256 of ServicePortName + protocol (+ endpoint for
KUBE-SEP), base32, first 16 characters. A sync rewrites, in one ``iptables-restore
--noflush``, the top-level chains always and the per-Service chains only of the Services
that changed (a partial sync, as kube-proxy does since 1.28); a full sync (the first, after
a failure, and periodically) rewrites every chain and deletes stale ``KUBE-`` chains it
finds. The nat table comes first in the input: iptables commits table by table, so a
failing nat table leaves the whole previous ruleset; a failing filter table (after nat
committed) is reported and repaired by the full sync that follows.

Two backends write the same rules: ``legacy`` (x_tables, the default: 10k Services load in
seconds) and ``nft`` (iptables-nft, minutes at 10k here); docs/services.md has the numbers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field

from knetlab import shell
from knetlab.addons.kubeproxy.model import Endpoint, ProxyState, ServicePort, usable
from knetlab.addons.kubeproxy.proxier import Proxier, register

MASQ_MARK = "0x4000"
#: the chains a sync owns outright (rewritten whole every sync), per table
NAT_TOP = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
FILTER_TOP = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD")
#: prefixes of the per-Service chains (only these are ever deleted)
SERVICE_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")

#: (table, base chain, rule) jumps from the kernel's chains into kube-proxy's
JUMPS = (
    ("nat", "PREROUTING", ["-m", "comment", "--comment", "kubernetes service portals",
                           "-j", "KUBE-SERVICES"]),
    ("nat", "OUTPUT", ["-m", "comment", "--comment", "kubernetes service portals",
                       "-j", "KUBE-SERVICES"]),
    ("nat", "POSTROUTING", ["-m", "comment", "--comment", "kubernetes postrouting rules",
                            "-j", "KUBE-POSTROUTING"]),
    ("filter", "INPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                         "kubernetes externally-visible service portals",
                         "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment",
                           "--comment", "kubernetes externally-visible service portals",
                           "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment",
                           "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("filter", "OUTPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment",
                          "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("filter", "FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules",
                           "-j", "KUBE-FORWARD"]),
)


# -- names --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)  # names are recomputed every sync, for every Service
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(name + protocol))[:16]."""
    digest = hashlib.sha256((service_port_name + protocol.lower()).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def svc_chain(sp: ServicePort) -> str:
    return "KUBE-SVC-" + port_proto_hash(sp.key, sp.protocol)


def svl_chain(sp: ServicePort) -> str:
    return "KUBE-SVL-" + port_proto_hash(sp.key, sp.protocol)


def ext_chain(sp: ServicePort) -> str:
    return "KUBE-EXT-" + port_proto_hash(sp.key, sp.protocol)


def sep_chain(sp: ServicePort, ep: Endpoint) -> str:
    return _sep_hash(sp.key, sp.protocol.lower(), ep.address)


@functools.lru_cache(maxsize=65536)
def _sep_hash(service_port_name: str, protocol: str, endpoint: str) -> str:
    """kube-proxy's servicePortEndpointChainName."""
    digest = hashlib.sha256((service_port_name + protocol + endpoint).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


def _q(comment: str) -> str:
    """A comment as iptables-restore reads it (double quotes, \\" inside)."""
    return '"' + comment.replace('"', '\\"') + '"'


# -- rendering ----------------------------------------------------------------------------

@dataclass
class ServiceRules:
    """What one ServicePort contributes: its own chains (nat) and its lines in the shared
    top-level chains of both tables."""

    chains: dict[str, list[str]] = field(default_factory=dict)   # nat chain -> its rules
    nat_services: list[str] = field(default_factory=list)       # KUBE-SERVICES (nat)
    nat_nodeports: list[str] = field(default_factory=list)      # KUBE-NODEPORTS (nat)
    filter_services: list[str] = field(default_factory=list)    # KUBE-SERVICES (filter)
    filter_external: list[str] = field(default_factory=list)    # KUBE-EXTERNAL-SERVICES


def render_service(sp: ServicePort, state: ProxyState) -> ServiceRules:
    """kube-proxy's rules for one ServicePort on ``state.node``."""
    out = ServiceRules()
    node, name, proto = state.node, sp.key, sp.protocol.lower()
    match = f"-m {proto} -p {proto}"
    all_eps = usable(sp.endpoints)
    local_eps = sp.local_endpoints(node)
    svc, svl, ext = svc_chain(sp), svl_chain(sp), ext_chain(sp)
    uses_svc = bool(all_eps) and (not sp.internal_local
                                  or (sp.has_external and not sp.external_local))
    uses_svl = bool(local_eps) and (sp.internal_local
                                    or (sp.has_external and sp.external_local))
    internal_chain = svl if sp.internal_local else svc
    internal_eps = sp.cluster_endpoints(node)
    external_chain = svl if sp.external_local else svc
    external_eps = sp.external_endpoints(node)
    uses_ext = sp.has_external and bool(external_eps)
    dest = f"-d {sp.cluster_ip}/32 --dport {sp.port}"

    # -- the ClusterIP
    if internal_eps:
        out.nat_services.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' cluster IP')}"
                                f" {match} {dest} -j {internal_chain}")
    elif all_eps:  # ITP Local and nothing here: dropped (external traffic may still work)
        out.filter_services.append(
            f"-A KUBE-SERVICES -m comment --comment {_q(name + ' has no local endpoints')}"
            f" {match} {dest} -j DROP")
    else:
        out.filter_services.append(
            f"-A KUBE-SERVICES -m comment --comment {_q(name + ' has no endpoints')}"
            f" {match} {dest} -j REJECT")

    # -- external destinations: external IPs, LoadBalancer IPs, the NodePort
    if sp.has_external:
        if uses_ext:
            target, table = ext, out.nat_services
        elif not all_eps:
            target, table = "REJECT", out.filter_external
        else:  # ETP Local, no endpoint on this node
            target, table = "DROP", out.filter_external
        why = {"REJECT": " has no endpoints", "DROP": " has no local endpoints"}.get(target, "")
        for ip in sp.external_ips:
            table.append(f"-A {'KUBE-SERVICES' if target == ext else 'KUBE-EXTERNAL-SERVICES'}"
                         f" -m comment --comment {_q(name + (why or ' external IP'))}"
                         f" {match} -d {ip}/32 --dport {sp.port} -j {target}")
        for ip in sp.load_balancer_ips:
            table.append(f"-A {'KUBE-SERVICES' if target == ext else 'KUBE-EXTERNAL-SERVICES'}"
                         f" -m comment --comment {_q(name + (why or ' loadbalancer IP'))}"
                         f" {match} -d {ip}/32 --dport {sp.port} -j {target}")
        if sp.node_port:
            if target == ext:
                out.nat_nodeports.append(f"-A KUBE-NODEPORTS -m comment --comment {_q(name)}"
                                         f" {match} --dport {sp.node_port} -j {ext}")
            else:
                out.filter_external.append(
                    f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {_q(name + why)}"
                    f" -m addrtype --dst-type LOCAL {match} --dport {sp.node_port}"
                    f" -j {target}")

    # -- the per-Service chains
    if uses_svc:
        out.chains[svc] = _policy_chain(sp, svc, all_eps, state, internal_chain == svc)
    if uses_svl:
        out.chains[svl] = _policy_chain(sp, svl, local_eps, state, internal_chain == svl)
    if uses_ext:
        rules = []
        if sp.external_local:
            if uses_svc:
                # Pods and the node itself may use any endpoint (and the node's traffic is
                # SNATed, as it would leave with the node IP anyway); outside clients only
                # the local ones, unmasqueraded: that is what keeps their source IP.
                rules += [
                    f"-A {ext} -m comment --comment "
                    f"{_q('pod traffic for ' + name + ' external destinations')}"
                    f" -s {state.cluster_cidr} -j {svc}",
                    f"-A {ext} -m comment --comment "
                    f"{_q('masquerade LOCAL traffic for ' + name + ' external destinations')}"
                    f" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                    f"-A {ext} -m comment --comment "
                    f"{_q('route LOCAL traffic for ' + name + ' external destinations')}"
                    f" -m addrtype --src-type LOCAL -j {svc}"]
        else:
            rules.append(f"-A {ext} -m comment --comment "
                         f"{_q('masquerade traffic for ' + name + ' external destinations')}"
                         f" -j KUBE-MARK-MASQ")
        rules.append(f"-A {ext} -j {external_chain}")
        out.chains[ext] = rules
    for ep in set(all_eps if uses_svc else ()) | set(local_eps if uses_svl else ()):
        sep = sep_chain(sp, ep)
        affinity = (f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource"
                    if sp.affinity_timeout else "")
        out.chains[sep] = [
            f"-A {sep} -m comment --comment {_q(name)} -s {ep.ip}/32 -j KUBE-MARK-MASQ",
            f"-A {sep} -m comment --comment {_q(name)}{affinity} {match}"
            f" -j DNAT --to-destination {ep.address}"]
    return out


def _policy_chain(sp: ServicePort, chain: str, eps: tuple[Endpoint, ...], state: ProxyState,
                  internal: bool) -> list[str]:
    """KUBE-SVC/KUBE-SVL: masquerade off-cluster ClusterIP traffic, honour affinity, then
    pick an endpoint with probabilities 1/n, 1/(n-1), ... 1 (equal overall)."""
    proto, name = sp.protocol.lower(), sp.key
    rules = []
    if internal:
        rules.append(f"-A {chain} -m comment --comment {_q(name + ' cluster IP')}"
                     f" -m {proto} -p {proto} -d {sp.cluster_ip}/32 --dport {sp.port}"
                     f" ! -s {state.cluster_cidr} -j KUBE-MARK-MASQ")
    if sp.affinity_timeout:
        for ep in eps:
            sep = sep_chain(sp, ep)
            rules.append(f"-A {chain} -m comment --comment {_q(name + ' -> ' + ep.address)}"
                         f" -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck"
                         f" --seconds {sp.affinity_timeout} --reap -j {sep}")
    n = len(eps)
    for i, ep in enumerate(eps):
        stat = (f" -m statistic --mode random --probability {1.0 / (n - i):.10f}"
                if i < n - 1 else "")
        rules.append(f"-A {chain} -m comment --comment {_q(name + ' -> ' + ep.address)}{stat}"
                     f" -j {sep_chain(sp, ep)}")
    return rules


FIXED_NAT = [
    f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
    f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
    " -j MASQUERADE --random-fully",
]
FIXED_FILTER = [
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"'
    f" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
    " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
]
NODEPORTS_JUMP = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE:'
                  ' this must be the last rule in this chain" -m addrtype --dst-type LOCAL'
                  " -j KUBE-NODEPORTS")


def jump_line(chain: str, rule: list[str]) -> str:
    """A base-chain jump as iptables-save prints it (quoted comment)."""
    words = [_q(w) if " " in w else w for w in rule]
    return f"-A {chain} " + " ".join(words)


def restore_text(rendered: dict[str, ServiceRules], write: set[str],
                 delete: set[str], extra_nat: list[str] | None = None,
                 jumps: list[tuple[str, str, list[str]]] | None = None) -> str:
    """The iptables-restore input: top-level chains whole, the chains of the ServicePorts in
    ``write`` (keys), ``delete``d chains flushed and removed, missing base-chain ``jumps``
    inserted first. nat first (see module doc)."""
    keys = sorted(rendered)
    nat = [f":{c} - [0:0]" for c in NAT_TOP]
    body: list[str] = list(FIXED_NAT)
    for k in keys:
        body += rendered[k].nat_services
    body.append(NODEPORTS_JUMP)
    for k in keys:
        body += rendered[k].nat_nodeports
    for k in sorted(write & set(rendered)):
        for chain, rules in rendered[k].chains.items():
            nat.append(f":{chain} - [0:0]")
            body += rules
    nat += [f":{c} - [0:0]" for c in sorted(delete)]
    body += [f"-X {c}" for c in sorted(delete)]
    filt = [f":{c} - [0:0]" for c in FILTER_TOP] + list(FIXED_FILTER)
    for k in keys:
        filt += rendered[k].filter_services
    for k in keys:
        filt += rendered[k].filter_external
    inserts = {"nat": [], "filter": []}  # type: dict[str, list[str]]
    for table, chain, rule in jumps or []:
        inserts[table].append("-I" + jump_line(chain, rule)[2:].replace(
            f" {chain} ", f" {chain} 1 ", 1))
    return "\n".join(["*nat", *nat, *body, *inserts["nat"], *(extra_nat or []), "COMMIT",
                      "*filter", *filt, *inserts["filter"], "COMMIT", ""])


#: iptables' two kernels interfaces: x_tables ("legacy") and nf_tables ("nft")
BACKENDS = {
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
    "nft": ("iptables-nft-restore", "iptables-nft-save"),
}


@register
class IptablesProxier(Proxier):
    """``backend`` picks iptables' kernel interface. legacy (x_tables, the default) is
    kube-proxy's classic data path and loads 10k Services in seconds; nft (iptables-nft,
    what plain ``iptables`` is on Debian 12) takes minutes for the same restore here (see
    docs/services.md)."""

    mode = "iptables"

    def __init__(self, node: str, log: logging.Logger, backend: str = "legacy",
                 lock_file: str | None = None) -> None:
        super().__init__(node, log)
        self.backend = backend
        self.restore_cmd, self.save_cmd = BACKENDS[backend]
        # legacy iptables serialises writers with one lock file, /run/xtables.lock: every
        # node's proxy (and every lab's) would wait for the others' restores. A node has its
        # own /run in a real cluster; here its own lock file.
        self.env = {**os.environ, "XTABLES_LOCKFILE": lock_file} if lock_file else None
        self._rendered: dict[str, ServiceRules] = {}  # as of the last successful sync
        #: raw lines added to the nat table of every restore (a test hook: a bad line makes
        #: the sync fail, so tests can see the previous rules survive)
        self.inject: list[str] = []
        self.last_restore_lines = 0

    def sync(self, state: ProxyState, changed: set[str] | None) -> None:
        full = changed is None or not self._rendered
        rendered = {k: (self._rendered[k] if not full and k not in (changed or set())
                        and k in self._rendered else render_service(sp, state))
                    for k, sp in state.services.items()}
        jumps: list[tuple[str, str, list[str]]] = []
        if full:
            write = set(rendered)
            saved = {t: self._save(t) for t in ("nat", "filter")}
            have = {line[1:].split()[0] for line in saved["nat"].splitlines()
                    if line.startswith(":") and line[1:].startswith(SERVICE_PREFIXES)}
            want = {c for r in rendered.values() for c in r.chains}
            delete = have - want
            # Our jumps from the kernel's chains, first in them as kube-proxy puts them;
            # checked each full sync (someone may have flushed a table).
            jumps = [j for j in reversed(JUMPS)
                     if jump_line(j[1], j[2]) not in saved[j[0]].splitlines()]
        else:
            assert changed is not None
            write = changed & set(rendered)
            delete = set()
            for k in changed:
                old = set(self._rendered[k].chains) if k in self._rendered else set()
                new = set(rendered[k].chains) if k in rendered else set()
                delete |= old - new
        text = restore_text(rendered, write, delete, self.inject, jumps)
        shell.run([self.restore_cmd, "-w", "--noflush"], input=text, timeout=600,
                  env=self.env, context=f"kube-proxy iptables sync on {self.node}")
        self.last_restore_lines = text.count("\n")
        self._rendered = rendered

    def _save(self, table: str) -> str:
        return shell.run([self.save_cmd, "-t", table], timeout=600).stdout

    def rules(self) -> str:
        return self._save("nat") + self._save("filter")

    def cleanup(self) -> None:
        lines = []
        for table in ("nat", "filter"):
            out = self._save(table)
            jumps = [jump_line(c, r) for t, c, r in JUMPS if t == table]
            chains = [ln[1:].split()[0] for ln in out.splitlines()
                      if ln.startswith(":KUBE-")]
            deletes = ["-D" + ln[2:] for ln in out.splitlines() if ln in jumps]
            if chains or deletes:
                lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains), *deletes,
                          *(f"-X {c}" for c in chains), "COMMIT"]
        if lines:
            shell.run([self.restore_cmd, "-w", "--noflush"], input="\n".join(lines) + "\n",
                      env=self.env, context=f"kube-proxy iptables cleanup on {self.node}")
        self._rendered = {}
