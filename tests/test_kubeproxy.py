"""kube-proxy in iptables mode, checked with real packets on one host-gw lab (3 nodes).

The apps are agnhost netexec pods (the servers of Kubernetes' own network e2e tests); the
clients are a netexec pod on node-1 (its ``/dial`` makes many independent connections in
one exec), the nodes themselves (NodePort, ETP/ITP Local) and the official Python client
(the ``kubernetes`` Service). Everything shares one lab; each test states what must become
true and by when.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab.addons.kubeproxy.iptables import port_proto_hash, render_service, restore_text
from knetlab.addons.kubeproxy.model import build_state
from knetlab.cluster import Cluster
from knetlab.errors import ConfigError
from knetlab.topologies.schema import load_topology
from tests.conftest import ROOT, needs_root, poll, running_lab, write_topology
from tests.kube_helpers import (
    MULTI_AND_STICKY,
    cluster_ip,
    dial,
    expose_web,
    in_netns,
    kubectl,
    netexec_deployment,
    netexec_pod,
)
from tests.test_kube_lab import Kubectl, wait_ready

LAB = "kpa-svc"
KNETLAB = str(ROOT / ".venv" / "bin" / "knetlab")
APPS = f"""
{netexec_deployment("web", 3)}
{netexec_pod("client", "node-1", "client")}
{netexec_pod("solo", "node-2", "solo")}
{netexec_pod("udp-1", "node-3", "udp1")}
{MULTI_AND_STICKY}
---
apiVersion: v1
kind: Service
metadata: {{name: local}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: itp}}
spec:
  internalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: udp1}}
spec:
  selector: {{app: udp1}}
  ports: [{{port: 53, targetPort: 8081, protocol: UDP}}]
"""


# -- fixtures and helpers --------------------------------------------------------------

@pytest.fixture(scope="module")
def svc_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_lab(f"""
name: {LAB}
dataplane: host-gw
kubernetes: true
nodes: {{count: 3}}
pods: {{perNode: 0}}
""", tmp_path_factory.mktemp("kpa")) as c:
        proxy = next(a for a in c.addons if a.name == "kube-proxy")
        proxy.wait_ready()  # type: ignore[attr-defined]
        yield c


@pytest.fixture(scope="module")
def k(svc_lab: Cluster) -> Kubectl:
    kc = kubectl(svc_lab)
    kc("apply", "-f", "-", stdin=APPS)
    expose_web(kc)
    wait_ready(kc, "app=web", 3, timeout=90)
    for app in ("client", "solo", "udp1"):
        wait_ready(kc, f"app={app}", 1, timeout=90)
    return kc


def node_port(k: Kubectl, svc: str) -> int:
    return int(k("get", "svc", svc, "-o", "jsonpath={.spec.ports[0].nodePort}"))


def connect(k: Kubectl, target: str, pod: str = "client", timeout: str = "2s",
            protocol: str = "tcp") -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = k.run("exec", pod, "--", "/agnhost", "connect", target, f"--timeout={timeout}",
                 f"--protocol={protocol}", check=False)
    return proc.returncode, proc.stderr, time.monotonic() - t0


def on_node(c: Cluster, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return in_netns(c.node(node).netns, *argv)


def knetlab(*args: str) -> str:
    return subprocess.run([KNETLAB, *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def proxy_dir(c: Cluster, node: str) -> Path:
    return c.rundir.path / "daemons" / node / "kube-proxy"


def proxy_status(c: Cluster, node: str) -> dict:
    return json.loads((proxy_dir(c, node) / "status.json").read_text())


def names(pods: list[dict]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


# -- without a lab ------------------------------------------------------------------------

def test_mode_validation(tmp_path: Path) -> None:
    base = "name: kpa-v\ndataplane: host-gw\nnodes: {count: 1}\n"
    spec = load_topology(write_topology(tmp_path, base))
    assert spec.addon_settings["kube-proxy"] == {"mode": "iptables", "iptablesBackend": "legacy"}
    with pytest.raises(ConfigError) as err:
        load_topology(write_topology(tmp_path, base + "kubeProxy: {mode: ipvs}\n"))
    text = str(err.value)
    assert "kubeProxy.mode" in text and "IP_VS" in text and "iptables" in text
    with pytest.raises(ConfigError) as err:
        load_topology(write_topology(tmp_path, base + "kubeProxy: {mode: fast}\n"))
    assert "kubeProxy.mode" in str(err.value)
    with pytest.raises(ConfigError):
        load_topology(write_topology(tmp_path, base + "kubeProxy: {mdoe: iptables}\n"))


def test_partial_restore_writes_only_changed_chains() -> None:
    def svc(name: str, ip: str) -> dict:
        return {"metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}}

    def sl(name: str, ip: str) -> dict:
        return {"metadata": {"namespace": "default",
                             "labels": {"kubernetes.io/service-name": name}},
                "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}
    state = build_state("n1", ("192.168.0.11",), "10.244.0.0/16",
                        [svc("a", "10.96.0.20"), svc("b", "10.96.0.21")],
                        [sl("a", "10.244.1.5"), sl("b", "10.244.2.5")])
    rendered = {key: render_service(sp, state) for key, sp in state.services.items()}
    text = restore_text(rendered, {"default/a"}, set())
    a, b = (f"KUBE-SVC-{port_proto_hash(f'default/{n}', 'tcp')}" for n in "ab")
    assert f":{a} " in text and f":{b} " not in text  # only a's chains are rewritten
    assert f"-j {b}" in text  # ... but KUBE-SERVICES (rewritten whole) still jumps to b's
    # kube-proxy's own name for this ServicePort (sha256 + base32 of "default/a" + "tcp")
    assert a == "KUBE-SVC-" + port_proto_hash("default/a", "tcp") and len(a) == 25


BACKENDS_SCRIPT = """
import logging, sys
from knetlab.addons.kubeproxy.iptables import IptablesProxier
from knetlab.addons.kubeproxy.model import build_state
svc = {"metadata": {"name": "a", "namespace": "default"}, "spec": {"type": "NodePort",
       "clusterIP": "10.96.0.20", "ports": [{"port": 80, "nodePort": 30080}],
       "sessionAffinity": "ClientIP"}}
