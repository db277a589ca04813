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

    def patch(self, resource: str, name: str, body: dict, namespace: str | None = None,
              subresource: str = "", kind: str = "merge") -> dict:
        self.status[f"{namespace}/{name}"] = body["status"]
        return body

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
