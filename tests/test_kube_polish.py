"""What Kubernetes users expect next from the lab's kubelet and API, with real kubectl:
the kubelet's events in ``kubectl describe``, ConfigMaps and Secrets in pods (env and
volumes), ``kubectl rollout history/undo`` for StatefulSets and DaemonSets
(ControllerRevisions), and a kubelet restart that adopts its running pods.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab.cluster import Cluster
from knetlab.kube import runtime
from tests.conftest import needs_root, poll, running_lab
from tests.test_kube_lab import Kubectl, kubectls, ready, wait_ready

pytestmark = [needs_root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_lab("""
name: kp-polish
dataplane: host-gw
kubernetes: true
nodes: {count: 2}
pods: {perNode: 0}
""", tmp_path_factory.mktemp("kp")) as c:
        yield c


@pytest.fixture(scope="module")
def kubectl(lab: Cluster) -> Kubectl:
    return Kubectl(lab.kubeconfig, kubectls()[0])


def test_describe_shows_kubelet_events(lab: Cluster, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Pod
metadata: {name: evented}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "infinity"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/never"]}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: nopull}
spec:
  containers: [{name: main, image: "no-such-image:9"}]
""")

    def described(pod: str, *texts: str) -> bool:
        out = kubectl("describe", "pod", pod)
        return all(t in out for t in texts)

    poll(lambda: described("evented", "Pulled", "already present on machine", "Created",
                           "Started", "Unhealthy", "Readiness probe failed"), 60,
         "evented's events in describe")
    poll(lambda: described("crasher", "BackOff", "Back-off restarting failed container"), 60,
         "crasher's BackOff")
    poll(lambda: described("nopull", "Failed", "ErrImagePull", "no-such-image:9"), 60,
         "nopull's Failed event")
    kubectl("delete", "pod", "evented", "--wait=false")
    poll(lambda: "Stopping container main" in kubectl("get", "events", "--field-selector",
                                                      "involvedObject.name=evented"),
         60, "Killing event")
    kubectl("delete", "pod", "crasher", "nopull", "--grace-period=0", "--force")


def test_configmap_and_secret_in_pods(lab: Cluster, kubectl: Kubectl) -> None:
    kubectl("create", "configmap", "app-config", "--from-literal=greeting=hello",
            "--from-literal=color=blue")
    kubectl("create", "secret", "generic", "app-secret", "--from-literal=password=s3cret")
    kubectl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Pod
metadata: {name: configured, labels: {app: configured}}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "infinity"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: app-secret, key: password}}
    envFrom:
    - {configMapRef: {name: app-config}, prefix: CFG_}
    volumeMounts:
    - {name: config, mountPath: /etc/app}
    - {name: secret, mountPath: /etc/secret, readOnly: true}
    - {name: scratch, mountPath: /scratch}
  - name: side
    image: busybox:1.36
    command: ["sh", "-c", "echo from-side > /shared/note; exec sleep infinity"]
    volumeMounts:
    - {name: scratch, mountPath: /shared}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: secret, secret: {secretName: app-secret}}
  - {name: scratch, emptyDir: {}}
