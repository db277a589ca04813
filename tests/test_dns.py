"""Cluster DNS (knetlab.addons.dns) in a lab, asked with dig from a pod.

One module-scoped lab (2 nodes, host-gw): the coredns Deployment in kube-system serves the
records of the Kubernetes DNS specification; dnsmasq in the topology pod pod-2-0 plays the
upstream inside the lab (``dns: {upstream: ...}``). Queries go to the DNS pod's IP, and
through the kube-dns Service address when kube-proxy is registered.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knetlab.addons import MODULES
from knetlab.addons.dns import ClusterDNS
from knetlab.addons.dns.probe import query, udp_socket
from knetlab.addons.dns.records import ZoneConfig, build_records, diff, reverse_zones
from knetlab.cluster import Cluster
from knetlab.errors import ConfigError
from knetlab.kube import runtime
from knetlab.topologies.schema import load_topology
from tests.conftest import ROOT, needs_root, poll, running_lab, write_topology
from tests.kube_helpers import AGNHOST, kubectl
from tests.test_kube_lab import Kubectl, wait_ready

UPSTREAM = "10.244.2.2"  # pod-2-0, the first address of node-2's pod subnet
Z = "cluster.local"
pytestmark = [needs_root, pytest.mark.e2e]

MANIFEST = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {{name: netexec, image: "{AGNHOST}", args: [netexec, --http-port=8080],
         ports: [{{name: http, containerPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: alt, port: 81, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: plain}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: pg, port: 5432, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
      - {{name: netexec, image: "{AGNHOST}", args: [netexec, --http-port=8080]}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: None
  selector: {{app: nothing}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec: {{type: ExternalName, externalName: www.example.lab}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers: [{{name: c, image: debian}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: dp-default}}
spec:
  dnsPolicy: Default
  containers: [{{name: c, image: busybox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: dp-none}}
spec:
  dnsPolicy: "None"
  dnsConfig:
    nameservers: [{UPSTREAM}]
    searches: [example.lab]
    options: [{{name: ndots, value: "2"}}, {{name: edns0}}]
  containers: [{{name: c, image: busybox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: dp-merge}}
spec:
  dnsConfig:
    searches: [example.lab, svc.{Z}]
    options: [{{name: ndots, value: "2"}}]
  containers: [{{name: c, image: busybox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: dp-hostnet}}
spec:
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  containers: [{{name: c, image: busybox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: dp-hostnet-cf}}
spec:
  hostNetwork: true
  containers: [{{name: c, image: busybox}}]
"""


class Lab:
    def __init__(self, cluster: Cluster, kubectl: Kubectl, dns_ip: str) -> None:
        self.c, self.k, self.dns_ip = cluster, kubectl, dns_ip

    def dig(self, *queries: tuple[str, str], server: str | None = None
            ) -> list[tuple[str, list[str]]]:
        """Ask several questions with one dig in the client pod: [(status, ["TYPE rdata"])]."""
        args = ["exec", "client", "--", "dig", f"@{server or self.dns_ip}", "+noall",
                "+comments", "+answer", "+time=2", "+tries=2"]
        for name, qtype in queries:
            args += [name, qtype]
        chunks = self.k(*args).split(";; ->>HEADER<<-")[1:]
        out = []
        for chunk in chunks:
            status = re.search(r"status: (\w+)", chunk)
            answers = [" ".join(line.split()[3:]) for line in chunk.splitlines()[1:]
                       if line.strip() and not line.startswith(";")]
            out.append((status.group(1) if status else "?", answers))
        assert len(out) == len(queries), f"dig answered {len(out)} of {len(queries)}"
        return out

    def one(self, name: str, qtype: str = "A") -> tuple[str, list[str]]:
        return self.dig((name, qtype))[0]


@pytest.fixture(scope="module")
def dns_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(f"""
name: dns-test
dataplane: host-gw
kubernetes: true
nodes: {{count: 2}}
pods: {{perNode: 1}}
dns: {{upstream: [{UPSTREAM}]}}
""", tmp_path_factory.mktemp("dns")) as c:
        yield from _with_upstream_and_apps(c)


