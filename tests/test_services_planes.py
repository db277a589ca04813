"""Services on every data plane, tried from where users try them (issue 11, part 3).

Per data plane one small lab (2 nodes, a server pod on node-2, a client pod on node-1, one
outside client on the underlay, a ``loadBalancerCIDR``), shared by the tests of that plane:

- ClusterIP from the pod on the other node (kube-proxy's DNAT; on OVS through gw0 and the
  node's SNAT, knetlab/overlays/ovs/services.py);
- NodePort from the outside client, on both nodes (the server runs on node-2 only, so
  node-1 forwards across the data plane);
- LoadBalancer from the outside client: an address from the pool in the Service's status,
  announced over layer 2 on a segment (knetlab/addons/lbspeaker), learned over BGP by the
  client's ToR on calico-bgp (leaf-spine, ``bgp.mode: tor``);
- the ``kubernetes`` Service reaching the lab's API server from a pod.

The default run covers flannel-vxlan, calico-bgp (BGP-advertised LoadBalancer) and ovs-gre;
``KNETLAB_ALL_PLANES=1`` adds flannel-udp, calico-vxlan and ovs-vxlan. host-gw is covered by
the kube-proxy tests. Also here, without Kubernetes: outside clients on a segment and on
leaf-spine, and the topology errors of ``clients`` and ``loadBalancerCIDR``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab.addons.lbspeaker.election import announced_by, winner
from knetlab.cluster import Cluster
from knetlab.errors import ConfigError
from knetlab.topologies.schema import load_topology
from tests.conftest import needs_root, poll, running_lab, write_topology
from tests.kube_helpers import AGNHOST, kubectl, skip_without_root_or_kubectl
from tests.test_kube_lab import Kubectl

LB_CIDR = "172.30.0.0/28"
PLANES = ["flannel-vxlan", "calico-bgp", "ovs-gre"]
if os.environ.get("KNETLAB_ALL_PLANES"):
    PLANES += ["flannel-udp", "calico-vxlan", "ovs-vxlan"]

SEGMENT = """\
name: kpc-{short}
dataplane: {plane}
nodes: {{count: 2}}
pods: {{perNode: 0}}
clients: {{count: 1}}
loadBalancerCIDR: {lb}
"""
# calico-bgp: the fabric learns the LoadBalancer range over BGP (Calico's service IP
# advertisement), so the client sits in a rack behind its ToR.
LEAF_SPINE = """\
name: kpc-{short}
dataplane: {plane}
underlay: {{type: leaf-spine, racks: 2, spines: 1}}
nodes: {{perRack: 1}}
pods: {{perNode: 0}}
clients: {{count: 1}}
loadBalancerCIDR: {lb}
bgp: {{mode: tor, serviceClusterIPs: true}}
"""

SERVER = {"apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": "server", "labels": {"app": "server"}},
          "spec": {"nodeName": "node-2", "containers": [{
              "name": "netexec", "image": AGNHOST,
              "args": ["netexec", "--http-port=8080"],
              "ports": [{"name": "http", "containerPort": 8080}],
              "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                 "periodSeconds": 1}}]}}
CLIENT = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
          "spec": {"nodeName": "node-1", "containers": [{
              "name": "shell", "image": "busybox:1.36", "command": ["sleep", "infinity"]}]}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"type": "LoadBalancer", "selector": {"app": "server"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


# -- without Kubernetes: outside clients and the topology's errors ----------------------

def _topo(tmp_path: Path, text: str) -> Path:
    return write_topology(tmp_path, text)


@pytest.mark.parametrize("text, field, words", [
    ("clients: {count: 2}\nnodes: [{name: client-1}]\n", "clients.count", "already used"),
    ("clients: [node-1]\n", "clients[0].name", "already used"),
    ("clients: [{name: c1, rack: 2}]\n", "clients[0].rack", "out of range"),
    ("clients: [{name: c1, colour: red}]\n", "clients[0].colour", "unknown key"),
    ("clients: [averyverylongname]\n", "clients[0].name", "longer than"),
    ("loadBalancerCIDR: 10.244.128.0/24\n", "loadBalancerCIDR", "overlaps podCIDR"),
    ("loadBalancerCIDR: 10.100.0.0/16\n", "loadBalancerCIDR", "overlaps serviceCIDR"),
    ("loadBalancerCIDR: 192.168.0.128/25\n", "loadBalancerCIDR", "overlaps underlay.cidr"),
    ("loadBalancerCIDR: 172.30.0.1/24\n", "loadBalancerCIDR", "host bits"),
])
def test_bad_clients_and_pool_are_refused(tmp_path: Path, text: str, field: str,
                                          words: str) -> None:
    path = _topo(tmp_path, "name: kpc-bad\n" + text)
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    msg = str(err.value)
    assert field in msg and words in msg and str(path) in msg, msg
    assert ":2:" in msg or ":3:" in msg, msg  # the line of the offending key


def test_client_addresses_and_gateways(tmp_path: Path) -> None:
    spec = load_topology(_topo(tmp_path, "name: kpc-c\ndataplane: vpc-routes\n"
                                         "underlay: {type: leaf-spine}\n"
                                         "clients: [a, {name: b, rack: 2}, c]\n"))
    got = {c.name: (c.ip, c.gateway) for c in spec.clients}
    assert got == {"a": ("192.168.1.245/24", "192.168.1.1"),
                   "b": ("192.168.2.245/24", "192.168.2.1"),
                   "c": ("192.168.1.244/24", "192.168.1.1")}
    spec = load_topology(_topo(tmp_path, "name: kpc-c\nclients: {count: 2}\n"))
    assert [(c.name, c.ip, c.gateway) for c in spec.clients] == [
        ("client-1", "192.168.0.245/24", ""), ("client-2", "192.168.0.244/24", "")]


def _node(name: str, ready: bool = True) -> dict:
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def _lb(name: str, ip: str, local: bool = False) -> dict:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer",
                     "externalTrafficPolicy": "Local" if local else "Cluster"},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


def test_layer2_election_is_one_ready_node_per_address() -> None:
    pool = ipaddress.IPv4Network(LB_CIDR)
    nodes = [_node("node-1"), _node("node-2"), _node("node-3", ready=False)]
    services = [_lb(f"s{k}", f"172.30.0.{k}") for k in range(1, 13)]
    owners = {n: announced_by(n, pool, services, nodes, []) for n in ("node-1", "node-2",
                                                                      "node-3")}
    assert owners["node-3"] == set()  # not Ready: announces nothing
    assert owners["node-1"] | owners["node-2"] == {f"172.30.0.{k}" for k in range(1, 13)}
    assert not owners["node-1"] & owners["node-2"] and owners["node-1"] and owners["node-2"]
    # externalTrafficPolicy Local: only a node with a ready endpoint announces
    ip = next(iter(owners["node-1"]))
    slices = [{"metadata": {"namespace": "default",
                            "labels": {"kubernetes.io/service-name": "local"}},
               "endpoints": [{"nodeName": "node-2", "conditions": {"ready": True}}]}]
    local = [_lb("local", ip, local=True)]
    assert announced_by("node-2", pool, local, nodes, slices) == {ip}
    assert announced_by("node-1", pool, local, nodes, slices) == set()
    assert winner(ip, set()) is None


@needs_root
@pytest.mark.parametrize("underlay", ["segment", "leaf-spine"])
def test_outside_client_reaches_nodes(tmp_path: Path, lab, underlay: str) -> None:
    extra = ("underlay: {type: leaf-spine, racks: 2, spines: 1}\nnodes: {perRack: 1}\n"
             "dataplane: vpc-routes\nclients: [c1, {name: c2, rack: 2}]\n"
             if underlay == "leaf-spine" else "nodes: {count: 2}\nclients: {count: 1}\n")
    c: Cluster = lab(_topo(tmp_path, f"name: kpc-cl{underlay[0]}\nkubernetes: false\n"
                                     f"pods: {{perNode: 0}}\n{extra}"))
    state = c.state()
    assert {cl["name"] for cl in state["clients"]} == set(c.clients)
    assert all(state["hosts"][name]["kind"] == "client" for name in c.clients)
    for client in c.clients.values():
        for node in c.nodes.values():
            client.run(["ping", "-c1", "-W3", node.node_ip],
                       context=f"{client.name} -> {node.name} ({node.node_ip})")
        assert not client.run(["ip", "route", "get", "10.244.1.2"], check=False).stdout \
            .startswith("10.244.1.2 dev"), "an outside client has no pod route of its own"
    pid = state["hosts"][next(iter(c.clients))]["pid"]
    assert Path(f"/proc/{pid}").exists()
    c.down()
    assert not Path(f"/proc/{pid}").exists(), "down removes the clients"


# -- one lab per data plane ---------------------------------------------------------------

@pytest.fixture(scope="module", params=PLANES)
def plane_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Cluster, Kubectl]]:
    skip_without_root_or_kubectl()
    plane: str = request.param
    short = plane.replace("flannel-", "f").replace("calico-", "c").replace("ovs-", "o")
    text = (LEAF_SPINE if plane == "calico-bgp" else SEGMENT).format(
        short=short, plane=plane, lb=LB_CIDR)
    with running_lab(text, tmp_path_factory.mktemp(plane)) as c:
        k = kubectl(c)
        for obj in (SERVER, CLIENT, SERVICE):
            c.apply(obj)
        k("wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=90s",
          timeout=120)
        yield c, k


def _service(k: Kubectl) -> dict:
    return k.json("get", "service", "web")


def _lb_ip(k: Kubectl) -> str:
    ips: list[str] = []

    def assigned() -> bool:
        ips[:] = [i["ip"] for i in (_service(k)["status"].get("loadBalancer") or {})
                  .get("ingress") or []]
        return bool(ips)
    poll(assigned, 30, "the LoadBalancer Service gets an address")
    return ips[0]


def _curl(host, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={host.netns}", "--", "curl", "-sS", "-m", "3",
                           url], capture_output=True, text=True, timeout=10)


def _answers(host, url: str, want: str = "server") -> bool:
    return _curl(host, url).stdout.strip() == want


def test_clusterip_from_a_pod_on_the_other_node(plane_lab: tuple[Cluster, Kubectl]) -> None:
    c, k = plane_lab
    ip = _service(k)["spec"]["clusterIP"]
    got: list[str] = []

    def served() -> bool:
        res = k.run("exec", "client", "--", "wget", "-qO-", "-T", "3",
                    f"http://{ip}/hostname", check=False, timeout=20)
        got[:] = [res.stdout + res.stderr]
        return res.stdout == "server"
    poll(served, 60, f"client pod (node-1) -> ClusterIP {ip}:80 -> server (node-2): {got}")
    # the endpoint saw the connection (on OVS from node-1's gateway: the SNAT that brings
    # the reply back through node-1's conntrack)
    seen = k("exec", "client", "--", "wget", "-qO-", "-T", "3", f"http://{ip}/clientip")
    source = seen.rsplit(":", 1)[0]
    client_ip = k.json("get", "pod", "client")["status"]["podIP"]
    gateway = c.spec.node("node-1").pod_gateway
    assert source == (gateway if c.spec.dataplane.startswith("ovs-") else client_ip), seen


def test_nodeport_from_an_outside_client(plane_lab: tuple[Cluster, Kubectl]) -> None:
    c, k = plane_lab
    port = _service(k)["spec"]["ports"][0]["nodePort"]
    client = c.clients["client-1"]
    for node in c.nodes.values():
        url = f"http://{node.node_ip}:{port}/hostname"
        poll(lambda u=url: _answers(client, u), 60,
             f"outside client -> {node.name} NodePort {port} -> server: "
             f"{_curl(client, url).stderr.strip()}")


def test_loadbalancer_from_an_outside_client(plane_lab: tuple[Cluster, Kubectl]) -> None:
    c, k = plane_lab
    ip = _lb_ip(k)
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(LB_CIDR)
    client = c.clients["client-1"]
    if c.spec.underlay.type == "leaf-spine":
        # Calico's service advertisement: the client's ToR learned the range over BGP
        tor = c.host("tor-1")
        route = tor.run(["ip", "route", "show", LB_CIDR]).stdout
        assert "proto bird" in route and c.nodes["node-1"].node_ip in route, route
    else:
        # layer 2: exactly one node holds the address (its kernel answers ARP)
        holders = [n.name for n in c.nodes.values()
                   if f"{ip}/32" in n.run(["ip", "-4", "-o", "addr"]).stdout]
        poll(lambda: len([n for n in c.nodes.values()
                          if f"{ip}/32" in n.run(["ip", "-4", "-o", "addr"]).stdout]) == 1,
             30, f"one node announces {ip} (now: {holders})")
    url = f"http://{ip}/hostname"
    poll(lambda: _answers(client, url), 60,
         f"outside client -> LoadBalancer {ip}:80 -> server: {_curl(client, url).stderr}")


def test_kubernetes_service_from_a_pod(plane_lab: tuple[Cluster, Kubectl]) -> None:
    c, k = plane_lab
    ip = k.json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    pod = c.pod("client")
    out: list[str] = []

    def version() -> bool:
        res = subprocess.run(["nsenter", f"--net={pod.netns}", "--", "curl", "-sk", "-m", "3",
                              f"https://{ip}/version"], capture_output=True, text=True,
                             timeout=10)
        out[:] = [res.stdout + res.stderr]
        try:
            return "gitVersion" in json.loads(res.stdout)
        except ValueError:
            return False
    # /version needs no credentials; the TLS session proves the API server answered
    poll(version, 60, f"pod -> kubernetes Service {ip}:443 -> API server: {out}")


def test_loadbalancer_pool_allocation(plane_lab: tuple[Cluster, Kubectl]) -> None:
    """loadBalancerIP honoured when free, refused (pending + Warning) when taken or outside
    the pool; an address is released on type change and on delete, then reused."""
    c, k = plane_lab
    taken = _lb_ip(k)
    base = {"apiVersion": "v1", "kind": "Service",
            "spec": {"type": "LoadBalancer", "selector": {"app": "none"},
                     "ports": [{"port": 81}]}}

    def svc(name: str, **spec: str) -> dict:
        return {**base, "metadata": {"name": name},
                "spec": {**base["spec"], **spec}}

    def ingress(name: str) -> list[str]:
        st = k.json("get", "service", name)["status"].get("loadBalancer") or {}
        return [i["ip"] for i in st.get("ingress") or []]

    def warned(name: str, words: str) -> bool:
        evs = k.json("get", "events", "--field-selector", f"involvedObject.name={name}")
        return any(words in e.get("message", "") for e in evs["items"])

    want = str(ipaddress.IPv4Network(LB_CIDR).broadcast_address - 1)
    c.apply(svc("pinned", loadBalancerIP=want))
    c.apply(svc("clash", loadBalancerIP=taken))
    c.apply(svc("outside", loadBalancerIP="10.1.2.3"))
    try:
        poll(lambda: ingress("pinned") == [want], 30, f"pinned gets {want}")
        poll(lambda: warned("clash", "already allocated"), 30, "clash: Warning event")
        poll(lambda: warned("outside", "not in the load-balancer pool"), 30,
             "outside: Warning event")
        assert ingress("clash") == [] and ingress("outside") == []
        k("patch", "service", "pinned", "--type=json", "-p",
          '[{"op":"replace","path":"/spec/type","value":"ClusterIP"},'
          '{"op":"remove","path":"/spec/ports/0/nodePort"}]')
        poll(lambda: ingress("pinned") == [], 30, "type ClusterIP releases the address")
        k("delete", "service", "outside")
        c.apply(svc("reuse", loadBalancerIP=want))
        poll(lambda: ingress("reuse") == [want], 30, f"the released {want} is reused")
    finally:
        k("delete", "service", "pinned", "clash", "outside", "reuse", "--ignore-not-found")
