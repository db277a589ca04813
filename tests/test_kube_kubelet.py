"""The kubelet and its container runtime with real namespaces: the sandbox on its own (own
hostname, /etc/hosts, resolv.conf, own overlay root, nothing left behind), then a kubelet
against a throwaway etcd + API server with knetlab's bridge CNI in a throwaway node netns:
a busybox pod Running with an IP and logs, a killed container restarted, a readiness probe
flipping Ready, deletion leaving nothing, an unknown image -> ErrImagePull."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import needs_root, poll

from knetlab.cni.runtime import KNETLAB_PLUGINS, CNIRuntime
from knetlab.kube import runtime
from knetlab.kube.sandboxes import Sandbox
from knetlab.rundir import RunDir

pytestmark = needs_root


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"klt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield f"/var/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def run_base() -> Iterator[Path]:
    """A lab run dir under /run, where real labs live (the sandbox binds /run)."""
    path = Path(f"/run/knetlab-test-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def conf_list(base: Path, subnet: str = "10.78.0.0/24") -> dict:
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                       "dataDir": str(base / "ipam")}}
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [bridge]}


def in_pod(pid: int, *argv: str, check: bool = True) -> str:
    return subprocess.run(runtime.enter_argv(pid, "/", list(argv)), capture_output=True,
                          text=True, check=check).stdout


def host_mounts_with(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if text in line]


def fake_kubelet(base: Path, node_ns: str) -> SimpleNamespace:
    rd = RunDir(base.name)
    rd.path = base
    cni = CNIRuntime(conf_list(base), [KNETLAB_PLUGINS], base / "cni", plugin_netns=node_ns)
    return SimpleNamespace(node="n1", rundir_obj=rd, node_netns=node_ns, node_ip="10.78.0.1",
                           cluster_dns="10.96.0.10", cluster_domain="cluster.local", cni=cni,
                           watch_pid=lambda pid, key: None)


def test_sandbox_alone(run_base: Path, node_ns: str) -> None:
    k = fake_kubelet(run_base, node_ns)
    uid = str(uuid.uuid4())
    pdir = runtime.pod_dir(run_base, "n1", "default", "web-0", uid)
    sb = Sandbox(k, pdir, "default", "web-0", uid)  # type: ignore[arg-type]
    sb.create({"spec": {"hostname": "web", "subdomain": "sub"}}, host_network=False)
    try:
        pid = sb.pid
        assert pid and sb.ip and sb.ip.startswith("10.78.0.")
        assert in_pod(pid, "hostname").strip() == "web"
        hosts = in_pod(pid, "cat", "/etc/hosts")
        assert hosts.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
        assert f"{sb.ip}\tweb.sub.default.svc.cluster.local\tweb\n" in hosts
        resolv = in_pod(pid, "cat", "/etc/resolv.conf")
        assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
        assert "nameserver 10.96.0.10" in resolv and "options ndots:5" in resolv
        assert f"inet {sb.ip}/24" in in_pod(pid, "ip", "-4", "addr", "show", "eth0")
        # the pod's own root: what it writes stays in the pod
        in_pod(pid, "sh", "-c", "echo mine > /etc/knetlab-pod-file; echo t > /tmp/pod-tmp")
        assert not Path("/etc/knetlab-pod-file").exists()
        assert (pdir / "upper" / "etc" / "knetlab-pod-file").exists()
        assert not Path("/tmp/pod-tmp").exists()
        # files an image asks for, written from the host through the pause's root
        sb.write("/agnhost", "#!/bin/sh\necho agnhost \"$@\"\n", 0o755)
        assert in_pod(pid, "/agnhost", "pause").strip() == "agnhost pause"
        assert not Path("/agnhost").exists()
        assert not host_mounts_with(str(pdir))  # the overlay is only in the pod's mounts
        assert runtime.sandbox_netns(run_base, {"metadata": {"namespace": "default",
                                                             "name": "web-0", "uid": uid},
                                                "spec": {"nodeName": "n1"}}) == \
            f"/proc/{pid}/ns/net"
    finally:
        sb.teardown()
    assert not runtime.pid_alive(pid, str(pdir))
    assert not pdir.exists()
    assert not host_mounts_with(str(pdir))
    node_links = subprocess.run(["ip", "-n", os.path.basename(node_ns), "-o", "link"],
                                capture_output=True, text=True).stdout
    assert "veth" not in node_links


class RecordingClient:
    """Stands in for the API server (not written yet when this test was): it keeps the
    last status the kubelet patched per pod and the deletions it asked for."""

    def __init__(self) -> None:
        self.status: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.events: dict[str, dict] = {}  # name -> Event, as created then patched
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, ns, name) -> obj
        # what the kubelet copies into every pod's service-account files
        self.token, self.ca_data = "recording-token", b"(the lab CA would be here)\n"

    def patch(self, resource: str, name: str, body: dict, namespace: str | None = None,
              subresource: str = "", kind: str = "merge") -> dict:
        if resource == "events":
            self.events[name].update(body)
            return self.events[name]
        self.status[f"{namespace}/{name}"] = body["status"]
        return body

    def create(self, resource: str, obj: dict, namespace: str | None = None) -> dict:
        assert resource == "events", resource
        self.events[obj["metadata"]["name"]] = obj
        return obj

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict:
        from knetlab.kube.client import ApiError
        obj = self.objects.get((resource, namespace or "", name))
        if obj is None:
            raise ApiError(404, {"code": 404, "reason": "NotFound"})
        return obj

    def reasons(self, pod: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ev in list(self.events.values()):
            if ev["involvedObject"]["name"] == pod:
                out.setdefault(ev["reason"], []).append(ev["message"])
        return out

    def delete(self, resource: str, name: str, namespace: str | None = None, **_: object
               ) -> None:
        self.deleted.append(f"{namespace}/{name}")


def make_pod(name: str, image: str, command: list[str], **container: object) -> dict:
    return {"metadata": {"namespace": "default", "name": name, "uid": str(uuid.uuid4()),
                         "resourceVersion": "1"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always",
                     "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "image": image, "command": command,
                                     **container}]},
            "status": {"phase": "Pending"}}


def test_pod_lifecycle_in_process(run_base: Path, node_ns: str) -> None:
    """The real Kubelet and PodWorker, fed pods through the informer's cache."""
    from knetlab.kube.kubelet import Kubelet

    fk = fake_kubelet(run_base, node_ns)
    client = RecordingClient()
    k = Kubelet(client, run_base, "n1", node_ns, "10.78.0.1", "10.78.0.0/24",  # type: ignore[arg-type]
                fk.cni, cluster_dns="10.96.0.10")
    import threading
    threading.Thread(target=k._monitor, daemon=True).start()
    for _ in range(2):
        threading.Thread(target=k._work, daemon=True).start()

    def put(pod: dict) -> None:
        k.informer._cache[f"default/{pod['metadata']['name']}"] = pod
        k.queue.add(f"default/{pod['metadata']['name']}")

    def cstatus(name: str) -> dict:
        return (client.status.get(f"default/{name}", {}).get("containerStatuses") or [{}])[0]

    def cond(name: str, kind: str) -> str:
        for c in client.status.get(f"default/{name}", {}).get("conditions", []):
            if c["type"] == kind:
                return c["status"]
        return ""

    web = make_pod("web", "busybox", ["sh", "-c", "echo hi; sleep 600"],
                   readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]},
                                   "periodSeconds": 1, "failureThreshold": 1})
    bad = make_pod("bad", "nosuchimage:1", ["true"])
    try:
        put(web)
        put(bad)
        poll(lambda: "running" in cstatus("web").get("state", {}), 10, "web running")
        st = client.status["default/web"]
        assert st["phase"] == "Running" and st["podIP"].startswith("10.78.0.")
        assert cstatus("web")["ready"] is False and cond("web", "Ready") == "False"
        poll(lambda: runtime.log_path(run_base, web, "c").read_text() == "hi\n", 5,
             f"log {runtime.log_path(run_base, web, 'c').read_text()!r}")
        pid = runtime.sandbox_pid(run_base, web)
        in_pod(pid, "touch", "/tmp/ready")
        poll(lambda: cond("web", "Ready") == "True", 5, "ready after the probe passes")
        in_pod(pid, "rm", "/tmp/ready")
        poll(lambda: cond("web", "Ready") == "False", 5, "unready after it fails")
        # a killed container is restarted at once (first restart), its log kept
        cpid = int((runtime.container_dir(runtime.pod_dir_of(run_base, web), "c") / "pid")
                   .read_text())
        os.kill(cpid, 9)
        poll(lambda: cstatus("web").get("restartCount") == 1
             and "running" in cstatus("web")["state"], 10, "restarted")
        assert cstatus("web")["lastState"]["terminated"]["exitCode"] == 137
        assert runtime.log_path(run_base, web, "c", previous=True).read_text() == "hi\n"
        poll(lambda: runtime.log_path(run_base, web, "c").name == "1.log", 5, "new log")
        # an image knetlab does not have
        poll(lambda: cstatus("bad").get("state", {}).get("waiting", {}).get("reason")
             == "ErrImagePull", 10, "ErrImagePull")
        assert client.status["default/bad"]["phase"] == "Pending"
        assert "is not built into knetlab" in cstatus("bad")["state"]["waiting"]["message"]
    finally:
        for pod in (web, bad):
            pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = 1
            put(pod)
        poll(lambda: set(client.deleted) == {"default/bad", "default/web"}, 10,
             "both deleted with grace 0")
        # Its threads must not outlive the test (they would act on later tests' pids).
        k._stop.set()
        k.queue.shutdown()
        k.prober.stop()
    assert not (run_base / "nodes" / "n1" / "pods").exists() or not any(
        (run_base / "nodes" / "n1" / "pods").iterdir())
    assert not host_mounts_with(str(run_base))
    node_links = subprocess.run(["ip", "-n", os.path.basename(node_ns), "-o", "link"],
                                capture_output=True, text=True).stdout
    assert "veth" not in node_links


