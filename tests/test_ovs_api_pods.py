"""Pods created at once through the API on an OVS plane reach each other and their gateway.

The regression: the ``ovs`` CNI plugin registered a pod for the controller under its bare
name (``ovs/pods/a``), so ``x/a``, ``y/a`` and ``z/a`` on one node overwrote each other's
entry (only the last one got flows: the others could not even ping their gateway) and a
DEL of one removed the entry of another. Entries are now one per attachment.

One ovs-vxlan lab: three namespaces with a pod ``a`` on node-1 and ``b`` on node-2 each,
plus a Deployment of four, all in one ``kubectl apply``; then every pod pings every
other pod (and the topology's pods, wired by knetlab's own CNI caller) and its gateway,
and fetches every other pod's ``/hostname`` over HTTP. Deleting ``x/a`` must leave its
namesakes reachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from knetlab.cluster import Cluster
from knetlab.cni.plugins.ovs import OVS_PODS
from knetlab.labstore import lab_store
from tests.conftest import needs_root, poll, running_lab
from tests.test_kube_lab import Kubectl, kubectls

pytestmark = [needs_root, pytest.mark.e2e]
NAMESPACES = ("x", "y", "z")
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.47"


def _manifest() -> str:
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                        for ns in NAMESPACES]
    container = {"name": "netexec", "image": AGNHOST, "args": ["netexec", "--http-port=8080"]}
    for ns in NAMESPACES:
        for name, node in (("a", "node-1"), ("b", "node-2")):
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": ns, "labels": {"probe": "1"}},
                         "spec": {"nodeName": node, "containers": [container]}})
    docs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "web", "namespace": "default"},
                 "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                          "template": {"metadata": {"labels": {"app": "web", "probe": "1"}},
                                       "spec": {"containers": [container]}}}})
    return "\n---\n".join(json.dumps(d) for d in docs)  # JSON documents are YAML


@pytest.fixture(scope="module")
def ovs_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_lab("""
name: ovf-api
dataplane: ovs-vxlan
kubernetes: true
nodes: {count: 2}
pods: {perNode: 1}
""", tmp_path_factory.mktemp("ovf")) as c:
        yield c


def _probe_pods(k: Kubectl) -> dict[str, dict]:
    """``ns/name`` -> pod, for the pods this test created, once all are Ready."""
    found: dict[str, dict] = {}

    def all_ready() -> bool:
        found.clear()
        for p in k.json("get", "pods", "-A", "-l", "probe=1")["items"]:
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in p.get("status", {}).get("conditions", []))
            if not ready or not p["status"].get("podIP"):
                return False
            found[f"{p['metadata']['namespace']}/{p['metadata']['name']}"] = p
        return len(found) == 10

    poll(all_ready, 60, "the 10 pods created at once are Ready with an IP")
    return found


def _host_name(key: str) -> str:
    """Cluster.pod's name for an API pod: ``name`` in default, else ``name.namespace``."""
    ns, name = key.split("/")
    return name if ns == "default" else f"{name}.{ns}"


def _probe_from(c: Cluster, src: str, targets: dict[str, str], gateway: str) -> set[str]:
    """What ``src`` cannot reach: 'ping IP' and 'http IP' (targets: IP -> expected
    /hostname, empty for a pod without a server)."""
    script = "; ".join(
        [f"ping -c1 -W2 {gateway} >/dev/null || echo ping {gateway}"]
        + [f"ping -c1 -W2 {ip} >/dev/null || echo ping {ip}" for ip in targets]
        + [f"[ \"$(curl -s -m3 http://{ip}:8080/hostname)\" = {name} ] || echo http {ip}"
           for ip, name in targets.items() if name])
    out = c.pod(_host_name(src)).run(["sh", "-c", script], check=False, timeout=120).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _unreachable(c: Cluster, pods: dict[str, dict], extra: dict[str, str]) -> dict[str, set]:
    """Every pod probes every other (and ``extra`` IPs); only the failures are returned."""
    def one(src: str) -> tuple[str, set[str]]:
        ip = pods[src]["status"]["podIP"]
        targets = {p["status"]["podIP"]: p["metadata"]["name"] for p in pods.values()
                   if p["status"]["podIP"] != ip}
        targets.update(extra)
        gateway = ip.rsplit(".", 1)[0] + ".1"
        return src, _probe_from(c, src, targets, gateway)

    with ThreadPoolExecutor(5) as pool:
        return {src: bad for src, bad in pool.map(one, pods) if bad}


def test_pods_created_at_once_reach_each_other(ovs_lab: Cluster) -> None:
    c = ovs_lab
    k = Kubectl(c.kubeconfig, kubectls()[0])
    k("apply", "-f", "-", stdin=_manifest())
    pods = _probe_pods(k)
    # Topology pods (knetlab's SandboxRuntime) as ping targets: both paths share br-int.
    extra = {c.pod(n).ip: "" for n in ("pod-1-0", "pod-2-0")}
    # Ready means wired and programmed (CNI ADD waits for the flows), so the first round
    # should pass; the deadline only absorbs a loaded machine. The failures are shown.
    deadline = time.monotonic() + 30
    while (bad := _unreachable(c, pods, extra)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not bad, f"unreachable (source: what): {bad}"

    # One registry entry per attachment: the three pods named ``a`` on node-1 have three.
    store = lab_store(c.rundir)
    entries = [v for v in store.list(OVS_PODS).values()
               if v["name"] == "a" and v["node"] == "node-1"]
    assert sorted(e["namespace"] for e in entries) == list(NAMESPACES), entries

    # Deleting x/a (its CNI DEL) leaves y/a and z/a with their flows.
    k("delete", "pod", "a", "-n", "x", "--wait=true", "--timeout=30s")
    poll(lambda: len([v for v in store.list(OVS_PODS).values() if v["name"] == "a"
                      and v["node"] == "node-1"]) == 2, 20, "x/a's registry entry removed")
    rest = {key: p for key, p in pods.items() if key != "x/a"}
    c.backend.wait_programmed()
    assert not _unreachable(c, {k: rest[k] for k in ("y/a", "z/a", "x/b")},
                            {}), "pods lost connectivity when a namesake was deleted"
