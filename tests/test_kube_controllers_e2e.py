"""The controller manager against a real etcd + API server, checked with the official
Python client. No kubelet: Node objects are made by the test (Ready, no kubelet), and a
small fake kubelet here plays the node side through the API (bound pods become Running and
Ready with an IP, Job pods Succeed, pods being deleted are removed), so the controllers
are driven exactly as in a lab."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import poll

from knetlab.kube.client import ApiError, Informer, KubeClient
from knetlab.kube.controllers import CONTROLLERS, ControllerManagerDaemon
from knetlab.kube.controllers.util import fmt_time
from knetlab.rundir import RunDir

kubernetes = pytest.importorskip("kubernetes")
pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd")


class FakeKubelet:
    """Plays every node: bound pods -> Running/Ready (Job pods -> Succeeded), terminating
    pods -> deleted with grace 0. ``hold`` pods (by name prefix) stay Pending/not Ready."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.hold: set[str] = set()
        self.keep_terminating: set[str] = set()
        self.fail: set[str] = set()
        self._ips = itertools.count(2)
        self._informer = Informer(client, "pods")
        self._informer.add_handler(self._on)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._informer.start()

    def stop(self) -> None:
        self._informer.stop()

    def _on(self, event: str, pod: dict, _old: dict | None) -> None:
        if event == "DELETED":
            return
        m, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        name, ns = m["name"], m["namespace"]
        try:
            if m.get("deletionTimestamp"):
                if not any(name.startswith(h) for h in self.keep_terminating):
                    self.client.delete("pods", name, ns, grace_period=0)
                return
            if not spec.get("nodeName") or status.get("phase") != "Pending" or any(
                    name.startswith(h) for h in self.hold):
                return
            with self._lock:
                n = next(self._ips)
            ts = fmt_time()
            done = "job-name" in (m.get("labels") or {})
            if any(name.startswith(f) for f in self.fail):
                new_phase = "Failed"
            else:
                new_phase = "Succeeded" if done else "Running"
            done = done or new_phase == "Failed"
            new = {"phase": new_phase,
                   "podIP": f"10.244.{n // 250}.{n % 250 + 1}", "startTime": ts,
                   "conditions": [{"type": t, "status": "False" if done else "True",
                                   "lastTransitionTime": ts}
                                  for t in ("Initialized", "Ready", "ContainersReady",
                                            "PodScheduled")]}
            self.client.patch("pods", name, {"status": new}, ns, subresource="status")
        except ApiError:
            pass

    def release(self, prefix: str) -> None:
        """Let held pods start now."""
        self.hold.discard(prefix)
        for pod in self._informer.items():
            if pod["metadata"]["name"].startswith(prefix):
                self._on("MODIFIED", pod, None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from knetlab.kube.apiserver import ApiServerDaemon
    from knetlab.kube.etcd import EtcdDaemon, free_port
    from knetlab.kube.pki import make_pki

    base: Path = tmp_path_factory.mktemp("kcm")
    rundir = RunDir("kcm-e2e")
    rundir.path = base / "kcm-e2e"
    rundir.create()
    port = free_port()
    kubeconfig = make_pki(rundir.path / "kube", f"https://127.0.0.1:{port}", "kcm-e2e")
    started = []
    try:
        etcd = EtcdDaemon(rundir)
        etcd.start()
        started.append(etcd)
        api = ApiServerDaemon(rundir, etcd_url=etcd.client_url, port=port)
        api.start()
        started.append(api)
        kcm = ControllerManagerDaemon(rundir, kubeconfig=kubeconfig,
                                      only=[c for c in CONTROLLERS if c != "nodelifecycle"])
        kcm.start()
        started.append(kcm)
        client = KubeClient.from_kubeconfig(kubeconfig)
        kubelet = FakeKubelet(client)
        kubelet.start()
        for n in ("node-1", "node-2", "node-3"):
            client.create("nodes", make_node(n))
        api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        yield SimpleNamespace(client=client, kubelet=kubelet, kcm=kcm, kubeconfig=kubeconfig,
                              core=kubernetes.client.CoreV1Api(api_client),
                              apps=kubernetes.client.AppsV1Api(api_client),
                              batch=kubernetes.client.BatchV1Api(api_client),
                              discovery=kubernetes.client.DiscoveryV1Api(api_client))
        kubelet.stop()
    finally:
        for d in reversed(started):
            d.stop()


def make_node(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                       "reason": "KubeletReady", "message": "ok",
                                       "lastHeartbeatTime": fmt_time(),
                                       "lastTransitionTime": fmt_time()}],
                       "nodeInfo": {"bootID": "", "machineID": "", "systemUUID": "",
                                    "kubeProxyVersion": "", "kernelVersion": "",
                                    "osImage": "", "containerRuntimeVersion": "",
                                    "kubeletVersion": "", "operatingSystem": "linux",
                                    "architecture": "amd64"}}}