def start_kubelet(run_base: Path, node_ns: str, client: RecordingClient) -> object:
    """The real Kubelet with its workers and pidfd monitor, fed pods through ``put``."""
    import threading

    from knetlab.kube.kubelet import Kubelet

    fk = fake_kubelet(run_base, node_ns)
    k = Kubelet(client, run_base, "n1", node_ns, "10.78.0.1", "10.78.0.0/24",  # type: ignore[arg-type]
                fk.cni, cluster_dns="10.96.0.10")
    threading.Thread(target=k._monitor, daemon=True).start()
    for _ in range(2):
        threading.Thread(target=k._work, daemon=True).start()
    return k


def test_events_volumes_and_env_from_objects(run_base: Path, node_ns: str) -> None:
    """Events as describe shows them; ConfigMap/Secret env and volumes, emptyDir,
    downwardAPI; a ConfigMap change reaching the mounted file; a missing ConfigMap."""
    import base64

    client = RecordingClient()
    k = start_kubelet(run_base, node_ns, client)
    client.objects[("configmaps", "default", "cfg")] = {
        "data": {"greeting": "hello", "color": "blue"}}
    client.objects[("secrets", "default", "sec")] = {
        "data": {"password": base64.b64encode(b"s3cret").decode()}}

    def put(pod: dict) -> None:
        k.informer._cache[f"default/{pod['metadata']['name']}"] = pod  # type: ignore[attr-defined]
        k.queue.add(f"default/{pod['metadata']['name']}")  # type: ignore[attr-defined]

    def cstatus(name: str) -> dict:
        return (client.status.get(f"default/{name}", {}).get("containerStatuses") or [{}])[0]

    web = make_pod(
        "web", "busybox", ["sh", "-c", "echo $$ > /scratch/pid; exec sleep 600"],
        env=[{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg",
                                                                     "key": "greeting"}}},
             {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
             {"name": "NONE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x",
                                                                 "optional": True}}}],
        envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"},
                      {"name": "sec", "mountPath": "/etc/sec", "readOnly": True},
                      {"name": "scratch", "mountPath": "/scratch"},
                      {"name": "info", "mountPath": "/etc/podinfo"},
                      {"name": "cfg", "mountPath": "/etc/color.txt", "subPath": "color"}],
        readinessProbe={"exec": {"command": ["cat", "/tmp/nope"]}, "periodSeconds": 1})
    web["metadata"]["labels"] = {"app": "web"}
    web["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]
    lost = make_pod("lost", "busybox", ["sleep", "600"],
                    envFrom=[{"configMapRef": {"name": "missing"}}])
    try:
        put(web)
        put(lost)
        poll(lambda: "running" in cstatus("web").get("state", {}), 10, "web running")
        pid = runtime.sandbox_pid(run_base, web)
        assert in_pod(pid, "cat", "/etc/cfg/greeting") == "hello"
        assert in_pod(pid, "cat", "/etc/sec/password") == "s3cret"
        assert in_pod(pid, "stat", "-c", "%a", "/etc/sec/password").strip() == "400"
        assert in_pod(pid, "cat", "/etc/podinfo/labels") == 'app="web"'
        assert in_pod(pid, "cat", "/etc/podinfo/name") == "web"
        assert in_pod(pid, "cat", "/etc/color.txt") == "blue"
        assert in_pod(pid, "touch", "/etc/sec/x", check=False) == ""  # read-only
        assert not (runtime.pod_dir_of(run_base, web) / "volumes" / "sec" / "x").exists()
        poll(lambda: in_pod(pid, "cat", "/scratch/pid", check=False).strip().isdigit(), 10,
             "the container wrote into its emptyDir")
        cpid = int(in_pod(pid, "cat", "/scratch/pid"))
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{cpid}/environ").read_text()
                   .split("\0") if "=" in kv)
        assert env["GREETING"] == "hello" and env["PW"] == "s3cret"
        assert env["CFG_color"] == "blue" and "NONE" not in env
        # the host never sees the pod's mounts
        assert not host_mounts_with(str(run_base))
        # a ConfigMap change reaches the mounted file within the refresh period
        client.objects[("configmaps", "default", "cfg")] = {
            "data": {"greeting": "bonjour", "color": "blue"}}
        poll(lambda: in_pod(pid, "cat", "/etc/cfg/greeting") == "bonjour", 10, "updated")
        # a ConfigMap that does not exist: the container waits, the event says why
        poll(lambda: cstatus("lost").get("state", {}).get("waiting", {}).get("reason")
             == "CreateContainerConfigError", 10, "CreateContainerConfigError")
        assert 'configmap "missing" not found' in cstatus("lost")["state"]["waiting"][
            "message"]
        # the events describe shows
        poll(lambda: {"Pulled", "Created", "Started", "Unhealthy"} <= set(
            client.reasons("web")), 10, "events of web")
        ev = client.reasons("web")
        assert ev["Pulled"] == ['Container image "busybox" already present on machine']
        assert ev["Started"] == ["Started container c"]
        assert ev["Unhealthy"][0].startswith("Readiness probe failed:")
        poll(lambda: any(e["reason"] == "Unhealthy" and e["count"] > 1
                         for e in client.events.values()), 10, "a repeated event counted")
        poll(lambda: "Error: couldn't find key" in str(client.reasons("lost"))
             or 'Error: configmap "missing" not found' in client.reasons("lost").get(
                 "Failed", []), 10, "Failed event of lost")
    finally:
        for pod in (web, lost):
            pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = 1
            put(pod)
        poll(lambda: set(client.deleted) == {"default/web", "default/lost"}, 10, "deleted")
        k._stop.set()  # type: ignore[attr-defined]
        k.queue.shutdown()  # type: ignore[attr-defined]
        k.prober.stop()  # type: ignore[attr-defined]
    poll(lambda: "Killing" in client.reasons("web"), 5, "Killing event")
    assert client.reasons("web")["Killing"] == ["Stopping container c"]
    assert not host_mounts_with(str(run_base))