""")
    kubectl("wait", "--for=condition=Ready", "pod/configured", "--timeout=60s")
    env = kubectl("exec", "configured", "-c", "main", "--", "env")
    assert "GREETING=hello" in env and "PASSWORD=s3cret" in env and "CFG_color=blue" in env
    assert kubectl("exec", "configured", "--", "cat", "/etc/app/greeting") == "hello"
    assert kubectl("exec", "configured", "--", "cat", "/etc/secret/password") == "s3cret"
    poll(lambda: kubectl.run("exec", "configured", "--", "cat", "/scratch/note",
                             check=False).stdout == "from-side\n", 20, "shared emptyDir")
    kubectl("patch", "configmap", "app-config", "-p", '{"data":{"greeting":"bonjour"}}')
    poll(lambda: kubectl("exec", "configured", "--", "cat", "/etc/app/greeting") == "bonjour",
         20, "the ConfigMap change reaches the file")
    kubectl("delete", "pod", "configured", "--grace-period=1")


def history_revisions(kubectl: Kubectl, what: str) -> list[int]:
    out = kubectl("rollout", "history", what)
    return [int(line.split()[0]) for line in out.splitlines()
            if line.strip() and line.split()[0].isdigit()]


def images_of(kubectl: Kubectl, selector: str) -> set[str]:
    return {p["spec"]["containers"][0]["image"] for p in wait_ready(kubectl, selector, 2, 90)}


def test_rollout_history_and_undo_statefulset_and_daemonset(lab: Cluster, kubectl: Kubectl
                                                             ) -> None:
    kubectl("apply", "-f", "-", stdin="""
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: main, image: "busybox:1.36", command: [sleep, infinity]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: main, image: "busybox:1.36", command: [sleep, infinity]}]
""")
    for kind, sel in (("statefulset/db", "app=db"), ("daemonset/agent", "app=agent")):
        wait_ready(kubectl, sel, 2, 90)
        poll(lambda kind=kind: history_revisions(kubectl, kind) == [1], 30, f"{kind} rev 1")
        kubectl("set", "image", kind, "main=busybox:1.37")
        kubectl("rollout", "status", kind, "--timeout=90s", timeout=120)
        poll(lambda kind=kind: history_revisions(kubectl, kind) == [1, 2], 30, f"{kind} 1, 2")
        poll(lambda sel=sel: images_of(kubectl, sel) == {"busybox:1.37"}, 90, "updated")
        assert "busybox:1.36" in kubectl("rollout", "history", kind, "--revision=1")
        kubectl("rollout", "undo", kind)
        kubectl("rollout", "status", kind, "--timeout=90s", timeout=120)
        poll(lambda sel=sel: images_of(kubectl, sel) == {"busybox:1.36"}, 90, "rolled back")
        poll(lambda kind=kind: history_revisions(kubectl, kind) == [2, 3], 30, f"{kind} 2, 3")
    crs = kubectl.json("get", "controllerrevisions")["items"]
    assert {c["metadata"]["ownerReferences"][0]["kind"] for c in crs} == {"StatefulSet",
                                                                          "DaemonSet"}
    kubectl("delete", "statefulset/db", "daemonset/agent")


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for whoever inherited it counts as exited)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_kubelet_restart_adopts_running_pods(lab: Cluster, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Pod
metadata: {name: survivor}
spec:
  nodeName: node-1
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "echo $$ > /tmp/pid; exec sleep infinity"]
---
apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  nodeName: node-1
  containers: [{name: main, image: "busybox:1.36", command: [sleep, infinity]}]
""")
    kubectl("wait", "--for=condition=Ready", "pod/survivor", "pod/doomed", "--timeout=60s")
    doomed_pause = runtime.sandbox_pid(lab.rundir, kubectl.json("get", "pod", "doomed"))
    before = kubectl.json("get", "pod", "survivor")
    poll(lambda: kubectl.run("exec", "survivor", "--", "cat", "/tmp/pid", check=False
                             ).returncode == 0, 20, "pid written")
    cpid = int(kubectl("exec", "survivor", "--", "cat", "/tmp/pid"))
    control = lab.control
    assert control is not None
    kubelet = control.kubelets["node-1"]
    pid = kubelet.pid or int(kubelet.pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    poll(lambda: gone(pid), 10, "kubelet gone")
    # deleted for good while no kubelet runs: the next one must still tear it down
    kubectl("delete", "pod", "doomed", "--grace-period=0", "--force")
    kubelet.start()
    after = kubectl.json("get", "pod", "survivor")
    assert after["status"]["podIP"] == before["status"]["podIP"]
    # the new kubelet has synced the pod: still Running, same container, no restart
    poll(lambda: ready(kubectl.json("get", "pod", "survivor")), 30, "survivor still ready")
    assert not gone(cpid)
    assert int(kubectl("exec", "survivor", "--", "cat", "/tmp/pid")) == cpid
    st = kubectl.json("get", "pod", "survivor")["status"]
    assert st["podIP"] == before["status"]["podIP"]
    assert st["containerStatuses"][0]["restartCount"] == 0
    assert st["containerStatuses"][0]["state"]["running"]["startedAt"] == before["status"][
        "containerStatuses"][0]["state"]["running"]["startedAt"]
    poll(lambda: gone(doomed_pause), 30, "the orphaned sandbox torn down")
    # and it still manages it: a killed container is restarted, deletion works
    os.kill(cpid, signal.SIGKILL)
    poll(lambda: kubectl.json("get", "pod", "survivor")["status"]["containerStatuses"][0]
         ["restartCount"] == 1, 60, "restarted after adoption")
    kubectl("delete", "pod", "survivor", "--grace-period=1", timeout=60)
    assert gone(cpid)


def test_exec_tty_under_script_has_no_stray_nul(lab: Cluster, kubectl: Kubectl) -> None:
    """``kubectl exec -it`` under script(1) (a tty whose input is at EOF) prints exactly the
    command's output: no "^@" from a NUL byte echoed by the pod's terminal."""
    kubectl("run", "tty", "--image=busybox:1.36", "--", "sleep", "infinity")
    kubectl("wait", "--for=condition=Ready", "pod/tty", "--timeout=60s")
    for binary in kubectls():
        for _ in range(3):
            r = subprocess.run(["script", "-qc", f"{binary} exec -it tty -- sh -c "
                                "'echo hi; echo there'", "/dev/null"],
                               env=kubectl.env, capture_output=True, timeout=60,
                               stdin=subprocess.DEVNULL)
            assert r.stdout == b"hi\r\nthere\r\n", (binary, r.stdout, r.stderr)
    kubectl("delete", "pod", "tty", "--grace-period=0", "--force")