def template(labels: dict, image: str = "busybox", **spec: object) -> dict:
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": image,
                                     "ports": [{"name": "http", "containerPort": 8080}]}],
                     **spec}}


def pods_of(c: SimpleNamespace, selector: str, ns: str = "default") -> list:
    return c.core.list_namespaced_pod(ns, label_selector=selector).items


def until(cond: Callable[[], object], what: str, timeout: float = 30) -> None:
    poll(cond, timeout, what)


def test_deployment_scheduled_and_rolled(cluster: SimpleNamespace) -> None:
    c = cluster
    c.apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": template({"app": "web"})}})

    def rolled_out() -> bool:
        d = c.apps.read_namespaced_deployment("web", "default")
        return (d.status.observed_generation == d.metadata.generation
                and d.status.available_replicas == 3 and d.status.updated_replicas == 3)
    until(rolled_out, "deployment web available")
    pods = pods_of(c, "app=web")
    assert sorted(p.spec.node_name for p in pods) == ["node-1", "node-2", "node-3"]
    assert all(p.metadata.name.startswith("web-") for p in pods)
    d = c.apps.read_namespaced_deployment("web", "default")
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert {x.type: x.reason for x in d.status.conditions}["Progressing"] == \
        "NewReplicaSetAvailable"

    # Rolling update with maxSurge 1, maxUnavailable 0: never fewer than 3 ready pods and
    # never more than 4 pods; new pods are held not-ready a moment to make that visible.
    c.kubelet.hold.add("web-")
    c.apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {
        "spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})
    until(lambda: len(pods_of(c, "app=web")) == 4, "a surge pod")
    seen = []

    def step() -> bool:
        pods = [p for p in pods_of(c, "app=web") if not p.metadata.deletion_timestamp]
        ready = [p for p in pods if p.status.phase == "Running"]
        seen.append((len(pods), len(ready)))
        c.kubelet.release("web-")
        c.kubelet.hold.add("web-")
        d = c.apps.read_namespaced_deployment("web", "default")
        return (d.status.observed_generation == d.metadata.generation
                and d.status.updated_replicas == 3 and d.status.available_replicas == 3
                and d.status.replicas == 3)
    until(step, "rolling update done", 60)
    c.kubelet.hold.discard("web-")
    assert all(n <= 4 for n, _ in seen) and all(r >= 3 for _, r in seen), seen
    rss = c.apps.list_namespaced_replica_set("default", label_selector="app=web").items
    revs = sorted(r.metadata.annotations["deployment.kubernetes.io/revision"] for r in rss)
    assert revs == ["1", "2"]
    until(lambda: any(e.reason == "ScalingReplicaSet" and e.involved_object.name == "web"
                      for e in c.core.list_namespaced_event("default").items),
          "ScalingReplicaSet events")

    # scale, then cascading delete (Background): RSs and pods go with it
    c.apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 5}})
    until(lambda: c.apps.read_namespaced_deployment("web", "default").status
          .available_replicas == 5, "scaled to 5")
    c.apps.delete_namespaced_deployment("web", "default", propagation_policy="Background")
    until(lambda: not c.apps.list_namespaced_replica_set(
        "default", label_selector="app=web").items and not pods_of(c, "app=web"),
        "replicasets and pods collected")


