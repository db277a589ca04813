"""The macvlan data plane (one lab with Kubernetes: slices, node<->own pod through the shim
and what fails without it, kubelet pods over the reference macvlan plugin), and the
refusals: macvlan topologies that cannot work, and rancher-ipsec on a kernel without ESP.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from knetlab import kernel
from knetlab.check import endpoints, run_check
from knetlab.cluster import Cluster
from knetlab.errors import ConfigError
from knetlab.overlays.macvlan import SHIM
from knetlab.topologies.schema import load_topology
from tests.conftest import needs_root, poll, running_lab, write_topology

# -- refusals (no lab) -----------------------------------------------------------------

def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_topology(write_topology(tmp_path, text))
    return str(err.value)


def test_rancher_ipsec_is_refused_naming_esp_and_weave(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "name: wv-ri\ndataplane: rancher-ipsec\n")
    assert "topo.yaml:2: dataplane:" in msg and "rancher-ipsec" in msg
    assert "dataplane: weave" in msg and "password" in msg  # what works here instead
    if not kernel.has("esp"):
        assert "CONFIG_INET_ESP" in msg and "ESP" in msg
    # through the CLI: exit code 2 (a configuration error), one line on stderr
    path = tmp_path / "topo.yaml"
    res = subprocess.run([sys.executable, "-m", "knetlab.cli", "up", "--batch", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "rancher-ipsec" in res.stderr and not Path(
        "/run/knetlab/wv-ri").exists()


def test_macvlan_topologies_that_cannot_work_are_refused(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "name: wv-m\ndataplane: macvlan\nunderlay: {cidr: 192.168.0.0/24}\n")
    assert "macvlan.sliceLen" in msg and "192.168.0.0/16" in msg  # no slice per node
    msg = refusal(tmp_path, "name: wv-m\ndataplane: macvlan\nunderlay: {type: leaf-spine}\n")
    assert "dataplane" in msg and "segment" in msg
    msg = refusal(tmp_path, "name: wv-m\ndataplane: macvlan\ncni: knetlab\n"
                            "underlay: {cidr: 10.8.0.0/16}\n")
    assert "cni" in msg and "reference" in msg


# -- one lab with Kubernetes ------------------------------------------------------------

@pytest.fixture(scope="module")
def mvl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_lab("""
name: wv-t-mvl
dataplane: macvlan
underlay: {type: segment, cidr: 192.168.0.0/16}
nodes: {count: 2}
pods: {perNode: 2}
""", tmp_path_factory.mktemp("mvl")) as c:
        yield c


@needs_root
def test_pods_are_macvlans_with_addresses_from_their_node_slice(mvl: Cluster) -> None:
    for pod in mvl.pods.values():
        k = mvl.node(pod.node_name).spec.index
        assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(f"192.168.{k}.0/24")
        link = pod.cmd("ip -d link show eth0")
        assert "macvlan mode bridge" in link
    report = mvl.check()
    assert report.ok, [f"{p.src.name}->{p.dst.name}: {p.error}" for p in report.failures]
    assert any(SHIM in note for note in mvl.state()["check_notes"])


@needs_root
def test_node_reaches_own_pods_only_through_the_shim(mvl: Cluster) -> None:
    n1 = mvl.node("node-1")
    state = mvl.state()
    own = {p["name"]: p["ip"] for p in state["pods"] if p["node"] == "node-1"}  # + API pods
    route = n1.cmd(f"ip route get {next(iter(own.values()))}")
    assert f"dev {SHIM}" in route and f"src {n1.node_ip}" in route
    n1.cmd(f"ip link del {SHIM}")
    try:
        pods, nodes = endpoints(state)
        report = run_check(pods, [n for n in nodes if n.name == "node-1"])
        failed = {p.dst.name for p in report.failures if p.src.name == "node-1"}
        assert failed == set(own)  # node-1's own pods, and only those
        out = subprocess.run([sys.executable, "-m", "knetlab.cli", "check", "--cluster",
                              "wv-t-mvl"], capture_output=True, text=True, timeout=120).stdout
        assert "FAIL node-1 -> " in out and "note: macvlan" in out and SHIM in out
    finally:
        assert mvl.backend is not None
        mvl.backend.setup_node(n1)  # the shim back (same MAC: the pods' ARP entries hold)
    assert mvl.check().ok


@needs_root
def test_kubelet_pod_is_wired_by_the_reference_macvlan_plugin(mvl: Cluster) -> None:
    from kubernetes import client
    mvl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mv-web"},
               "spec": {"nodeName": "node-2", "containers": [{
                   "name": "netexec", "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                   "args": ["netexec", "--http-port=8080"]}]}})
    api = client.CoreV1Api(mvl.kube)
    ip: list[str] = []

    def running() -> bool:
        pod = api.read_namespaced_pod("mv-web", "default")
        if pod.status.phase == "Running" and pod.status.pod_ip:
            ip.append(pod.status.pod_ip)
        return bool(ip)
    poll(running, 60, "mv-web Running with an IP")
    assert ipaddress.ip_address(ip[0]) in ipaddress.ip_network("192.168.2.0/24")
    conf = (mvl.node("node-2").dir / "cni" / "net.d" / "10-knetlab.conflist").read_text()
    assert '"type": "macvlan"' in conf and mvl.spec.cni == "reference"
    for src in (mvl.pod("pod-1-0"), mvl.node("node-2")):  # another node's pod; its own node
        poll(lambda src=src: "mv-web" in src.cmd(f"curl -s --max-time 3 http://{ip[0]}:8080/"
                                                 "hostname"), 30, f"{src.name} reaches mv-web")