def _with_upstream_and_apps(c: Cluster) -> Iterator[Lab]:
    """The lab's upstream resolver and the MANIFEST's workloads, for as long as the lab."""
    upstream: subprocess.Popen[bytes] | None = None
    try:
        assert c.pod("pod-2-0").ip == UPSTREAM
        # the lab's upstream: dnsmasq in pod-2-0, authoritative for example.lab only
        upstream = subprocess.Popen(
            ["nsenter", f"--net=/proc/{c.pod('pod-2-0').pid}/ns/net", "dnsmasq", "-k",
             "--no-resolv", "--no-hosts", "--user=root", f"--listen-address={UPSTREAM}",
             "--bind-interfaces", "--pid-file=", "--address=/example.lab/10.1.2.3"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        addon = next(a for a in c.addons if isinstance(a, ClusterDNS))
        dns_ip = addon.wait_ready()[0]
        k = kubectl(c)
        k("apply", "-f", "-", stdin=MANIFEST)
        wait_ready(k, "app=web", 2)
        wait_ready(k, "app=db", 2)
        for pod in ("client", "dp-default", "dp-none", "dp-merge", "dp-hostnet",
                    "dp-hostnet-cf"):
            k("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=60s", timeout=70)
        yield Lab(c, k, dns_ip)
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(5)


def svc_ip(dns_lab: Lab, name: str) -> str:
    return dns_lab.k.json("get", "svc", name)["spec"]["clusterIP"]


def pod_ips(dns_lab: Lab, selector: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["podIP"]
            for p in dns_lab.k.json("get", "pods", "-l", selector)["items"]}


# -- records ------------------------------------------------------------------------------

def test_cluster_ip_service_a_srv_ptr(dns_lab: Lab) -> None:
    ip = svc_ip(dns_lab, "web")
    a, srv, alt, ptr, api, plain_srv = dns_lab.dig(
        (f"web.default.svc.{Z}", "A"), (f"_http._tcp.web.default.svc.{Z}", "SRV"),
        (f"_alt._tcp.web.default.svc.{Z}", "SRV"),
        (".".join(reversed(ip.split("."))) + ".in-addr.arpa", "PTR"),
        (f"kubernetes.default.svc.{Z}", "A"), (f"_http._tcp.plain.default.svc.{Z}", "SRV"))
    assert a == ("NOERROR", [f"A {ip}"])
    assert srv == ("NOERROR", [f"SRV 0 100 80 web.default.svc.{Z}."])
    assert alt == ("NOERROR", [f"SRV 0 100 81 web.default.svc.{Z}."])
    assert ptr == ("NOERROR", [f"PTR web.default.svc.{Z}."])
    assert api == ("NOERROR", ["A 10.96.0.1"])
    assert plain_srv[0] == "NXDOMAIN"  # unnamed ports have no SRV record


def test_headless_statefulset_names(dns_lab: Lab) -> None:
    ips = pod_ips(dns_lab, "app=db")
    svc, db0, db1, srv, ptr = dns_lab.dig(
        (f"db.default.svc.{Z}", "A"), (f"db-0.db.default.svc.{Z}", "A"),
        (f"db-1.db.default.svc.{Z}", "A"), (f"_pg._tcp.db.default.svc.{Z}", "SRV"),
        (".".join(reversed(ips["db-0"].split("."))) + ".in-addr.arpa", "PTR"))
    assert svc[0] == "NOERROR" and sorted(svc[1]) == sorted(f"A {ip}" for ip in ips.values())
    assert db0 == ("NOERROR", [f"A {ips['db-0']}"])
    assert db1 == ("NOERROR", [f"A {ips['db-1']}"])
    # headless SRV: one per ready endpoint x named port, the endpoint's port (targetPort)
    assert sorted(srv[1]) == [f"SRV 0 100 8080 db-0.db.default.svc.{Z}.",
                              f"SRV 0 100 8080 db-1.db.default.svc.{Z}."]
    assert ptr == ("NOERROR", [f"PTR db-0.db.default.svc.{Z}."])
    # the pod's own FQDN (hostname.subdomain) is in its /etc/hosts too
    hosts = dns_lab.k("exec", "db-0", "--", "cat", "/etc/hosts")
    assert f"db-0.db.default.svc.{Z}" in hosts


def test_headless_deployment_endpoints_get_dashed_names(dns_lab: Lab) -> None:
    dns_lab.k("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Service
metadata: {name: webh}
spec: {clusterIP: None, selector: {app: web}, ports: [{name: http, port: 8080}]}
""")
    ip = sorted(pod_ips(dns_lab, "app=web").values())[0]
    name = f"{ip.replace('.', '-')}.webh.default.svc.{Z}"
    poll(lambda: dns_lab.one(name)[1] == [f"A {ip}"], 10, f"{name} served")


def test_externalname_cname_and_upstream(dns_lab: Lab) -> None:
    cname, outside, elsewhere = dns_lab.dig(
        (f"ext.default.svc.{Z}", "A"), ("www.example.lab", "A"), ("www.example.com", "A"))
    assert cname[0] == "NOERROR" and cname[1][0] == "CNAME www.example.lab."
    assert outside == ("NOERROR", ["A 10.1.2.3"])  # forwarded to the upstream in the lab
    print("ext ->", cname)
    # the upstream knows nothing else (dnsmasq REFUSED, which a resolver turns to SERVFAIL)
    assert elsewhere[0] in ("NXDOMAIN", "REFUSED", "SERVFAIL") and elsewhere[1] == []


def test_version_pods_and_negative_answers(dns_lab: Lab) -> None:
    client_ip = dns_lab.k.json("get", "pod", "client")["status"]["podIP"]
    dashed = client_ip.replace(".", "-")
    got = dns_lab.dig((f"dns-version.{Z}", "TXT"), (f"{dashed}.default.pod.{Z}", "A"),
                  (f"{dashed}.kube-system.pod.{Z}", "A"),      # not a pod of kube-system
                  (f"web.default.svc.{Z}", "TXT"),             # name exists: NODATA
                  (f"default.svc.{Z}", "A"),                   # empty non-terminal: NODATA
                  (f"nope.default.svc.{Z}", "A"),              # no such Service
                  (f"empty.default.svc.{Z}", "A"),             # headless, no ready endpoint
                  (f"web.nowhere.svc.{Z}", "A"),               # no such namespace
                  (f"db-9.db.default.svc.{Z}", "A"))           # no such endpoint
    assert got[0] == ("NOERROR", ['TXT "1.0.1"'])
    assert got[1] == ("NOERROR", [f"A {client_ip}"])
    assert got[2][0] == "NXDOMAIN"
    assert got[3] == ("NOERROR", []) and got[4] == ("NOERROR", [])
    assert [g[0] for g in got[5:]] == ["NXDOMAIN"] * 4


def test_change_served_within_deadline(dns_lab: Lab) -> None:
    """A new endpoint in an EndpointSlice is answered fast (goal: 100 ms; the bench
    measures it precisely): a selector-less headless Service whose slice we write."""
    api = dns_lab.c.control.client  # type: ignore[union-attr]
    api.create("services", {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "late", "namespace": "default"},
                            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    api.create("endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "late-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "late"}},
        "addressType": "IPv4", "ports": [{"port": 80, "protocol": "TCP"}], "endpoints": []})
    client = dns_lab.k.json("get", "pod", "client")
    sock = udp_socket(runtime.sandbox_netns(dns_lab.c.rundir, client))
    took = []
    for i in range(8):
        ip = f"10.244.200.{i + 1}"
        t0 = time.monotonic()
        api.patch("endpointslices", "late-1", {"endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}}]}, "default")
        while ip not in query(sock, dns_lab.dns_ip, f"late.default.svc.{Z}")[1]:
            assert time.monotonic() - t0 < 2.0, f"{ip} not served within 2 s"
        took.append(time.monotonic() - t0)
    # then the last endpoint goes not-ready: the name disappears (NXDOMAIN)
    api.patch("endpointslices", "late-1", {"endpoints": [
        {"addresses": ["10.244.200.9"], "conditions": {"ready": False}}]}, "default")
    poll(lambda: query(sock, dns_lab.dns_ip, f"late.default.svc.{Z}")[0] == "NXDOMAIN", 2,
         "late NXDOMAIN once its only endpoint is not ready")
    print(f"change served after {[round(t * 1000, 1) for t in took]} ms")
    assert statistics.median(took) < 0.1


def test_knetlab_dns_records_shows_what_unbound_serves(dns_lab: Lab) -> None:
    knetlab = str(ROOT / ".venv" / "bin" / "knetlab")
    out = subprocess.run([knetlab, "dns", "records", "--cluster", dns_lab.c.spec.name, "db-0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    db0 = pod_ips(dns_lab, "app=db")["db-0"]
    assert f"db-0.db.default.svc.{Z}. 5 IN A {db0}" in out.stdout
    assert "kube-system/coredns-" in out.stdout


def test_scale_down_removes_names(dns_lab: Lab) -> None:
    dns_lab.k("scale", "statefulset/db", "--replicas=1")
    poll(lambda: dns_lab.one(f"db-1.db.default.svc.{Z}")[0] == "NXDOMAIN", 30,
         "db-1 gone from DNS after scale-down")
    assert len(dns_lab.one(f"db.default.svc.{Z}")[1]) == 1


# -- pods' resolv.conf and the kube-dns Service -----------------------------------------

def resolv(dns_lab: Lab, pod: str) -> str:
    return dns_lab.k("exec", pod, "--", "cat", "/etc/resolv.conf")


def test_dns_policies(dns_lab: Lab) -> None:
    search = f"search default.svc.{Z} svc.{Z} {Z}"
    first = resolv(dns_lab, "client")
    assert search in first and "nameserver 10.96.0.10" in first and "options ndots:5" in first
    hostnet = resolv(dns_lab, "dp-hostnet")  # ClusterFirstWithHostNet: cluster DNS anyway
    assert search in hostnet and "nameserver 10.96.0.10" in hostnet
    host = open("/etc/resolv.conf").read()
    for pod in ("dp-default", "dp-hostnet-cf"):  # the node's resolver configuration
        assert resolv(dns_lab, pod) == host
    assert resolv(dns_lab, "dp-none").splitlines() == [
        "search example.lab", f"nameserver {UPSTREAM}", "options ndots:2 edns0"]
    merged = resolv(dns_lab, "dp-merge").splitlines()
    assert merged == [f"search default.svc.{Z} svc.{Z} {Z} example.lab",
                      "nameserver 10.96.0.10", "options ndots:2"]


@pytest.mark.skipif("knetlab.addons.kubeproxy" not in MODULES,
                    reason="kube-proxy is not registered: 10.96.0.10 is not reachable")
def test_through_the_service_with_the_pods_resolv_conf(dns_lab: Lab) -> None:
    out = dns_lab.k("exec", "client", "--", "nslookup", "web")
    assert "Address: " + svc_ip(dns_lab, "web") in out
    short = dns_lab.k("exec", "client", "--", "dig", "+search", "+short", "db-0.db")
    assert short.strip() == pod_ips(dns_lab, "app=db")["db-0"]
    tcp = dns_lab.k("exec", "client", "--", "dig", "+tcp", "+short", f"kubernetes.default.svc.{Z}")
    assert tcp.strip() == "10.96.0.1"


def container_pid(rundir: object, pod: dict[str, Any], container: str) -> int:
    """The pid of a running container's program (nsenter execs it: the kubelet's pid file)."""
    pdir = runtime.pod_dir_of(rundir, pod)
    return int((runtime.container_dir(pdir, container) / "pid").read_text().split()[0])


def api_connections(pid: int) -> list[str]:
    """Process ``pid``'s established TCP connections to the kubernetes Service (10.96.0.1:443),
    as ``ss`` sees them in the process's own network namespace."""
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-Htnp", "state",
                          "established", "dst", "10.96.0.1:443"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return [line for line in out.splitlines() if f"pid={pid}," in line]


@pytest.mark.skipif("knetlab.addons.kubeproxy" not in MODULES,
                    reason="kube-proxy is not registered: 10.96.0.1 is not routed")
def test_dns_pod_is_an_in_cluster_client(dns_lab: Lab) -> None:
    """As CoreDNS: the controller stays in its pod's network namespace and watches the API
    through the kubernetes Service (service-account token, 10.96.0.1:443), and serves."""
    pod = dns_lab.k.json("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"][0]
    pid = container_pid(dns_lab.c.rundir, pod, "coredns")
    own = os.readlink(f"/proc/{pid}/ns/net")
    assert own == os.readlink(runtime.sandbox_netns(dns_lab.c.rundir, pod))
    assert own != os.readlink("/proc/self/ns/net")  # not the API server's namespace
    assert b"kubeconfig" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # its own service-account files (pods started later in other namespaces do not show)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert subprocess.run(runtime.enter_argv(pid, "/", ["cat", f"{sa}/namespace"]),
                          capture_output=True, text=True, check=True).stdout == "kube-system"
    poll(lambda: len(api_connections(pid)) >= 3, 30,
         "its informers' watches open to 10.96.0.1:443 from the pod")
    ip = svc_ip(dns_lab, "web")
    assert dns_lab.one(f"web.default.svc.{Z}") == ("NOERROR", [f"A {ip}"])


def _dns_pods(dns_lab: Lab) -> list[dict[str, Any]]:
    return [p for p in dns_lab.k.json("get", "pods", "-n", "kube-system", "-l",
                                      "k8s-app=kube-dns")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@pytest.mark.skipif("knetlab.addons.kubeproxy" not in MODULES,
                    reason="kube-proxy is not registered: 10.96.0.1 is not routed")
def test_not_ready_until_the_kubernetes_service_is_routed(dns_lab: Lab) -> None:
    """A DNS pod started before its node's kube-proxy routes 10.96.0.1 (here: a RETURN ahead
    of kube-proxy's rules, as if not synced yet) waits, not Ready, retrying with back-off;
    it is Ready soon after the Service is routed. Runs last of the lab tests: it replaces
    the DNS pod (``dns_lab.dns_ip`` follows)."""
    (old,) = _dns_pods(dns_lab)
    rule = ["PREROUTING", "-d", "10.96.0.1/32", "-p", "tcp", "-m", "comment", "--comment",
            "test: kubernetes Service not routed yet", "-j", "RETURN"]
    nodes = [dns_lab.c.node(n) for n in ("node-1", "node-2")]
    for node in nodes:  # kube-proxy's default backend in this lab: iptables legacy
        node.run(["iptables-legacy", "-t", "nat", "-I", *rule[:1], "1", *rule[1:]])
    try:
        dns_lab.k("delete", "pod", "-n", "kube-system", old["metadata"]["name"],
                  "--grace-period=0")
        new: dict[str, Any] = {}

        def waiting() -> bool:
            pods = [p for p in _dns_pods(dns_lab)
                    if p["metadata"]["name"] != old["metadata"]["name"]]
            if not pods or (pods[0].get("status") or {}).get("phase") != "Running":
                return False
            new.update(pods[0])
            return "waiting for the services informer" in dns_lab.k(
                "logs", "-n", "kube-system", pods[0]["metadata"]["name"])
        poll(waiting, 40, "the new DNS pod waiting for the API")
        name = new["metadata"]["name"]
        assert not _ready(dns_lab.k.json("get", "pod", "-n", "kube-system", name))
    finally:
        for node in nodes:
            node.run(["iptables-legacy", "-t", "nat", "-D", *rule])
    t0 = time.monotonic()
    poll(lambda: any(_ready(p) for p in _dns_pods(dns_lab)), 30,
         "the DNS pod Ready once the Service is routed")
    print(f"Ready {time.monotonic() - t0:.1f} s after the Service was routed again")
    dns_lab.dns_ip = next(p["status"]["podIP"] for p in _dns_pods(dns_lab) if _ready(p))
    assert dns_lab.one(f"web.default.svc.{Z}") == ("NOERROR", [f"A {svc_ip(dns_lab, 'web')}"])


# -- no lab ------------------------------------------------------------------------------

def test_records_model_without_a_lab() -> None:
    cfg = ZoneConfig()
    svc: dict[str, Any] = {"metadata": {"name": "h", "namespace": "ns1",
                                        "annotations": {"service.alpha.kubernetes.io/"
                                                        "tolerate-unready-endpoints": "true"}},
                           "spec": {"clusterIP": "None"}}
    sl = {"metadata": {"name": "h-1", "namespace": "ns1",
                       "labels": {"kubernetes.io/service-name": "h"}},
          "ports": [{"name": "x", "port": 9, "protocol": "UDP"}],
          "endpoints": [{"addresses": ["10.244.1.9"], "conditions": {"ready": False}}]}
    recs = build_records(cfg, [svc], [sl], [])
    assert recs["h.ns1.svc.cluster.local."] == {"h.ns1.svc.cluster.local. 5 IN A 10.244.1.9"}
    assert "_x._udp.h.ns1.svc.cluster.local." in recs
    assert reverse_zones(["10.96.0.0/12"])[0] == "100.10.in-addr.arpa." and \
        len(reverse_zones(["10.96.0.0/12"])) == 16


def test_diff_sends_only_changes() -> None:
    a, b, c = "x. 5 IN A 10.0.0.1", "x. 5 IN A 10.0.0.2", "y. 5 IN A 10.0.0.3"
    assert diff({"x.": frozenset([a])}, {"x.": frozenset([a, b])}) == ([], [b])  # grew
    assert diff({"x.": frozenset([a, b])}, {"x.": frozenset([b])}) == (["x."], [b])  # shrank
    assert diff({"x.": frozenset([a]), "y.": frozenset([c])}, {"x.": frozenset([a])}) == \
        (["y."], [])
    assert diff({"x.": frozenset([a])}, {"x.": frozenset([a])}) == ([], [])


@pytest.mark.parametrize("value,msg", [("8.8.8.8", "outside the lab"),
                                       ("not-an-ip", "not an IPv4 address"),
                                       ("10.96.0.10", "kube-dns itself")])
def test_upstream_must_be_inside_the_lab(tmp_path: Any, value: str, msg: str) -> None:
    path = write_topology(tmp_path, f"name: dns-bad\nnodes: {{count: 1}}\n"
                                    f"dns:\n  upstream: [{value}]\n")
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    text = str(err.value)
    assert msg in text and "dns.upstream" in text and "topo.yaml:4" in text


PERF_SCRIPT = """unbound
\t    7f3a __libc_sendto (/usr/lib/x86_64-linux-gnu/libc.so.6)

unbound
\tffffffff81 nf_conntrack_in ([kernel.kallsyms])
\tffffffff82 nf_hook_slow ([kernel.kallsyms])
\tffffffff83 br_nf_pre_routing ([kernel.kallsyms])
\tffffffff84 process_backlog ([kernel.kallsyms])
\tffffffff85 net_rx_action ([kernel.kallsyms])
\tffffffff86 __local_bh_enable_ip ([kernel.kallsyms])
\tffffffff87 __sys_sendto ([kernel.kallsyms])

unbound
\tffffffff88 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff89 try_to_wake_up ([kernel.kallsyms])
\tffffffff8a sock_def_readable ([kernel.kallsyms])
\tffffffff84 process_backlog ([kernel.kallsyms])
\tffffffff85 net_rx_action ([kernel.kallsyms])

unbound
\tffffffff8b fib_table_lookup ([kernel.kallsyms])
\tffffffff84 process_backlog ([kernel.kallsyms])
\tffffffff85 net_rx_action ([kernel.kallsyms])

unbound
\tffffffff8c udp_sendmsg ([kernel.kallsyms])
\tffffffff87 __sys_sendto ([kernel.kallsyms])

unbound
\tffffffff8d __skb_recv_udp ([kernel.kallsyms])
\tffffffff8e __sys_recvfrom ([kernel.kallsyms])
"""


def test_bench_splits_server_time_by_perf_stack() -> None:
    """The DNS bench's split of the server core: user code, its own system calls, and the
    reply's network path run in its context (netfilter, waking the client, forwarding)."""
    from knetlab.bench.dns import split_samples
    assert split_samples(PERF_SCRIPT) == {
        "user": 1, "path: netfilter": 1, "path: wake the client": 1, "path: forwarding": 1,
        "syscall: send": 1, "syscall: receive": 1}


def test_bench_cpu_time_is_exact() -> None:
    """schedstat nanoseconds, not 4 ms ticks: 30 ms of busy loop reads as 30 ms +- 10."""
    from knetlab.bench.dns import cpu_ns
    before, t0 = cpu_ns(os.getpid()), time.thread_time()
    while time.thread_time() - t0 < 0.03:
        pass
    assert 0.025 <= (cpu_ns(os.getpid()) - before) / 1e9 <= 0.045