def test_statefulset_ordered(cluster: SimpleNamespace) -> None:
    c = cluster
    c.kubelet.hold.add("db-")
    # (created with our client: the official one rejects the create answer's empty status,
    # where kube-apiserver would serialise Go's zero counts)
    c.client.create("statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": template({"app": "db"})}}, "default")
    until(lambda: [p.metadata.name for p in pods_of(c, "app=db")] == ["db-0"], "db-0 first")
    c.kubelet.release("db-")
    until(lambda: sorted(p.metadata.name for p in pods_of(c, "app=db")) ==
          ["db-0", "db-1", "db-2"], "db-0..2")
    p1 = c.core.read_namespaced_pod("db-1", "default")
    assert p1.spec.hostname == "db-1" and p1.spec.subdomain == "db"
    assert p1.metadata.labels["statefulset.kubernetes.io/pod-name"] == "db-1"
    until(lambda: c.apps.read_namespaced_stateful_set("db", "default").status.ready_replicas
          == 3, "3 ready")
    old_uid = p1.metadata.uid
    c.core.delete_namespaced_pod("db-1", "default")
    until(lambda: any(p.metadata.name == "db-1" and p.metadata.uid != old_uid
                      for p in pods_of(c, "app=db")), "db-1 recreated with its name")
    c.apps.patch_namespaced_stateful_set_scale("db", "default", {"spec": {"replicas": 1}})
    until(lambda: [p.metadata.name for p in pods_of(c, "app=db")] == ["db-0"], "scaled to 1")
    c.apps.delete_namespaced_stateful_set("db", "default")


def test_job_completes(cluster: SimpleNamespace) -> None:
    c = cluster
    c.batch.create_namespaced_job("default", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
        "spec": {"completions": 3, "parallelism": 2,
                 "template": template({"app": "pi"}, restartPolicy="Never")}})

    def complete() -> bool:
        j = c.batch.read_namespaced_job("pi", "default")
        return any(x.type == "Complete" and x.status == "True"
                   for x in j.status.conditions or [])
    until(complete, "job pi Complete")
    j = c.batch.read_namespaced_job("pi", "default")
    assert j.status.succeeded == 3 and j.status.completion_time is not None
    pods = pods_of(c, "job-name=pi")
    assert len(pods) == 3
    assert all(p.metadata.labels["batch.kubernetes.io/controller-uid"] == j.metadata.uid
               for p in pods)