def test_restarted_kubelet_adopts_running_pods(run_base: Path, node_ns: str) -> None:
    """A kubelet that goes away without stopping its pods (kill -9) and a new one started:
    the new one adopts the sandbox (same pid, same IP) and the running container (no
    restart), keeps managing it (a killed container restarts), and tears it down."""
    client = RecordingClient()
    old = start_kubelet(run_base, node_ns, client)
    pod = make_pod("keep", "busybox", ["sh", "-c", "echo hi; exec sleep 600"])
    key = "default/keep"

    def cstatus() -> dict:
        return (client.status.get(key, {}).get("containerStatuses") or [{}])[0]

    old.informer._cache[key] = pod  # type: ignore[attr-defined]
    old.queue.add(key)  # type: ignore[attr-defined]
    new = None
    try:
        poll(lambda: "running" in cstatus().get("state", {}), 10, "running")
        before = dict(client.status[key])
        pause = runtime.sandbox_pid(run_base, pod)
        cdir = runtime.container_dir(runtime.pod_dir_of(run_base, pod), "c")
        cpid = int((cdir / "pid").read_text())
        # the old kubelet vanishes: its threads stop, its pods are left as they are
        old._stop.set()  # type: ignore[attr-defined]
        old.queue.shutdown()  # type: ignore[attr-defined]
        old.prober.stop()  # type: ignore[attr-defined]
        new = start_kubelet(run_base, node_ns, client)
        pod["status"] = before
        new.informer._cache[key] = pod  # type: ignore[attr-defined]
        new.queue.add(key)  # type: ignore[attr-defined]
        poll(lambda: key in new.workers and new.workers[key].adoption_tried, 10,  # type: ignore[attr-defined]
             "the new kubelet synced the pod")
        worker = new.workers[key]  # type: ignore[attr-defined]
        assert worker.sandbox.pid == pause and worker.sandbox.ip == before["podIP"]
        assert worker.containers[0].proc.pid == cpid
        assert runtime.sandbox_pid(run_base, pod) == pause
        st = cstatus()
        assert st["restartCount"] == 0 and "running" in st["state"]
        assert client.status[key]["podIP"] == before["podIP"]
        # still managed: a killed container is restarted into the same sandbox
        os.kill(cpid, 9)
        poll(lambda: cstatus().get("restartCount") == 1 and "running" in cstatus()["state"],
             10, "restarted by the new kubelet")
        assert runtime.sandbox_pid(run_base, pod) == pause
        assert "unknown" in cstatus()["lastState"]["terminated"]["message"]
    finally:
        k = new or old
        pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        pod["metadata"]["deletionGracePeriodSeconds"] = 1
        k.informer._cache[key] = pod  # type: ignore[attr-defined]
        k.queue.add(key)  # type: ignore[attr-defined]
        poll(lambda: key in client.deleted, 10, "deleted")
        for kk in (old, new):
            if kk is not None:
                kk._stop.set()  # type: ignore[attr-defined]
                kk.queue.shutdown()  # type: ignore[attr-defined]
                kk.prober.stop()  # type: ignore[attr-defined]
    assert not Path(f"/proc/{pause}/cmdline").exists() or not Path(
        f"/proc/{pause}/cmdline").read_bytes()
    assert not host_mounts_with(str(run_base))
    node_links = subprocess.run(["ip", "-n", os.path.basename(node_ns), "-o", "link"],
                                capture_output=True, text=True).stdout
    assert "veth" not in node_links
