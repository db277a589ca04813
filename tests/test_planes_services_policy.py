"""Services and NetworkPolicy on the weave and macvlan data planes (issue 14, item 4).

One 2-node lab per plane (module-scoped, one after the other; weave with a password, so
its sleeve is encrypted), each with a web pod on either node behind a NodePort Service, a
client pod on either node and one outside client:

- ClusterIP from a pod of each node: every endpoint answers, the same-node one and the
  other node's (on macvlan the pods send it to their default gateway, the node's shim,
  where kube-proxy's rules are; the reply would bypass that node, so kube-proxy
  masquerades it: the endpoint sees the client's node);
- NodePort from the outside client, on both nodes;
- NetworkPolicy probed with real connections (``kubectl exec SRC -- /agnhost connect
  DST:8080 --timeout=1s``), same-node and cross-node: a default-deny stops all four
  client->web pairs, an allow policy lets the allowed client through to both web pods
  and still stops the other. On weave the node's forward hook filters (pods bridged on
  ``weave``, br_netfilter); on macvlan pod traffic never enters the node, so the agent
  enforces in the pods' namespaces (it sees a macvlan on its node);
- an egress policy allowing only the web pods' port 8080 still lets the client reach the
  Service's port 80: egress through the node is judged after kube-proxy's DNAT.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knetlab.addons.netpolicy import model, render
from knetlab.addons.netpolicy.explain import LiveTable, Packet, walk
from knetlab.cluster import Cluster
from tests.conftest import needs_root, poll, running_lab
from tests.kube_helpers import AGNHOST, kubectl, skip_without_root_or_kubectl
from tests.test_kube_lab import Kubectl

TOPOLOGIES = {
    "weave": """\
name: psv-wv
podCIDR: 10.32.0.0/12
dataplane: weave
weave: {password: psv-lab-secret}
underlay: {type: segment, cidr: 192.168.0.0/24}
nodes: {count: 2}
pods: {perNode: 0}
clients: {count: 1}
""",
    "macvlan": """\
name: psv-mv
dataplane: macvlan
underlay: {type: segment, cidr: 192.168.0.0/16}
nodes: {count: 2}
pods: {perNode: 0}
clients: {count: 1}
""",
}
#: web-N and cN run on node-N; c1 carries the label the allow policy admits
PODS = {"web-1": ("node-1", {"app": "web"}), "web-2": ("node-2", {"app": "web"}),
        "c1": ("node-1", {"app": "client", "role": "allowed"}),
        "c2": ("node-2", {"app": "client"})}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"type": "NodePort", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def _pod(name: str) -> dict:
    node, labels = PODS[name]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{
                "name": "netexec", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                   "periodSeconds": 1}}]}}


def _policy(name: str, spec: dict[str, Any]) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


@dataclass
class PlaneLab:
    plane: str
    cluster: Cluster
    k: Kubectl
    ips: dict[str, str]

    def exec_sh(self, pod: str, script: str, timeout: float = 60) -> str:
        return self.k.run("exec", pod, "--", "/bin/sh", "-c", script, check=False,
                          timeout=timeout).stdout

    def connects(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """TCP connect src -> dst:8080 for each pair; one exec per source, in parallel."""
        out: dict[tuple[str, str], bool] = {}
        for src in dict.fromkeys(s for s, _ in pairs):
            targets = " ".join(f"{d}={self.ips[d]}" for s, d in pairs if s == src)
            script = (f'for t in {targets}; do (if /agnhost connect "${{t#*=}}:8080" '
                      '--timeout=1s 2>/dev/null; then echo "${t%=*} ok"; '
                      'else echo "${t%=*} no"; fi) & done; wait')
            for line in self.exec_sh(src, script).splitlines():
                dst, verdict = line.split()
                out[(src, dst)] = verdict == "ok"
        return out

    def wait_programmed(self) -> None:
        """Every node's policy agent has seen the API's current policies."""
        want = sorted(f"default/{p['metadata']['name']}@{p['metadata']['resourceVersion']}"
                      for p in self.k.json("get", "networkpolicies")["items"])
        addon = next(a for a in self.cluster.addons if a.name == "netpolicy")
        poll(lambda: all(a.status().get("seen") == want for a in addon.agents.values()),
             30, f"{self.plane}: policy agents synced to {want}")

    def expect(self, want: dict[tuple[str, str], bool], what: str, timeout: float = 30
               ) -> None:
        """Poll until the connections give ``want`` (the agents apply within a second or so
        of ``wait_programmed``; a pod's table may lag by one retry)."""
        deadline = time.monotonic() + timeout
        while (got := self.connects(list(want))) != want:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.plane}: not within {timeout}s: {what}: want {want}, "
                            f"got {got}")


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[PlaneLab]:
    skip_without_root_or_kubectl()
    plane: str = request.param
    with running_lab(TOPOLOGIES[plane], tmp_path_factory.mktemp(plane)) as c:
        k = kubectl(c)
        for name in PODS:
            c.apply(_pod(name))
        c.apply(SERVICE)
        k("wait", "--for=condition=Ready", *(f"pod/{n}" for n in PODS), "--timeout=90s",
          timeout=120)
        ips = {n: k.json("get", "pod", n)["status"]["podIP"] for n in PODS}
        yield PlaneLab(plane, c, k, ips)