def test_endpointslices(cluster: SimpleNamespace) -> None:
    c = cluster
    c.kubelet.keep_terminating.add("ep-")
    c.core.create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ep"},
        "spec": {"selector": {"app": "ep"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    c.client.create("replicasets", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "ep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ep"}},
                 "template": template({"app": "ep"})}}, "default")

    def endpoints() -> list:
        slices = c.discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=ep").items
        return [e for s in slices for e in s.endpoints or []]
    until(lambda: len(endpoints()) == 2 and all(e.conditions.ready for e in endpoints()),
          "2 ready endpoints")
    sl = c.discovery.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=ep").items[0]
    assert sl.ports[0].port == 8080 and sl.ports[0].name == "http"
    assert sl.metadata.labels["endpointslice.kubernetes.io/managed-by"] == \
        "endpointslice-controller.k8s.io"
    ep = c.core.read_namespaced_endpoints("ep", "default")
    assert len(ep.subsets[0].addresses) == 2
    victim = pods_of(c, "app=ep")[0].metadata.name
    c.core.delete_namespaced_pod(victim, "default")  # stays terminating (bound, grace 30)

    def terminating() -> bool:
        e = [x for x in endpoints() if x.target_ref.name == victim]
        return bool(e) and e[0].conditions.terminating and e[0].conditions.serving \
            and not e[0].conditions.ready
    until(terminating, "terminating endpoint: serving, not ready")
    c.kubelet.keep_terminating.discard("ep-")
    c.client.delete("pods", victim, "default", grace_period=0)
    until(lambda: len(endpoints()) == 2 and victim not in
          [e.target_ref.name for e in endpoints()], "replacement endpoint")
    c.core.delete_namespaced_service("ep", "default")
    until(lambda: not c.discovery.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=ep").items, "slices gone")
    c.apps.delete_namespaced_replica_set("ep", "default")


def test_podgc_and_foreground_delete(cluster: SimpleNamespace) -> None:
    c = cluster
    c.client.create("nodes", make_node("node-9"))
    c.core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray"},
        "spec": {"nodeName": "node-9", "containers": [{"name": "c", "image": "busybox"}]}})
    c.client.delete("nodes", "node-9")
    until(lambda: not pods_of(c, "") or "stray" not in [
        p.metadata.name for p in pods_of(c, "")], "pod on a deleted node collected")

    c.client.create("replicasets", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "fg"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "fg"}},
                 "template": template({"app": "fg"})}}, "default")
    until(lambda: len(pods_of(c, "app=fg")) == 2, "2 fg pods")
    c.apps.delete_namespaced_replica_set("fg", "default", propagation_policy="Foreground")
    until(lambda: not pods_of(c, "app=fg") and not c.apps.list_namespaced_replica_set(
        "default", field_selector="metadata.name=fg").items, "foreground delete done")

    c.client.create("replicasets", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "orph"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "orph"}},
                 "template": template({"app": "orph"})}}, "default")
    until(lambda: len(pods_of(c, "app=orph")) == 1, "1 orph pod")
    c.apps.delete_namespaced_replica_set("orph", "default", propagation_policy="Orphan")
    until(lambda: not c.apps.list_namespaced_replica_set(
        "default", field_selector="metadata.name=orph").items, "orphaning delete done")
    pods = pods_of(c, "app=orph")
    assert len(pods) == 1 and not pods[0].metadata.owner_references
    c.core.delete_namespaced_pod(pods[0].metadata.name, "default")


