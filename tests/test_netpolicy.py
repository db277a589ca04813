"""NetworkPolicy, Calico-style: unit tests of the model and renderer, and a Cyclonus-style
truth table on two data planes (host-gw: pods on a Linux bridge; calico-bgp: routed /32s).

Each lab has namespaces x, y, z (labelled ns=x ...) with pods a (node-1) and b (node-2)
serving TCP 80 and 8080 and UDP 53 (agnhost netexec), so every matrix holds same-node and
cross-node pairs. A case applies its policies, waits until every node's agent has seen
them, and probes the whole matrix with real connections (``kubectl exec SRC -- /agnhost
connect DST:PORT --timeout=500ms``, all of one source's probes in parallel inside one exec,
all sources in parallel, both labs at once), then asserts every cell of both. A pod
reaching itself is always allowed (it never leaves its namespace) and not probed, as
Kubernetes' e2e does (AllowLoopback).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from knetlab.addons.netpolicy import model, render
from knetlab.addons.netpolicy.explain import LiveTable, Packet, explain, walk
from knetlab.cluster import Cluster
from knetlab.kube.runtime import sandbox_netns
from tests.conftest import needs_root, poll, write_topology
from tests.test_kube_lab import kubectls

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b")
NODE_OF = {"a": "node-1", "b": "node-2"}
T80, T8080, U53 = ("tcp", 80), ("tcp", 8080), ("udp", 53)
Pair = tuple[str, str]  # "x/a"


# -- unit: the model and the renderer (no root) ----------------------------------------------

def _pod(ns: str, name: str, ip: str, node: str, labels: dict[str, str],
         ports: tuple[tuple[str, int, str], ...] = (), host_network: bool = False) -> dict:
    return {"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [
                {"ports": [{"name": n, "containerPort": p, "protocol": pr}
                           for n, p, pr in ports]}]},
            "status": {"podIP": ip, "phase": "Running"}}


def _ns(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def test_selectors() -> None:
    sel = {"matchLabels": {"app": "web"},
           "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                                {"key": "old", "operator": "DoesNotExist"}]}
    assert model.selector_matches(sel, {"app": "web", "tier": "fe"})
    assert not model.selector_matches(sel, {"app": "web", "tier": "db"})
    assert not model.selector_matches(sel, {"app": "web", "tier": "fe", "old": "1"})
    assert model.selector_matches({}, {"anything": "x"})
    assert not model.selector_matches(None, {})
    assert model.selector_matches({"matchExpressions": [
        {"key": "a", "operator": "NotIn", "values": ["1"]}]}, {})


def test_model_peers_named_ports_and_untouched_pods() -> None:
    pods = [_pod("x", "a", "10.244.1.2", "node-1", {"pod": "a"}, (("web", 8080, "TCP"),)),
            _pod("x", "b", "10.244.1.3", "node-1", {"pod": "b"}),
            _pod("y", "a", "10.244.2.2", "node-2", {"pod": "a"}, (("web", 9090, "TCP"),)),
            _pod("y", "h", "192.168.0.12", "node-2", {"pod": "a"}, host_network=True)]
    pols = [{"metadata": {"namespace": "x", "name": "p"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "a"}}}],
                     "ports": [{"port": "web"}, {"port": 53, "endPort": 60,
                                                 "protocol": "UDP"}]}],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "web"}]}]}}]
    d = model.compute("node-1", pods, [_ns("x", ns="x"), _ns("y", ns="y")], pols)
    assert [e.pod.key for e in d.endpoints] == ["x/a"]  # x/b untouched: no policy selects it
    assert d.endpoints[0].ingress == ["pi-x/p"] and d.endpoints[0].egress == ["po-x/p"]
    sets = {s.name: s for s in d.sets}
    # AND of namespace and pod selector; the hostNetwork pod is never a peer
    assert sets["pi-x/p-r0-p0"].elements == ["10.244.2.2"]
    assert sets["pi-x/p-r0-ports"].elements == ["udp . 53-60"]
    # ingress named port: the target's number; egress: every destination's own number
    assert sets["pi-x/p-r0-named"].elements == ["10.244.1.2 . tcp . 8080"]
    assert sets["po-x/p-r0-named"].elements == ["10.244.1.2 . tcp . 8080",
                                                "10.244.2.2 . tcp . 9090"]
    assert model.compute("node-2", pods, [], pols).endpoints == []  # nothing of x there
    deny_y = [{"metadata": {"namespace": "y", "name": "deny"}, "spec": {"podSelector": {}}}]
    d = model.compute("node-2", pods, [], deny_y)  # the hostNetwork pod is never an endpoint
    assert [e.pod.key for e in d.endpoints] == ["y/a"] and d.endpoints[0].egress == []
    bad = [{"metadata": {"namespace": "x", "name": "bad"}, "spec": {
        "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}}]
    d = model.compute("node-1", pods, [], bad)  # unreadable: fails closed, says why
    assert [c.rules for c in d.chains] == [[]] and "x/bad ingress" in d.errors[0]


@needs_root
def test_rendered_table_loads_and_explains(tmp_path: Path) -> None:
    """The renderer's output loads with nft (twice: the transaction replaces the table)
    and the live-table walk gives the Kubernetes verdicts."""
    ns = f"pol-u{tmp_path.name[-6:]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        pods = [_pod("x", "a", "10.244.1.2", "node-1", {"pod": "a"}),
                _pod("y", "b", "10.244.2.2", "node-2", {"pod": "b"})]
        pols = [{"metadata": {"namespace": "x", "name": "from-cidr"}, "spec": {
            "podSelector": {}, "ingress": [{"from": [{"ipBlock": {
                "cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}],
                "ports": [{"port": 80, "protocol": "SCTP"}, {"port": 80}]}]}}]
        text = render.render(model.compute("node-1", pods, [], pols))
        for _ in range(2):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text,
                           text=True, check=True)
        table = LiveTable.read("node-1", f"/var/run/netns/{ns}")
        ok, trace, why = walk(table, Packet("10.244.3.9", "10.244.1.2", "tcp", 80))
        assert ok and why == ["ingress of x/a allowed by x/from-cidr"], trace
        assert walk(table, Packet("10.244.3.9", "10.244.1.2", "sctp", 80))[0]
        assert not walk(table, Packet("10.244.3.9", "10.244.1.2", "udp", 80))[0]
        ok, trace, why = walk(table, Packet("10.244.2.2", "10.244.1.2", "tcp", 80))
        assert not ok and why == ["ingress of x/a denied: no rule of x/from-cidr allows it"]
        assert walk(table, Packet("10.244.1.2", "10.244.2.2", "tcp", 1))[0]  # egress open
        # the same chains in a pod's own namespace (OVS userspace planes): input hook
        d = model.compute("node-1", pods, [], pols)
        text = render.render_pod(d, d.endpoints[0], ["192.168.0.11"])
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True,
                       check=True)
        table = LiveTable.read("node-1/x/a", f"/var/run/netns/{ns}")
        assert walk(table, Packet("10.244.3.9", "10.244.1.2", "tcp", 80), "input")[0]
        ok, trace, why = walk(table, Packet("10.244.2.2", "10.244.1.2", "tcp", 80), "input")
        assert not ok and why == ["ingress of x/a denied: no rule of x/from-cidr allows it"]
        assert walk(table, Packet("192.168.0.11", "10.244.1.2", "tcp", 9), "input")[0]  # node
        assert walk(table, Packet("10.244.1.2", "10.244.2.2", "tcp", 1), "output")[0]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# -- the truth table ----------------------------------------------------------------------------

def _pod_manifest(ns: str, name: str) -> dict:
    def netexec(cname: str, http: int, udp: int, ports: list[dict]) -> dict:
        return {"name": cname, "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                "args": ["netexec", f"--http-port={http}", f"--udp-port={udp}"],
                "ports": ports}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {"nodeName": NODE_OF[name], "terminationGracePeriodSeconds": 0,
                     "containers": [
                         netexec("c80", 80, 53, [
                             {"name": "serve-80-tcp", "containerPort": 80},
                             {"name": "serve-53-udp", "containerPort": 53,
                              "protocol": "UDP"}]),
                         netexec("c8080", 8080, -1, [
                             {"name": "serve-8080-tcp", "containerPort": 8080}])]}}


class PolicyLab:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = cluster.control.client  # type: ignore[union-attr]
        self.kubectl = kubectls()[0]
        self.env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
        self.ips: dict[str, str] = {}

    def setup(self) -> None:
        for ns in NAMESPACES:
            self.client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": ns, "labels": {"ns": ns}}})
        for ns in NAMESPACES:
            for name in PODS:
                self.client.create("pods", _pod_manifest(ns, name), ns)

        def all_running() -> bool:
            for ns in NAMESPACES:
                for name in PODS:
                    st = self.client.get("pods", name, ns).get("status", {})
                    if st.get("phase") != "Running" or not st.get("podIP"):
                        return False
                    self.ips[f"{ns}/{name}"] = st["podIP"]
            return True
        poll(all_running, 90, "the 6 policy test pods running")

    # -- policies ----------------------------------------------------------------------------
    def apply(self, policies: list[dict]) -> None:
        for p in policies:
            self.client.create("networkpolicies", p, p["metadata"]["namespace"])

    def set_policies(self, policies: list[dict]) -> None:
        """Exactly these policies in the API (the previous case's go), then wait for the
        agents: one wait per case."""
        self.clear()
        self.apply(policies)
        self.wait_programmed()

    def clear(self) -> None:
        for p in self.client.list("networkpolicies")["items"]:
            self.client.delete("networkpolicies", p["metadata"]["name"],
                               p["metadata"]["namespace"])

    def wait_programmed(self, timeout: float = 30) -> None:
        """Every node's agent has synced the API's current set of policies."""
        want = sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}@"
                      f"{p['metadata']['resourceVersion']}"
                      for p in self.client.list("networkpolicies")["items"])
        addon = next(a for a in self.cluster.addons if a.name == "netpolicy")

        def synced() -> bool:
            return all(a.status().get("seen") == want for a in addon.agents.values())
        poll(synced, timeout, f"policy agents synced to {want}")

    # -- probes ------------------------------------------------------------------------------
    def probe_from(self, src: str, ports: list[tuple[str, int]]) -> dict[tuple[str, str, int],
                                                                           bool]:
        targets = [f"{self.ips[dst]}:{port}:{proto}" for dst in self.ips if dst != src
                   for proto, port in ports]
        script = ('for t in ' + " ".join(targets) + '; do (hp=${t%:*}; pr=${t##*:}; '
                  'if /agnhost connect "$hp" --timeout=500ms --protocol="$pr" 2>/dev/null; '
                  'then echo "$t ok"; else echo "$t no"; fi) & done; wait')
        ns, name = src.split("/")
        proc = subprocess.run([self.kubectl, "exec", "-n", ns, name, "-c", "c80", "--",
                               "/bin/sh", "-c", script], env=self.env, capture_output=True,
                              text=True, timeout=60)
        by_ip = {ip: pod for pod, ip in self.ips.items()}
        out = {}
        for line in proc.stdout.splitlines():
            t, verdict = line.split()
            ip, port, proto = t.split(":")
            out[(by_ip[ip], proto, int(port))] = verdict == "ok"
        assert len(out) == len(targets), f"probes from {src}: {proc.stdout}{proc.stderr}"
        return out

    def matrix(self, ports: list[tuple[str, int]]) -> dict[tuple[str, str, str, int], bool]:
        with ThreadPoolExecutor(len(self.ips)) as pool:
            results = dict(zip(self.ips, pool.map(lambda s: self.probe_from(s, ports),
                                                  self.ips), strict=True))
        return {(src, dst, proto, port): ok for src, res in results.items()
                for (dst, proto, port), ok in res.items()}


def _render_matrix(got: dict, want: dict, ports: list[tuple[str, int]]) -> str:
    pods = sorted({k[0] for k in want})
    lines = []
    for proto, port in ports:
        lines.append(f"{proto}/{port}  (rows: from, columns: to; . ok, X denied, "
                     "! = wrong)")
        lines.append("      " + " ".join(f"{p:>4}" for p in pods))
        for s in pods:
            row = []
            for d in pods:
                if s == d:
                    row.append("   -")
                    continue
                k = (s, d, proto, port)
                mark = "." if got.get(k) else "X"
                row.append(f"{'!' if got.get(k) != want[k] else ' '}{mark:>3}")
            lines.append(f"{s:>5} " + " ".join(row))
    return "\n".join(lines)


# -- cases ---------------------------------------------------------------------------------------

Allow = Callable[[str, str, str, int], bool]  # (src, dst, proto, port) -> allowed


@dataclass
class Case:
    name: str
    policies: Callable[[PolicyLab], list[dict]]
    allowed: Allow
    ports: list[tuple[str, int]] = field(default_factory=lambda: [T80])
    before: Callable[[PolicyLab], None] | None = None   # e.g. relabel, after the policies
    after: Callable[[PolicyLab], None] | None = None    # undo ``before``


def pol(ns: str, name: str, selector: dict | None = None, ingress: list | None = None,
        egress: list | None = None, types: list[str] | None = None) -> dict:
    spec: dict[str, Any] = {"podSelector": selector if selector is not None else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def labels(**kv: str) -> dict:
    return {"matchLabels": kv}


def ns_of(p: str) -> str:
    return p.split("/")[0]


def _relabel(resource: str, name: str, ns: str | None, key: str, value: str | None
             ) -> Callable[[PolicyLab], None]:
    def act(lab: PolicyLab) -> None:
        lab.client.patch(resource, name, {"metadata": {"labels": {key: value}}}, ns)
    return act


def _cidr(lab: PolicyLab, pod: str) -> str:
    return f"{lab.ips[pod]}/32"


CASES = [
    Case("no policies: everything allowed", lambda lab: [],
         lambda s, d, pr, po: True, [T80, T8080, U53]),
    Case("deny all ingress in x", lambda lab: [pol("x", "deny", ingress=[])],
         lambda s, d, pr, po: ns_of(d) != "x"),
    Case("allow all ingress in x", lambda lab: [pol("x", "allow", ingress=[{}])],
         lambda s, d, pr, po: True),
    Case("deny all egress in x (replies to x still pass)",
         lambda lab: [pol("x", "deny", egress=[], types=["Egress"])],
         lambda s, d, pr, po: ns_of(s) != "x"),
    Case("allow all egress in x", lambda lab: [pol("x", "allow", egress=[{}],
                                                   types=["Egress"])],
         lambda s, d, pr, po: True),
    Case("x/a from pods pod=b of its namespace",
         lambda lab: [pol("x", "p", labels(pod="a"),
                          [{"from": [{"podSelector": labels(pod="b")}]}])],
         lambda s, d, pr, po: d != "x/a" or s == "x/b"),
    Case("x/a from namespace ns=y",
         lambda lab: [pol("x", "p", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(ns="y")}]}])],
         lambda s, d, pr, po: d != "x/a" or ns_of(s) == "y"),
    Case("x/a from pod=b in namespaces y,z (one peer: AND)",
         lambda lab: [pol("x", "p", labels(pod="a"), [{"from": [{
             "namespaceSelector": {"matchExpressions": [
                 {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
             "podSelector": labels(pod="b")}]}])],
         lambda s, d, pr, po: d != "x/a" or s in ("y/b", "z/b")),
    Case("x/a from namespace y or pod=b (two peers: OR)",
         lambda lab: [pol("x", "p", labels(pod="a"), [{"from": [
             {"namespaceSelector": labels(ns="y")}, {"podSelector": labels(pod="b")}]}])],
         lambda s, d, pr, po: d != "x/a" or ns_of(s) == "y" or s == "x/b"),
    Case("x from anywhere on TCP 80 only",
         lambda lab: [pol("x", "p", ingress=[{"ports": [{"port": 80}]}])],
         lambda s, d, pr, po: ns_of(d) != "x" or po == 80, [T80, T8080]),
    Case("x on named port serve-8080-tcp only",
         lambda lab: [pol("x", "p", ingress=[{"ports": [{"port": "serve-8080-tcp"}]}])],
         lambda s, d, pr, po: ns_of(d) != "x" or po == 8080, [T80, T8080]),
    Case("x on TCP 8000-9000 (endPort)",
         lambda lab: [pol("x", "p", ingress=[{"ports": [{"port": 8000, "endPort": 9000}]}])],
         lambda s, d, pr, po: ns_of(d) != "x" or po == 8080, [T80, T8080]),
    Case("x on UDP 53 only",
         lambda lab: [pol("x", "p", ingress=[{"ports": [{"port": 53, "protocol": "UDP"}]}])],
         lambda s, d, pr, po: ns_of(d) != "x" or pr == "udp", [T80, U53]),
    Case("x on TCP 53 only: UDP 53 denied (protocol matters)",
         lambda lab: [pol("x", "p", ingress=[{"ports": [{"port": 53, "protocol": "TCP"}]}])],
         lambda s, d, pr, po: ns_of(d) != "x", [T80, U53]),
    Case("x/a from 10.244.0.0/16 except y/a",
         lambda lab: [pol("x", "p", labels(pod="a"), [{"from": [{"ipBlock": {
             "cidr": "10.244.0.0/16", "except": [_cidr(lab, "y/a")]}}]}])],
         lambda s, d, pr, po: d != "x/a" or s != "y/a"),
    Case("x/a egress only to y/b's address (ipBlock)",
         lambda lab: [pol("x", "p", labels(pod="a"), egress=[{"to": [{"ipBlock": {
             "cidr": _cidr(lab, "y/b")}}]}], types=["Egress"])],
         lambda s, d, pr, po: s != "x/a" or d == "y/b"),
    Case("x egress on UDP 53 only (the DNS allowance)",
         lambda lab: [pol("x", "p", egress=[{"ports": [{"port": 53, "protocol": "UDP"}]}],
                          types=["Egress"])],
         lambda s, d, pr, po: ns_of(s) != "x" or pr == "udp", [T80, U53]),
    Case("two policies add up: x/a from y, x/a from z",
         lambda lab: [pol("x", "from-y", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(ns="y")}]}]),
                      pol("x", "from-z", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(ns="z")}]}])],
         lambda s, d, pr, po: d != "x/a" or ns_of(s) in ("y", "z")),
    Case("x/a ingress from y, egress to z",
         lambda lab: [pol("x", "p", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(ns="y")}]}],
                          [{"to": [{"namespaceSelector": labels(ns="z")}]}],
                          ["Ingress", "Egress"])],
         lambda s, d, pr, po: (d != "x/a" or ns_of(s) == "y")
         and (s != "x/a" or ns_of(d) == "z")),
    Case("policyTypes Egress only: its ingress section is ignored",
         lambda lab: [pol("x", "p", ingress=[], egress=[{}], types=["Egress"])],
         lambda s, d, pr, po: True),
    Case("deny ingress to pod=b in y; y/a untouched",
         lambda lab: [pol("y", "p", labels(pod="b"), ingress=[])],
         lambda s, d, pr, po: d != "y/b"),
    Case("egress of x to pods on named port of the destination",
         lambda lab: [pol("x", "p", egress=[{"ports": [{"port": "serve-8080-tcp"}]}],
                          types=["Egress"])],
         lambda s, d, pr, po: ns_of(s) != "x" or po == 8080, [T80, T8080]),
    Case("pod label change: deny for role=locked follows x/a's new label",
         lambda lab: [pol("x", "p", labels(role="locked"), ingress=[])],
         lambda s, d, pr, po: d != "x/a",
         before=_relabel("pods", "a", "x", "role", "locked"),
         after=_relabel("pods", "a", "x", "role", None)),
    Case("namespace label change: x/a from team=blue after z is labelled",
         lambda lab: [pol("x", "p", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(team="blue")}]}])],
         lambda s, d, pr, po: d != "x/a" or ns_of(s) == "z",
         before=_relabel("namespaces", "z", None, "team", "blue"),
         after=_relabel("namespaces", "z", None, "team", None)),
]


#: a Linux bridge and routed /32s: the rules sit on the node's forward path. (OVS's
#: userspace datapath, where they sit in the pods' namespaces, is not in this table: on
#: that plane six pods created at once do not all reach each other even without policy.)
DATAPLANES = ["host-gw", "calico-bgp"]


@pytest.fixture(scope="module")
def policy_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PolicyLab]]:
    """One lab per data plane, both up for the whole module: every case runs on both at
    once (their probes overlap, which halves the file's time on 2 cores)."""
    made: list[Cluster] = []
    try:
        for plane in DATAPLANES:
            extra = "bgp: {mode: mesh, asn: 64512, holdTime: 3}\n" if "calico" in plane else ""
            path = write_topology(tmp_path_factory.mktemp("pol"), f"""
name: pol-{plane.split('-')[0]}
dataplane: {plane}
{extra}kubernetes: true
nodes: {{count: 2}}
pods: {{perNode: 0}}
""")
            c = Cluster.load(path)
            c.up()
            made.append(c)
        labs = {c.spec.dataplane: PolicyLab(c) for c in made}
        on_each(labs, PolicyLab.setup)
        yield labs
    finally:
        for c in made:
            c.down()


def on_each(labs: dict[str, PolicyLab], fn: Callable[[PolicyLab], object]) -> None:
    """Run ``fn(lab)`` on every lab at once; fail with every plane's failure, named."""
    with ThreadPoolExecutor(len(labs)) as pool:
        futures = {plane: pool.submit(fn, lab) for plane, lab in labs.items()}
    errors = [f"[{plane}] {f.exception()}" for plane, f in futures.items()
              if f.exception() is not None]
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


def run_case(lab: PolicyLab, case: Case) -> None:
    lab.set_policies(case.policies(lab))
    try:
        if case.before:
            case.before(lab)
        want = {(s, d, pr, po): case.allowed(s, d, pr, po)
                for s in lab.ips for d in lab.ips if s != d for pr, po in case.ports}
        # The agents have the policies; a relabel (or the previous case's undo) may still
        # be on its way: re-probe until the matrix is right or the deadline passes.
        got: dict = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = lab.matrix(case.ports)
            if got == want:
                break
        assert got == want, f"{case.name}:\n{_render_matrix(got, want, case.ports)}"
    finally:
        if case.after:
            case.after(lab)


@needs_root
@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_truth_table(policy_labs: dict[str, PolicyLab], case: Case) -> None:
    on_each(policy_labs, lambda lab: run_case(lab, case))


@needs_root
@pytest.mark.e2e
def test_explain_reads_the_live_rules(policy_labs: dict[str, PolicyLab]) -> None:
    """`knetlab policy explain` names the deciding policy, cross-node and same-node."""
    on_each(policy_labs, _explain_case)


def _explain_case(lab: PolicyLab) -> None:
    lab.set_policies([pol("x", "from-y", labels(pod="a"),
                          [{"from": [{"namespaceSelector": labels(ns="y")}]}])])
    try:
        pods = lab.client.list("pods")["items"]
        hosts = {n: lab.cluster.node(n).netns for n in ("node-1", "node-2")}

        def pod_netns(pod: dict) -> str:
            return sandbox_netns(lab.cluster.rundir.path, pod)
        ex = explain(pods, hosts.__getitem__, "y/b", "x/a", 80, pod_netns_of=pod_netns)
        assert ex.allowed and ex.decided_by == ["ingress of x/a allowed by x/from-y"], ex.text()
        ex = explain(pods, hosts.__getitem__, "z/a", "x/a", 80, pod_netns_of=pod_netns)
        assert not ex.allowed, ex.text()
        assert "denied: no rule of x/from-y allows it" in ex.decided_by[-1]
        out = subprocess.run(["knetlab", "policy", "explain", "--cluster",
                              lab.cluster.spec.name, "z/a", "x/a", "80", "--exit-code"],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": f"{Path(sys.executable).parent}:"
                                          "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert out.returncode == 1 and "DENIED" in out.stdout, out.stdout + out.stderr
    finally:
        lab.set_policies([])


@needs_root
@pytest.mark.e2e
def test_pods_coming_and_going(policy_labs: dict[str, PolicyLab]) -> None:
    """A new pod matching a peer selector is allowed as soon as it has an address; a pod
    that goes is gone from the sets."""
    on_each(policy_labs, _coming_and_going)


def _coming_and_going(lab: PolicyLab) -> None:
    lab.set_policies([pol("x", "from-new", labels(pod="a"),
                   [{"from": [{"namespaceSelector": labels(ns="y"),
                                      "podSelector": labels(role="new")}]}])])
    pod = _pod_manifest("y", "b")
    pod["metadata"].update(name="newcomer", labels={"pod": "n", "role": "new"})
    lab.client.create("pods", pod, "y")
    try:
        ip = ""

        def running() -> bool:
            nonlocal ip
            ip = lab.client.get("pods", "newcomer", "y").get("status", {}).get("podIP", "")
            return bool(ip)
        poll(running, 60, "pod y/newcomer running")
        sets = lambda: subprocess.run(  # noqa: E731
            ["nsenter", f"--net={lab.cluster.node('node-1').netns}", "nft", "list", "set",
             "inet", "knetlab-policy", "pi-x/from-new-r0-p0"],
            capture_output=True, text=True).stdout
        poll(lambda: ip in sets(), 20, "the newcomer's address in x/from-new's peer set")
        assert ipaddress.ip_address(ip)
        ok = subprocess.run([lab.kubectl, "exec", "-n", "y", "newcomer", "-c", "c80", "--",
                             "/agnhost", "connect", f"{lab.ips['x/a']}:80", "--timeout=2s"],
                            env=lab.env, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        denied = subprocess.run([lab.kubectl, "exec", "-n", "y", "a", "-c", "c80", "--",
                                 "/agnhost", "connect", f"{lab.ips['x/a']}:80",
                                 "--timeout=1s"], env=lab.env, capture_output=True,
                                text=True, timeout=60)
        assert denied.returncode == 1 and "TIMEOUT" in denied.stderr
        lab.client.delete("pods", "newcomer", "y", grace_period=0)
        poll(lambda: ip not in sets(), 30, "the newcomer's address gone from the set")
    finally:
        try:
            lab.client.delete("pods", "newcomer", "y", grace_period=0)
        except Exception:  # noqa: BLE001 - already gone
            pass


@needs_root
@pytest.mark.e2e
def test_agent_restart_keeps_enforcing(policy_labs: dict[str, PolicyLab]) -> None:
    """SIGKILL a node's agent: its rules stay in the kernel (Felix's behaviour), the
    add-on's watchdog starts a new agent, and that one follows the next policy change."""
    on_each(policy_labs, _restart_case)


def _restart_case(lab: PolicyLab) -> None:
    import os
    import signal
    lab.set_policies([pol("x", "deny", ingress=[])])
    addon = next(a for a in lab.cluster.addons if a.name == "netpolicy")
    old = addon.agents["node-1"]
    old_pid, killed_at = old.pid, time.time()
    assert old_pid
    os.kill(old_pid, signal.SIGKILL)
    table = subprocess.run(["nsenter", f"--net={lab.cluster.node('node-1').netns}", "nft",
                            "list", "chain", "inet", "knetlab-policy", "tw-x/a"],
                           capture_output=True, text=True)
    assert table.returncode == 0 and "drop" in table.stdout, table.stderr
    poll(lambda: addon.agents["node-1"].pid not in (None, old_pid)
         and addon.agents["node-1"].status().get("time", 0) > killed_at, 30,
         "a new policy agent on node-1 that re-applied the table")
    lab.set_policies([])  # waits until the new agent has seen it too