def test_clusterip_reaches_every_endpoint_from_both_nodes(lab: PlaneLab) -> None:
    ip = lab.k.json("get", "service", "web")["spec"]["clusterIP"]
    for client in ("c1", "c2"):  # web-N on the client's node, the other across
        seen: set[str] = set()

        def all_endpoints(src: str = client, seen: set[str] = seen) -> bool:
            out = lab.exec_sh(src, f"for i in $(seq 12); do wget -qO- -T 2 "
                                   f"http://{ip}/hostname; echo; done")
            seen.update(line for line in out.split() if line)
            return seen >= {"web-1", "web-2"}
        poll(all_endpoints, 60, f"{lab.plane}: {client} -> ClusterIP {ip}:80 reaches "
                                f"web-1 and web-2 (seen: {seen})")
    # what the endpoint sees: the pod itself (weave: the reply crosses the translating
    # node's bridge, br_netfilter undoes the DNAT), or on macvlan the client's node (the
    # reply would go straight to the pod on the wire: kube-proxy masquerades)
    node1 = lab.cluster.nodes["node-1"].node_ip
    want = node1 if lab.plane == "macvlan" else lab.ips["c1"]
    got: list[str] = []

    def source_seen() -> bool:
        got[:] = [lab.exec_sh("c1", f"wget -qO- -T 2 http://{lab.ips['web-2']}:8080/"
                                    "clientip").rsplit(":", 1)[0]]
        return bool(got[0])
    poll(source_seen, 30, "c1 -> web-2 direct")
    assert got[0] == lab.ips["c1"], f"pod to pod is not NATed on {lab.plane}: {got}"
    got.clear()

    def via_service() -> bool:
        out = lab.exec_sh("c1", f"for i in $(seq 8); do wget -qO- -T 2 http://{ip}/clientip;"
                                " echo; done")
        got[:] = sorted({line.rsplit(":", 1)[0] for line in out.split() if line})
        return bool(got)
    poll(via_service, 30, "c1 -> ClusterIP /clientip")
    assert want in got, f"{lab.plane}: the endpoints saw {got}, expected {want} among them"


def test_nodeport_from_an_outside_client(lab: PlaneLab) -> None:
    port = lab.k.json("get", "service", "web")["spec"]["ports"][0]["nodePort"]
    client = lab.cluster.clients["client-1"]
    for node in lab.cluster.nodes.values():
        url = f"http://{node.node_ip}:{port}/hostname"
        out: list[str] = []

        def answered(u: str = url, out: list[str] = out) -> bool:
            res = subprocess.run(["nsenter", f"--net={client.netns}", "--", "curl", "-sS",
                                  "-m", "3", u], capture_output=True, text=True, timeout=10)
            out[:] = [res.stdout + res.stderr]
            return res.stdout.strip() in ("web-1", "web-2")
        poll(answered, 60, f"{lab.plane}: client-1 -> {node.name} NodePort {port}: {out}")


PAIRS = [("c1", "web-1"), ("c1", "web-2"), ("c2", "web-1"), ("c2", "web-2")]