sl = {"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "a"}},
      "ports": [{"port": 8080, "protocol": "TCP"}],
      "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}]}
state = build_state("n1", ("192.168.0.11",), "10.244.0.0/16", [svc], [sl])
out = []
for backend in ("legacy", "nft"):
    p = IptablesProxier("n1", logging.getLogger(), backend=backend)
    p.sync(state, None)
    p.sync(state, None)  # a second full sync adds no second jump
    out.append([ln for ln in p.rules().splitlines() if ln.startswith(("-A", ":KUBE"))])
    p.cleanup()
    assert "KUBE" not in p.rules(), p.rules()
assert out[0] == out[1], (out[0], out[1])
print(len(out[0]))
"""


@needs_root
def test_legacy_and_nft_backends_write_the_same_rules() -> None:
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", BACKENDS_SCRIPT],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 20


# -- on the lab -------------------------------------------------------------------------

@needs_root
@pytest.mark.e2e
def test_agents_and_rule_layout(svc_lab: Cluster, k: Kubectl) -> None:
    owners = {d["owner"] for d in svc_lab.state()["daemons"] if d["name"] == "kube-proxy"}
    assert owners == {"node-1", "node-2", "node-3"}
    ip = cluster_ip(k, "web")
    svc = "KUBE-SVC-" + port_proto_hash("default/web", "tcp")

    def rendered() -> bool:
        return f"-d {ip}/32" in knetlab("proxy", "rules", "node-1", "--cluster", LAB)
    poll(rendered, 20, "web's ClusterIP in node-1's rules")
    rules = knetlab("proxy", "rules", "node-1", "--cluster", LAB)
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING",
                  "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", svc):
        assert f":{chain} " in rules, chain
    assert f"-A KUBE-SERVICES -d {ip}/32 -p tcp" in rules and f"-j {svc}" in rules
    svc_rules = [r for r in rules.splitlines() if r.startswith(f"-A {svc} ")]
    assert "! -s 10.244.0.0/16" in svc_rules[0] and "KUBE-MARK-MASQ" in svc_rules[0]
    probs = [r.split("--probability ")[1].split()[0] for r in svc_rules if "statistic" in r]
    assert [round(float(p), 4) for p in probs] == [0.3333, 0.5]
    seps = [r.split("-j ")[1] for r in svc_rules[1:]]
    assert all(s.startswith("KUBE-SEP-") for s in seps) and len(seps) == 3
    assert "DNAT --to-destination" in rules and "MASQUERADE" in rules
    np_ext = "KUBE-EXT-" + port_proto_hash("default/np", "tcp")
    assert f"--dport {node_port(k, 'np')} -j {np_ext}" in rules
    # the iptables-save view from inside the node is the same kernel state
    direct = on_node(svc_lab, "node-1", "iptables-legacy-save", "-t", "nat").stdout
    assert f":{svc} " in direct
    st = proxy_status(svc_lab, "node-1")
    assert st["mode"] == "iptables" and st["syncs"] > st["fullSyncs"] >= 1  # partial syncs
    assert "node-1" in knetlab("proxy", "status", "--cluster", LAB)


@needs_root
@pytest.mark.e2e
def test_clusterip_reaches_every_endpoint(svc_lab: Cluster, k: Kubectl) -> None:
    web = names(k.json("get", "pods", "-l", "app=web")["items"])
    ip = cluster_ip(k, "web")
    seen: set[str] = set()

    def all_seen() -> bool:
        seen.update(dial(k, ip, 80, 15))  # port 80 -> targetPort 8080
        return seen == web
    poll(all_seen, 40, f"all of {web} behind {ip}:80 (seen {seen})")
    # named targetPort (http) and a second, UDP port of the same Service
    multi = cluster_ip(k, "multi")
    assert set(dial(k, multi, 81, 15)) <= web and dial(k, multi, 81, 3)
    udp: set[str] = set()

    def udp_all() -> bool:
        udp.update(dial(k, multi, 53, 10, protocol="udp"))
        return udp == web
    poll(udp_all, 40, f"every endpoint over UDP {multi}:53 (seen {udp})")
    # conntrack on the client's node shows the DNAT
    table = knetlab("conntrack", "node-1", "--cluster", LAB)
    assert f"dst={ip}" in table


@needs_root
@pytest.mark.e2e
def test_no_endpoints_is_refused_at_once(svc_lab: Cluster, k: Kubectl) -> None:
    ip = cluster_ip(k, "none")
    rc, err, took = connect(k, f"{ip}:80", timeout="5s")
    assert rc == 1 and "REFUSED" in err and took < 4, (err, took)
    assert f"-d {ip}/32" in knetlab("proxy", "rules", "node-1", "--cluster", LAB)


@needs_root
@pytest.mark.e2e
def test_session_affinity_client_ip(svc_lab: Cluster, k: Kubectl) -> None:
    answers = dial(k, cluster_ip(k, "sticky"), 80, 12)
    assert len(answers) == 12 and len(set(answers)) == 1, answers
    rules = knetlab("proxy", "rules", "node-1", "--cluster", LAB)
    assert "--rcheck --seconds 60 --reap" in rules and "recent --set" in rules


@needs_root
@pytest.mark.e2e
def test_nodeport_and_external_traffic_policy(svc_lab: Cluster, k: Kubectl) -> None:
    ips = {n: svc_lab.node(n).node_ip for n in ("node-1", "node-2", "node-3")}
    web = names(k.json("get", "pods", "-l", "app=web")["items"])
    np = node_port(k, "np")
    for target in ips.values():  # every node's address, from node-1
        out = on_node(svc_lab, "node-1", "curl", "-s", "-m", "5", f"http://{target}:{np}/hostname")
        assert out.stdout in web, (target, out)
    # ETP Cluster: the client's address is masqueraded away
    src = on_node(svc_lab, "node-1", "curl", "-s", "-m", "5",
                  f"http://{ips['node-3']}:{np}/clientip").stdout
    assert src and not src.startswith(ips["node-1"] + ":"), src
    # ETP Local: the endpoint's node answers and sees the client's own address ...
    lp = node_port(k, "local")
    src = on_node(svc_lab, "node-1", "curl", "-s", "-m", "5",
                  f"http://{ips['node-2']}:{lp}/clientip").stdout
    assert src.startswith(ips["node-1"] + ":"), src
    # ... a node without a local endpoint drops it (no answer, no SNAT to elsewhere)
    dropped = on_node(svc_lab, "node-1", "curl", "-s", "-m", "2",
                      f"http://{ips['node-3']}:{lp}/hostname")
    assert dropped.returncode == 28, dropped  # curl: timed out


@needs_root
@pytest.mark.e2e
def test_internal_traffic_policy_local(svc_lab: Cluster, k: Kubectl) -> None:
    ip = cluster_ip(k, "itp")
    # node-2 has the endpoint: its own traffic (and its pods') reaches it
    out = on_node(svc_lab, "node-2", "curl", "-s", "-m", "5", f"http://{ip}/hostname")
    assert out.stdout == "solo", out
    # node-1 has none: dropped there, not sent to node-2
    rc, err, _ = connect(k, f"{ip}:80", timeout="1s")
    assert rc == 1 and "TIMEOUT" in err, err


@needs_root
@pytest.mark.e2e
def test_hairpin(svc_lab: Cluster, k: Kubectl) -> None:
    # solo is the only endpoint of itp (ITP Local, node-2): it reaches itself through it
    answers = dial(k, cluster_ip(k, "itp"), 80, 3, pod="solo")
    assert answers == ["solo"] * 3, answers
    # what makes it work: the pod's bridge port in hairpin mode (CNI bridge hairpinMode)
    # and bridged replies seen by iptables (br_netfilter, on by default in a namespace)
    nf = on_node(svc_lab, "node-2", "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables")
    assert nf.stdout.strip() == "1", nf


@needs_root
@pytest.mark.e2e
def test_stale_udp_conntrack_is_flushed(svc_lab: Cluster, k: Kubectl) -> None:
    ip = cluster_ip(k, "udp1")
    pod_ip = k("get", "pod", "udp-1", "-o", "jsonpath={.status.podIP}")
    assert dial(k, ip, 53, 2, protocol="udp") == ["udp-1", "udp-1"]
    entries = knetlab("conntrack", "node-1", "-p", "udp", "--cluster", LAB)
    assert f"dst={ip}" in entries and f"src={pod_ip}" in entries
    k("delete", "pod", "udp-1", "--grace-period=0", "--force", "--wait=false")

    def flushed() -> bool:
        return f"src={pod_ip} " not in knetlab("conntrack", "node-1", "-p", "udp",
                                               "--cluster", LAB)
    # well inside UDP's 30 s conntrack timeout: deleted, not expired
    poll(flushed, 15, f"node-1's UDP entries to {pod_ip} deleted")


@needs_root
@pytest.mark.e2e
def test_kubernetes_service_reaches_the_api_server(svc_lab: Cluster, k: Kubectl) -> None:
    """From a pod, as in a real cluster: the service-account files and KUBERNETES_SERVICE_*
    the kubelet gives every container, curl with them, and the official Python client's
    ``load_incluster_config`` verifying the API server's certificate for 10.96.0.1."""
    c = svc_lab
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    out = k("exec", "client", "--", "sh", "-c",
            f'curl -s -m 10 --cacert {sa}/ca.crt -H "Authorization: Bearer $(cat {sa}/token)" '
            'https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version')
    assert json.loads(out)["gitVersion"].endswith("knetlab")
    assert k("exec", "client", "--", "cat", f"{sa}/namespace") == "default"
    script = ("from kubernetes import client, config; config.load_incluster_config(); "
              "print(sorted(n.metadata.name for n in client.CoreV1Api().list_namespace().items))")
    out = k("exec", "client", "--", sys.executable, "-c", script)
    assert "'kube-system'" in out and "'default'" in out
    # Its endpoints: the relays of the first three nodes, as a cluster's three API servers;
    # a node joining changes nothing (it used to list every node: each join made every
    # proxy sync, 4,600 syncs in a 100-node bring-up)
    relays = [c.node(n).node_ip for n in ("node-1", "node-2", "node-3")]

    def published() -> list[str]:
        slice_ = json.loads(k("get", "endpointslice", "kubernetes", "-o", "json"))
        return [e["addresses"][0] for e in slice_["endpoints"]]
    assert published() == relays
    syncs = proxy_status(c, "node-1")["syncs"]
    c.add_node("node-4")
    try:
        proxy = next(a for a in c.addons if a.name == "kube-proxy")
        proxy.wait_ready()  # type: ignore[attr-defined]
        assert published() == relays
        assert proxy_status(c, "node-1")["syncs"] == syncs
    finally:
        c.delete_node("node-4")


@needs_root
@pytest.mark.e2e
def test_failed_sync_keeps_previous_rules(svc_lab: Cluster, k: Kubectl) -> None:
    hook = proxy_dir(svc_lab, "node-1") / "inject-rules"
    before = proxy_status(svc_lab, "node-1")["failures"]
    hook.write_text("-A KUBE-SERVICES -j KUBE-NO-SUCH-CHAIN\n")
    try:
        k("expose", "deployment", "web", "--name", "late", "--port", "80",
          "--target-port", "8080")
        late = cluster_ip(k, "late")
        poll(lambda: proxy_status(svc_lab, "node-1")["failures"] > before, 20,
             "node-1's proxy reports the failed sync")
        assert "KUBE-NO-SUCH-CHAIN" in proxy_status(svc_lab, "node-1")["lastError"]
        poll(lambda: f"-d {late}/32" in knetlab("proxy", "rules", "node-2", "--cluster", LAB),
             20, "node-2 (no fault) renders the new Service")
        rules = knetlab("proxy", "rules", "node-1", "--cluster", LAB)
        assert f"-d {late}/32" not in rules and "NO-SUCH" not in rules
        assert dial(k, cluster_ip(k, "web"), 80, 3)  # the old rules still serve
    finally:
        hook.unlink()
    poll(lambda: bool(dial(k, late, 80, 1)), 40, "the retry renders the new Service")
    assert proxy_status(svc_lab, "node-1")["lastError"] == ""
