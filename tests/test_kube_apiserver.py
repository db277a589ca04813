"""The API server against the REAL clients: kubectl (the dispatcher /usr/bin/kubectl and the
venv's 1.37) and the official Python client, over etcd, in a temp run dir (no lab)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import needs_root, poll

import knetlab.rundir as rundir_mod
from knetlab.kube.etcd import EtcdDaemon, free_port
from knetlab.kube.pki import make_pki
from knetlab.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
VENV_KUBECTL = str(Path(sys.executable).parent / "kubectl")
KUBECTLS = [k for k in ("/usr/bin/kubectl", VENV_KUBECTL) if shutil.which(k)]

pytestmark = pytest.mark.skipif(not shutil.which("etcd") or not KUBECTLS,
                                reason="needs etcd and kubectl")


# -- helpers the lead may reuse ---------------------------------------------------------------
def kubectl(kubeconfig: Path | str, *args: str, binary: str = VENV_KUBECTL,
            input: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a real kubectl against the lab; raise with its stderr when ``check`` fails."""
    proc = subprocess.run([binary, "--kubeconfig", str(kubeconfig), *args], input=input,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


def kubectl_json(kubeconfig: Path | str, *args: str, binary: str = VENV_KUBECTL) -> dict:
    return json.loads(kubectl(kubeconfig, *args, "-o", "json", binary=binary).stdout)


def api_client(kubeconfig: Path | str):  # noqa: ANN201 - kubernetes.client.ApiClient
    from kubernetes import client, config
    return config.new_client_from_config(str(kubeconfig)), client


class Cluster:
    """etcd + API server in a temp run dir; ``restart_apiserver`` keeps etcd."""

    def __init__(self, base: Path) -> None:
        from knetlab.kube.apiserver import ApiServerDaemon

        rundir_mod.BASE = base
        self.rundir = RunDir("apitest")
        self.rundir.create()
        self.port = free_port()
        self.kubeconfig = make_pki(self.rundir.path / "kube", f"https://127.0.0.1:{self.port}")
        self.etcd = EtcdDaemon(self.rundir)
        self.etcd.start()
        self.api = ApiServerDaemon(self.rundir, etcd_url=self.etcd.client_url, port=self.port)
        self.api.start()

    def restart_apiserver(self) -> None:
        self.api.stop()
        self.api.start()

    def stop(self) -> None:
        self.api.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    old = rundir_mod.BASE
    c = Cluster(tmp_path_factory.mktemp("run"))
    try:
        yield c
    finally:
        c.stop()
        rundir_mod.BASE = old


DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: %(name)s, namespace: %(ns)s}
spec:
  selector: {matchLabels: {app: %(name)s}}
  template:
    metadata: {labels: {app: %(name)s}}
    spec:
      containers:
      - name: web
        image: %(image)s
        ports: [{containerPort: 80}, {containerPort: 8080}]