def test_daemonset_one_per_node(cluster: SimpleNamespace) -> None:
    c = cluster
    c.client.create("daemonsets", {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": template({"app": "agent"})}}, "default")

    def ready() -> bool:  # raw: the official client rejects the status before our first write
        s = c.client.get("daemonsets", "agent", "default").get("status") or {}
        return s.get("desiredNumberScheduled") == 3 and s.get("numberReady") == 3
    until(ready, "daemonset on 3 nodes")
    assert sorted(p.spec.node_name for p in pods_of(c, "app=agent")) == [
        "node-1", "node-2", "node-3"]
    c.apps.patch_namespaced_daemon_set("agent", "default", {"spec": {"template": {
        "spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})

    def updated() -> bool:
        s = c.apps.read_namespaced_daemon_set("agent", "default").status
        return s.updated_number_scheduled == 3 and s.number_available == 3
    until(updated, "daemonset rolled")
    c.apps.delete_namespaced_daemon_set("agent", "default")


@pytest.mark.parametrize("kubectl", [str(Path(sys.executable).parent / "kubectl"),
                                     "/usr/bin/kubectl"])
def test_kubectl_rollout(cluster: SimpleNamespace, kubectl: str) -> None:
    if not Path(kubectl).exists():
        pytest.skip(f"no {kubectl}")
    c = cluster

    def k(*args: str) -> str:
        out = subprocess.run([kubectl, "--kubeconfig", str(c.kubeconfig), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
        return out.stdout

    k("create", "deployment", "roll", "--image=busybox:1", "--replicas=2")
    assert "successfully rolled out" in k("rollout", "status", "deployment/roll",
                                          "--timeout=30s")
    k("set", "image", "deployment/roll", "busybox=busybox:2")
    assert "successfully rolled out" in k("rollout", "status", "deployment/roll",
                                          "--timeout=30s")
    history = k("rollout", "history", "deployment/roll")
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
    k("rollout", "undo", "deployment/roll")
    assert "successfully rolled out" in k("rollout", "status", "deployment/roll",
                                          "--timeout=30s")
    d = c.apps.read_namespaced_deployment("roll", "default")
    assert d.spec.template.spec.containers[0].image == "busybox:1"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    k("scale", "deployment/roll", "--replicas=4")
    assert "successfully rolled out" in k("rollout", "status", "deployment/roll",
                                          "--timeout=30s")
    assert len(pods_of(c, "app=roll")) == 4
    k("delete", "deployment", "roll")

    for kind, name in (("statefulsets", "rsts"), ("daemonsets", "rds")):
        spec = {"selector": {"matchLabels": {"app": name}},
                "template": template({"app": name})}
        if kind == "statefulsets":
            spec.update(replicas=2, serviceName=name)
        c.client.create(kind, {"metadata": {"name": name}, "spec": spec}, "default")
        res = kind[:-1]
        k("rollout", "status", f"{res}/{name}", "--timeout=30s")
        k("set", "image", f"{res}/{name}", "c=busybox:2")
        out = k("rollout", "status", f"{res}/{name}", "--timeout=30s")
        assert "complete" in out or "successfully rolled out" in out, out
        assert all(p.spec.containers[0].image == "busybox:2" for p in pods_of(c, f"app={name}"))
        k("delete", res, name)


def test_recreate_paused_unschedulable_and_backoff(cluster: SimpleNamespace) -> None:
    c = cluster
    c.client.create("deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rec"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "rec"}},
                 "strategy": {"type": "Recreate"}, "template": template({"app": "rec"})}},
        "default")
    until(lambda: len([p for p in pods_of(c, "app=rec") if p.status.phase == "Running"]) == 2,
          "2 rec pods running")
    c.client.patch("deployments", "rec", {"spec": {"template": {"metadata": {"labels": {
        "app": "rec", "v": "2"}}}}}, "default")
    until(lambda: sorted(p.metadata.labels.get("v", "") for p in pods_of(c, "app=rec")) ==
          ["2", "2"], "recreated")
    # paused: a template change makes no new ReplicaSet, a scale still applies
    c.client.patch("deployments", "rec", {"spec": {"paused": True}}, "default")
    c.client.patch("deployments", "rec", {"spec": {"replicas": 3, "template": {"metadata": {
        "labels": {"app": "rec", "v": "3"}}}}}, "default")
    until(lambda: len(pods_of(c, "app=rec")) == 3, "paused deployment scaled")
    assert all(p.metadata.labels["v"] == "2" for p in pods_of(c, "app=rec"))
    d = c.client.get("deployments", "rec", "default")
    assert {x["type"]: x["reason"] for x in d["status"]["conditions"]}["Progressing"] == \
        "DeploymentPaused"
    c.client.delete("deployments", "rec", "default")

    # a pod no node can take: PodScheduled False / Unschedulable, bound once a node fits
    c.core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"},
                 "containers": [{"name": "c", "image": "busybox"}]}})

    def reason() -> str:
        p = c.core.read_namespaced_pod("picky", "default")
        return next((x.reason for x in p.status.conditions or []
                     if x.type == "PodScheduled"), "") or ""
    until(lambda: reason() == "Unschedulable", "picky unschedulable")
    c.client.patch("nodes", "node-2", {"metadata": {"labels": {"disk": "ssd"}}})
    until(lambda: c.core.read_namespaced_pod("picky", "default").spec.node_name == "node-2",
          "picky bound to node-2 once labelled")
    c.core.delete_namespaced_pod("picky", "default")

    c.kubelet.fail.add("bad-")
    c.client.create("jobs", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bad"},
        "spec": {"backoffLimit": 2,
                 "template": template({"app": "bad"}, restartPolicy="Never")}}, "default")

    def failed() -> str:
        j = c.client.get("jobs", "bad", "default")
        return next((x["reason"] for x in (j.get("status") or {}).get("conditions") or []
                     if x["type"] == "Failed"), "")
    until(failed, "job bad Failed")
    assert failed() == "BackoffLimitExceeded"
    assert c.client.get("jobs", "bad", "default")["status"]["failed"] == 3