def test_default_deny_and_allow_policy_same_and_cross_node(lab: PlaneLab) -> None:
    lab.expect(dict.fromkeys(PAIRS, True), "no policy: every client reaches every web pod")
    try:
        lab.cluster.apply(_policy("default-deny", {"podSelector": {},
                                                   "policyTypes": ["Ingress"]}))
        lab.wait_programmed()
        lab.expect(dict.fromkeys(PAIRS, False), "default-deny stops same- and cross-node")
        lab.cluster.apply(_policy("web-from-allowed", {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}],
                         "ports": [{"port": 8080}]}]}))
        lab.wait_programmed()
        lab.expect({("c1", "web-1"): True, ("c1", "web-2"): True,
                    ("c2", "web-1"): False, ("c2", "web-2"): False},
                   "the allow policy admits c1 (same node to web-1, across to web-2) only")
        agents = next(a for a in lab.cluster.addons if a.name == "netpolicy").agents
        where = {a.status().get("enforced_in") for a in agents.values()}
        assert where == {"pods" if lab.plane == "macvlan" else "node"}, where
    finally:
        lab.k("delete", "networkpolicies", "--all")
    lab.wait_programmed()
    lab.expect(dict.fromkeys(PAIRS, True), "policies deleted: open again")


def test_egress_to_a_service_is_judged_after_dnat(lab: PlaneLab) -> None:
    """c2 may send only to web pods on 8080: the Service's port 80 works (DNAT to 8080
    before the check), a direct connection to c1 does not."""
    ip = lab.k.json("get", "service", "web")["spec"]["clusterIP"]
    try:
        lab.cluster.apply(_policy("c2-egress", {
            "podSelector": {"matchLabels": {"app": "client"}, "matchExpressions": [
                {"key": "role", "operator": "DoesNotExist"}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": 8080}]}]}))
        lab.wait_programmed()
        lab.expect({("c2", "web-1"): True, ("c2", "web-2"): True, ("c2", "c1"): False},
                   "c2's egress: web pods on 8080 only")
        out: list[str] = []

        def service_works() -> bool:
            out[:] = [lab.exec_sh("c2", f"wget -qO- -T 2 http://{ip}/hostname")]
            return out[0].strip() in ("web-1", "web-2")
        poll(service_works, 30, f"{lab.plane}: c2 -> ClusterIP {ip}:80 under its egress "
                                f"policy: {out}")
    finally:
        lab.k("delete", "networkpolicies", "--all")
    lab.wait_programmed()


@needs_root
def test_pod_table_leaves_what_goes_through_the_node_to_it(tmp_path: Path) -> None:
    """``render_pod(via_node=True)`` (macvlan): a packet whose next hop is one of the node's
    addresses (a ClusterIP via the shim) passes the pod's egress chain, for the node's
    forward hook to judge after DNAT; one on the segment (another pod) is judged here.
    Probed with real packets in a throwaway namespace (nft counters), and walked by
    ``explain``."""
    ns = f"psv-u{tmp_path.name[-6:]}"
    run = [["ip", "netns", "add", ns]]
    inside = ["ip", "netns", "exec", ns]
    run += [inside + ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
            inside + ["ip", "addr", "add", "192.168.1.5/16", "dev", "eth0"],
            inside + ["ip", "link", "set", "eth0", "up"],
            inside + ["ip", "link", "set", "peer0", "up"],
            inside + ["ip", "route", "add", "default", "via", "192.168.1.1"]]
    try:
        for argv in run:
            subprocess.run(argv, check=True)
        pods = [{"metadata": {"namespace": "x", "name": "c", "labels": {}},
                 "spec": {"nodeName": "node-1", "containers": []},
                 "status": {"podIP": "192.168.1.5", "phase": "Running"}}]
        deny = [{"metadata": {"namespace": "x", "name": "deny"},
                 "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}]
        d = model.compute("node-1", pods, [], deny)
        text = render.render_pod(d, d.endpoints[0], ["192.168.0.11", "192.168.1.1"],
                                 via_node=True)
        subprocess.run(inside + ["nft", "-f", "-"], input=text, text=True, check=True)
        table = LiveTable.read("node-1/x/c", f"/var/run/netns/{ns}")
        assert not walk(table, Packet("192.168.1.5", "192.168.2.7", "tcp", 80), "output")[0]
        # real packets: UDP to a ClusterIP leaves (next hop: the shim), to a pod is dropped
        for dst in ("10.96.0.10", "192.168.2.7"):
            res = subprocess.run(inside + ["python3", "-c", "import socket; s=socket.socket("
                                           "socket.AF_INET, socket.SOCK_DGRAM); "
                                           f"s.sendto(b'x', ('{dst}', 53))"],
                                 capture_output=True, text=True)
            assert (res.returncode == 0) == dst.startswith("10."), (dst, res.stderr)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