"""


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", KUBECTLS)
def test_discovery_and_version(cluster: Cluster, binary: str) -> None:
    out = kubectl(cluster.kubeconfig, "api-resources", binary=binary).stdout
    for row in ("deployments", "deploy", "endpointslices", "networkpolicies", "leases"):
        assert row in out
    assert "v1.33.0-knetlab" in kubectl(cluster.kubeconfig, "version", binary=binary).stdout
    kubectl(cluster.kubeconfig, "get", "all", "-A", binary=binary)


def test_unauthorized_without_token(cluster: Cluster) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.rundir.path / "kube" / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://127.0.0.1:{cluster.port}/api/v1/pods", context=ctx)
    assert err.value.code == 401
    status = json.loads(err.value.read())
    assert status["kind"] == "Status" and status["reason"] == "Unauthorized"
    for name in ("ca.key", "apiserver.key", "token", "kubeconfig"):
        assert (cluster.rundir.path / "kube" / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("binary", KUBECTLS)
def test_create_get_list_selectors(cluster: Cluster, binary: str) -> None:
    kc, ns = cluster.kubeconfig, f"ls{KUBECTLS.index(binary)}"
    kubectl(kc, "create", "namespace", ns, binary=binary)
    kubectl(kc, "run", "p1", "-n", ns, "--image=busybox", "-l", "app=one", "--", "sleep", "1",
            binary=binary)
    kubectl(kc, "run", "p2", "-n", ns, "--image=busybox:1.36", "-l", "app=two", binary=binary)
    wide = kubectl(kc, "get", "pods", "-n", ns, "-o", "wide", binary=binary).stdout
    assert "NOMINATED NODE" in wide and "Pending" in wide and "p2" in wide
    everywhere = kubectl(kc, "get", "pods", "-A", binary=binary).stdout
    assert any(line.split()[:2] == [ns, "p1"] for line in everywhere.splitlines())
    sel = kubectl(kc, "get", "pods", "-n", ns, "-l", "app in (two,three)", binary=binary).stdout
    assert "p2" in sel and "p1" not in sel
    notsel = kubectl(kc, "get", "pods", "-n", ns, "-l", "app!=two", binary=binary).stdout
    assert "p1" in notsel and "p2" not in notsel
    fsel = kubectl(kc, "get", "pods", "-A", "--field-selector", "metadata.name=p1",
                   binary=binary).stdout
    assert "p1" in fsel and "p2" not in fsel
    pod = yaml.safe_load(kubectl(kc, "get", "pod", "p2", "-n", ns, "-o", "yaml",
                                 binary=binary).stdout)
    c = pod["spec"]["containers"][0]
    assert pod["status"]["phase"] == "Pending" and pod["status"]["qosClass"] == "BestEffort"
    assert c["imagePullPolicy"] == "IfNotPresent" and c["terminationMessagePath"]
    assert pod["spec"]["restartPolicy"] == "Always"
    chunk = kubectl(kc, "get", "pods", "-A", "--chunk-size=1", binary=binary).stdout
    assert "p1" in chunk and "p2" in chunk


@pytest.mark.parametrize("binary", KUBECTLS)
def test_apply_twice_keeps_ports_and_patches(cluster: Cluster, binary: str) -> None:
    kc, name = cluster.kubeconfig, f"app{KUBECTLS.index(binary)}"
    args = {"name": name, "ns": "default"}
    kubectl(kc, "apply", "-f", "-", input=DEPLOY % {**args, "image": "nginx:1.25"},
            binary=binary)
    kubectl(kc, "apply", "-f", "-", input=DEPLOY % {**args, "image": "nginx:1.26"},
            binary=binary)
    d = kubectl_json(kc, "get", "deploy", name, binary=binary)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "nginx:1.26"
    assert [p["containerPort"] for p in c["ports"]] == [80, 8080]
    assert d["metadata"]["generation"] == 2 and d["spec"]["strategy"]["type"] == "RollingUpdate"
    kubectl(kc, "scale", "deploy", name, "--replicas=3", binary=binary)
    kubectl(kc, "patch", "deploy", name, "--type=merge", "-p",
            '{"metadata":{"labels":{"tier":"web"}}}', binary=binary)
    kubectl(kc, "patch", "deploy", name, "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}',
            binary=binary)
    kubectl(kc, "patch", "deploy", name, "--type=json", "-p",
            '[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]', binary=binary)
    d = kubectl_json(kc, "get", "deploy", name, binary=binary)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert d["spec"]["replicas"] == 3 and d["metadata"]["labels"]["tier"] == "web"
    assert c["image"] == "nginx:1.27" and len(c["ports"]) == 2
    assert d["spec"]["revisionHistoryLimit"] == 3
    out = kubectl(kc, "get", "deploy", name, "-o", "wide", binary=binary).stdout
    assert "0/3" in out and f"app={name}" in out


def test_create_deployment_protobuf_and_invalid(cluster: Cluster) -> None:
    kc = cluster.kubeconfig
    for binary in KUBECTLS:  # both send protobuf bodies for typed creates
        name = f"pb{KUBECTLS.index(binary)}"
        kubectl(kc, "create", "deployment", name, "--image=nginx", "--port=80", binary=binary)
        d = kubectl_json(kc, "get", "deployment", name)
        assert d["spec"]["selector"]["matchLabels"] == {"app": name}
        assert d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    kubectl(kc, "expose", "deployment", "pb0", "--port=80", "--target-port=80")
    svc = kubectl_json(kc, "get", "svc", "pb0")
    assert svc["spec"]["clusterIP"].startswith("10.") and svc["spec"]["ports"][0]["protocol"] \
        == "TCP"
    bad = DEPLOY.replace("selector: {matchLabels: {app: %(name)s}}", "selector: {}")
    proc = kubectl(kc, "create", "-f", "-", input=bad % {"name": "bad", "ns": "default",
                                                           "image": "x"}, check=False)
    assert proc.returncode != 0
    assert 'The Deployment "bad" is invalid' in proc.stderr and "spec.selector" in proc.stderr
    proc = kubectl(kc, "create", "deployment", "pb0", "--image=nginx", check=False)
    assert "AlreadyExists" in proc.stderr or "already exists" in proc.stderr


def test_strict_field_validation_and_explain(cluster: Cluster) -> None:
    kc = cluster.kubeconfig
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict}\ndata: {a: b}\nfoo: 1\n"
    proc = kubectl(kc, "apply", "--validate=strict", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0 and 'unknown field "foo"' in proc.stderr
    out = kubectl(kc, "explain", "deployment.spec.strategy").stdout
    assert "DeploymentStrategy" in out or "rollingUpdate" in out


def test_stale_update_conflicts_and_dry_run(cluster: Cluster) -> None:
    api, client = api_client(cluster.kubeconfig)
    v1 = client.CoreV1Api(api)
    cm = v1.create_namespaced_config_map("default", {"metadata": {"name": "stale"},
                                                     "data": {"a": "1"}})
    v1.patch_namespaced_config_map("stale", "default", {"data": {"b": "2"}})
    cm.data["c"] = "3"
    with pytest.raises(client.ApiException) as err:
        v1.replace_namespaced_config_map("stale", "default", cm)
    assert err.value.status == 409
    assert "the object has been modified" in json.loads(err.value.body)["message"]
    v1.create_namespaced_config_map("default", {"metadata": {"name": "dry"}}, dry_run="All")
    with pytest.raises(client.ApiException) as err:
        v1.read_namespaced_config_map("dry", "default")
    assert err.value.status == 404


def test_get_watch_receives_event(cluster: Cluster) -> None:
    kc = cluster.kubeconfig
    kubectl(kc, "create", "configmap", "watched", "--from-literal=a=1")
    proc = subprocess.Popen([VENV_KUBECTL, "--kubeconfig", str(kc), "get", "configmaps", "-w",
                             "--request-timeout=20s"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
    threading.Thread(target=read, daemon=True).start()
    try:
        poll(lambda: any("watched" in ln for ln in lines), 10, "initial list")
        kubectl(kc, "create", "configmap", "newcomer", "--from-literal=b=2")
        poll(lambda: any("newcomer" in ln for ln in lines), 10, "watch event for newcomer")
    finally:
        proc.kill()
        proc.wait()


def test_watch_resumes_after_restart(cluster: Cluster) -> None:
    api, client = api_client(cluster.kubeconfig)
    v1 = client.CoreV1Api(api)
    cm = v1.create_namespaced_config_map("default", {"metadata": {"name": "survivor"},
                                                     "data": {"v": "0"}})
    rv = cm.metadata.resource_version
    cluster.restart_apiserver()
    api, client = api_client(cluster.kubeconfig)
    v1 = client.CoreV1Api(api)
    assert v1.read_namespaced_config_map("survivor", "default").data == {"v": "0"}
    v1.patch_namespaced_config_map("survivor", "default", {"data": {"v": "1"}})
    v1.patch_namespaced_config_map("survivor", "default", {"data": {"v": "2"}})
    from kubernetes import watch
    seen = []
    for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                   resource_version=rv, timeout_seconds=3,
                                   field_selector="metadata.name=survivor"):
        seen.append((ev["type"], ev["object"].data["v"]))
        if len(seen) == 2:
            break
    assert seen == [("MODIFIED", "1"), ("MODIFIED", "2")]
    # A resume point etcd compacted away: an ERROR event with a 410 Status (client relists).
    req = urllib.request.Request(f"{cluster.etcd.client_url}/v3/kv/compaction",
                                 data=json.dumps({"revision": str(int(
                                     v1.read_namespaced_config_map("survivor", "default")
                                     .metadata.resource_version))}).encode(), method="POST")
    from knetlab.kube.etcd import client_ssl
    urllib.request.urlopen(req, context=client_ssl(cluster.rundir.path / "kube")).read()
    old = str(int(rv) - 1)  # older than the restarted server's buffer: etcd must serve it
    first = next(iter(raw_watch(cluster, "/api/v1/namespaces/default/configmaps", old)))
    assert first["type"] == "ERROR" and first["object"]["code"] == 410


def raw_watch(cluster: Cluster, path: str, rv: str, timeout: int = 2) -> Iterator[dict]:
    """Watch events as the wire carries them (JSON lines)."""
    token = (cluster.rundir.path / "kube" / "token").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(cluster.rundir.path / "kube" / "ca.crt"))
    req = urllib.request.Request(
        f"https://127.0.0.1:{cluster.port}{path}?watch=true&resourceVersion={rv}"
        f"&timeoutSeconds={timeout}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx) as r:
        for line in r:
            yield json.loads(line)


def test_delete_namespace_and_graceful_pod(cluster: Cluster) -> None:
    kc = cluster.kubeconfig
    kubectl(kc, "create", "namespace", "doomed")
    kubectl(kc, "create", "configmap", "x", "-n", "doomed")
    kubectl(kc, "run", "bound", "-n", "doomed", "--image=busybox")
    api, client = api_client(kc)
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_binding("doomed", {"metadata": {"name": "bound"},
                                            "target": {"kind": "Node", "name": "n1"}},
                                 _preload_content=False)
    assert v1.read_namespaced_pod("bound", "doomed").spec.node_name == "n1"
    proc = kubectl(kc, "delete", "namespace", "doomed", "--wait=false")
    assert "deleted" in proc.stdout
    # the namespace deleter marks the bound pod (graceful: it waits for a kubelet)
    poll(lambda: v1.read_namespaced_pod("bound", "doomed").metadata.deletion_timestamp, 10,
         "pod bound marked for deletion")
    assert v1.read_namespace("doomed").status.phase == "Terminating"
    assert "Terminating" in kubectl(kc, "get", "pod", "bound", "-n", "doomed").stdout
    v1.delete_namespaced_pod("bound", "doomed", grace_period_seconds=0)
    poll(lambda: kubectl(kc, "get", "ns", "doomed", check=False).returncode != 0, 10,
         "namespace doomed gone")


# The pod's "pause": lo up in its own netns, a TCP echo on 127.0.0.1:8080 for port-forward.
SANDBOX = """
import socket, subprocess, threading
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.create_server(("127.0.0.1", 8080))
def serve(c):
    with c:
        c.sendall(b"pong:" + c.recv(100))
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""


def port_forward_roundtrip(kubeconfig: Path, pod: str, binary: str) -> bytes:
    """``kubectl port-forward`` to port 8080 of the pod; send "ping", return the answer."""
    local = free_port()
    proc = subprocess.Popen([binary, "--kubeconfig", str(kubeconfig), "port-forward",
                             f"pod/{pod}", f"{local}:8080"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:N -> 8080"
        assert "Forwarding from" in line, line + (proc.stderr.read() if proc.stderr else "")
        import socket
        with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
            s.sendall(b"ping")
            data = b""
            while len(data) < 9:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
        return data
    finally:
        proc.kill()
        proc.wait()


@needs_root
def test_logs_exec_port_forward(cluster: Cluster) -> None:
    kc = cluster.kubeconfig
    kubectl(kc, "run", "shell", "--image=busybox")
    api, client = api_client(kc)
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_binding("default", {"metadata": {"name": "shell"},
                                             "target": {"kind": "Node", "name": "n1"}},
                                 _preload_content=False)
    # the kubelet's part, through the status subresource: port-forward wants Running
    v1.patch_namespaced_pod_status("shell", "default", {"status": {"phase": "Running"}})
    pod = v1.read_namespaced_pod("shell", "default")
    assert pod.status.phase == "Running" and pod.spec.node_name == "n1"
    pdir = (cluster.rundir.path / "nodes" / "n1" / "pods" /
            f"default_shell_{pod.metadata.uid}")
    cdir = pdir / "containers" / "shell"
    cdir.mkdir(parents=True)
    (cdir / "0.log").write_text("line one\nline two\n")
    (cdir / "exec.json").write_text(json.dumps({"env": {"GREETING": "hello"},
                                                "workingDir": "/tmp", "hostNetwork": False}))
    sandbox = subprocess.Popen(["unshare", "--net", "--uts", "--", sys.executable, "-c",
                                SANDBOX, str(pdir)])
    try:
        (pdir / "sandbox.pid").write_text(f"{sandbox.pid}\n")
        assert kubectl(kc, "logs", "shell").stdout == "line one\nline two\n"
        assert kubectl(kc, "logs", "shell", "--tail=1").stdout == "line two\n"
        for binary in KUBECTLS:
            out = kubectl(kc, "exec", "shell", "--", "sh", "-c",
                          "echo $GREETING; pwd; ip -o link | wc -l", binary=binary).stdout
            assert out.split() == ["hello", "/tmp", "1"]  # only lo: the pod's netns
            proc = kubectl(kc, "exec", "shell", "--", "sh", "-c", "exit 3", binary=binary,
                           check=False)
            assert proc.returncode == 3
        out = kubectl(kc, "exec", "-i", "shell", "--", "cat", input="piped\n").stdout
        assert out == "piped\n"
        for binary in KUBECTLS:
            assert port_forward_roundtrip(kc, "shell", binary) == b"pong:ping"
    finally:
        sandbox.kill()
        sandbox.wait()
        os.environ.pop("UNUSED", None)


def test_restart_is_fast(cluster: Cluster) -> None:
    t0 = time.monotonic()
    cluster.restart_apiserver()
    assert time.monotonic() - t0 < 3.0


def test_invalid_services_and_endpoints_get_real_statuses(cluster: Cluster) -> None:
    """The issue's bad Services and hand-made endpoints, refused with the Status a real API
    server returns (kubectl prints its causes)."""
    kc = cluster.kubeconfig

    def create(text: str) -> str:
        proc = kubectl(kc, "create", "-f", "-", input=text, check=False)
        assert proc.returncode != 0, proc.stdout
        return proc.stderr

    def svc(name: str, spec: str) -> str:
        return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n"

    err = create(svc("dup", "{ports: [{name: a, port: 80}, {name: b, port: 80}]}"))
    assert 'The Service "dup" is invalid: spec.ports[1]: Duplicate value: ' \
           'core.ServicePort{Name:"", Protocol:"TCP"' in err
    err = create(svc("np", "{type: NodePort, ports: [{name: a, port: 80, nodePort: 30100}, "
                     "{name: b, port: 81, nodePort: 30100}]}"))
    assert "spec.ports[1].nodePort: Duplicate value: 30100" in err
    err = create(svc("range", "{type: NodePort, ports: [{port: 80, nodePort: 99}]}"))
    assert "spec.ports[0].nodePort: Invalid value: 99: provided port is not in the valid " \
           "range. The range of valid ports is 30000-32767" in err
    kubectl(kc, "create", "-f", "-", input=svc("taken", "{type: NodePort, clusterIP: "
                                               "10.96.0.50, ports: [{port: 80, nodePort: "
                                               "30200}]}"))
    err = create(svc("taken2", "{type: NodePort, ports: [{port: 80, nodePort: 30200}]}"))
    assert "spec.ports[0].nodePort: Invalid value: 30200: provided port is already " \
           "allocated" in err
    err = create(svc("ipout", "{clusterIP: 10.200.0.1, ports: [{port: 80}]}"))
    assert "the provided IP (10.200.0.1) is not in the valid range. The range of valid " \
           "IPs is 10.96.0.0/12" in err
    err = create(svc("iptaken", "{clusterIP: 10.96.0.50, ports: [{port: 80}]}"))
    assert "provided IP is already allocated" in err
    err = create(svc("proto", "{ports: [{port: 80, protocol: ICMP}]}"))
    assert 'spec.ports[0].protocol: Unsupported value: "ICMP"' in err

    # a selector-less Service's hand-made endpoints: anywhere but special addresses
    slice_ = ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext-1, "
              "labels: {kubernetes.io/service-name: ext}}\naddressType: IPv4\n"
              "ports: [{port: 80}]\nendpoints: [{addresses: [%s]}]\n")
    err = create(slice_ % "127.0.0.1")
    assert 'endpoints[0].addresses[0]: Invalid value: "127.0.0.1": may not be in the ' \
           'loopback range (127.0.0.0/8, ::1/128)' in err
    err = create(slice_ % "169.254.1.1")
    assert "may not be in the link-local range" in err
    kubectl(kc, "create", "-f", "-", input=slice_ % "192.0.2.10")  # outside: allowed
    err = create("apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext2}\n"
                 "subsets: [{addresses: [{ip: 127.0.0.2}], ports: [{port: 80}]}]\n")
    assert 'subsets[0].addresses[0].ip: Invalid value: "127.0.0.2": may not be in the ' \
           'loopback range' in err
