"""The kubelet of one emulated node: registers its Node, heartbeats a Lease, runs its pods.

``python -m knetlab.kube.kubelet --kubeconfig K --rundir R --node N --node-netns PATH
--node-ip IP --pod-cidr CIDR --cni-conf PATH --cni-path DIR[:DIR] --cni-cache DIR
[--cluster-dns IP --cluster-domain cluster.local] [--keep-pods]``

Threads (all cheap; 100 kubelets run at once on 2 cores): an informer on the node's pods
(``spec.nodeName=N``) whose events only enqueue ``namespace/name`` keys; two workers that
take keys from the work queue and call the pod's ``PodWorker.sync`` (one pod never blocks
on another's grace period or back-off: those are delayed re-adds); one pidfd monitor that
turns any container's or pause's exit into a re-sync at once; the prober (lazily); and the
main thread, which heartbeats; the events writer (``events.py``) lazily. At start it adopts
the pods an earlier kubelet of this node left running (``adoption.py``) and tears down those
deleted while no kubelet ran. Imports: standard library, the API client, the CNI runtime,
the images table and the kubelet's own modules only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import select
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from knetlab import pyagent
from knetlab.cni.runtime import CNIRuntime
from knetlab.errors import KnetlabError
from knetlab.kube.client import ApiError, Informer, KubeClient, WorkQueue, key_of, split_key
from knetlab.kube.events import PodEvents
from knetlab.kube.podworker import PodWorker
from knetlab.kube.probes import Prober
from knetlab.kube.sandboxes import Sandbox
from knetlab.rundir import RunDir

log = logging.getLogger("knetlab.kube.kubelet")
VERSION = "v1.33.0-knetlab"
LEASE_NS = "kube-node-lease"
MIRROR = "kubernetes.io/config.mirror"  # a static pod's API object (see controlplane.py)
LEASE_PERIOD, STATUS_PERIOD = 10.0, 40.0


def microtime() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _memory_ki() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


class Kubelet:
    def __init__(self, client: KubeClient, rundir: Path, node: str, node_netns: str,
                 node_ip: str, pod_cidr: str, cni: CNIRuntime, cluster_dns: str = "",
                 cluster_domain: str = "cluster.local", workers: int = 2) -> None:
        self.client, self.rundir, self.node = client, Path(rundir), node
        self.rundir_obj = RunDir(self.rundir.name)
        self.rundir_obj.path = self.rundir  # any base dir, not only /run/knetlab
        self.node_netns, self.node_ip, self.pod_cidr = node_netns, node_ip, pod_cidr
        self.cni, self.cluster_dns, self.cluster_domain = cni, cluster_dns, cluster_domain
        self.queue = WorkQueue()
        self._service_env: dict[str, str] | None = None
        self.prober = Prober(node_netns)
        self.events = PodEvents(client, node)
        self.informer = Informer(client, "pods", field_selector=f"spec.nodeName={node}")
        self.informer.add_handler(lambda _kind, obj, _old: self.queue.add(key_of(obj)))
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._n_workers = workers
        self._epoll = select.epoll()
        self._pidfds: dict[int, str] = {}
        self._stop = threading.Event()
        # stop() wakes the pidfd monitor through this, so it can block without a timeout
        # (an idle kubelet then wakes only for its lease, not once a second)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self.boot_id = _read("/proc/sys/kernel/random/boot_id")
        self.machine_id = _read("/etc/machine-id")
        self.system_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.rundir}/{node}"))

    # -- the Node and its heartbeat --------------------------------------------------------
    def node_object(self) -> dict[str, Any]:
        t = microtime()[:19] + "Z"
        cond = [("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                ("MemoryPressure", "False", "KubeletHasSufficientMemory",
                 "kubelet has sufficient memory available"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure",
                 "kubelet has no disk pressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID",
                 "kubelet has sufficient PID available")]
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_memory_ki()}Ki",
                    "pods": "110", "ephemeral-storage": "10Gi"}
        os_image = "knetlab"
        for line in _read("/etc/os-release").splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.split("=", 1)[1].strip('"')
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64"}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": self.node_ip},
                              {"type": "Hostname", "address": self.node}],
                "capacity": capacity, "allocatable": dict(capacity),
                "conditions": [{"type": ty, "status": st, "reason": re, "message": msg,
                                "lastHeartbeatTime": t, "lastTransitionTime": t}
                               for ty, st, re, msg in cond],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"kubeletVersion": VERSION, "kubeProxyVersion": VERSION,
                             "containerRuntimeVersion": "knetlab://0.1",
                             "osImage": os_image, "kernelVersion": platform.release(),
                             "operatingSystem": "linux", "architecture": "amd64",
                             "bootID": self.boot_id, "machineID": self.machine_id,
                             "systemUUID": self.system_uuid}}}

    def register(self) -> None:
        """Create the Node, or take over an existing one (kubelet restart, topology file)."""
        obj = self.node_object()
        try:
            created = self.client.create("nodes", obj)
        except ApiError as exc:
            if exc.code != 409:
                raise
            cur = self.client.get("nodes", self.node)
            meta = cur["metadata"]
            meta.setdefault("labels", {}).update(obj["metadata"]["labels"])
            cur["spec"] = {**cur.get("spec", {}), **obj["spec"]}
            created = self.client.update("nodes", cur)
        created["status"] = obj["status"]
        self.client.update("nodes", created, subresource="status")
        self.node_uid = created["metadata"].get("uid", "")

    def heartbeat_status(self) -> None:
        t = microtime()[:19] + "Z"
        cur = self.client.get("nodes", self.node)
        conds = cur.get("status", {}).get("conditions") or self.node_object()["status"][
            "conditions"]
        for c in conds:
            c["lastHeartbeatTime"] = t
            if c["type"] == "Ready" and c.get("status") != "True":
                c.update(status="True", reason="KubeletReady", lastTransitionTime=t,
                         message="kubelet is posting ready status")
        self.client.patch("nodes", self.node, {"status": {"conditions": conds}},
                          subresource="status")

    def renew_lease(self) -> None:
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": 40,
                "renewTime": microtime()}
        try:
            self.client.patch("leases", self.node, {"spec": spec}, LEASE_NS)
            return
        except ApiError as exc:
            if exc.code != 404:
                raise
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node, "namespace": LEASE_NS, "ownerReferences": [
                     {"apiVersion": "v1", "kind": "Node", "name": self.node,
                      "uid": getattr(self, "node_uid", "")}]},
                 "spec": spec}
        try:
            self.client.create("leases", lease, LEASE_NS)
        except ApiError as exc:
            if exc.code == 404:  # no kube-node-lease namespace yet
                self.client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": LEASE_NS}})
                self.client.create("leases", lease, LEASE_NS)
            elif exc.code != 409:
                raise

    # -- processes -------------------------------------------------------------------------
    def watch_pid(self, pid: int, key: str) -> None:
        """Re-sync ``key`` as soon as ``pid`` exits (a pidfd in the monitor's epoll)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self.queue.add(key)
            return
        with self._lock:
            self._pidfds[fd] = key
        self._epoll.register(fd, select.EPOLLIN)

    def _monitor(self) -> None:
        while not self._stop.is_set():
            for fd, _ in self._epoll.poll():
                if fd == self._wake:
                    continue  # stop() called: the loop's test ends it
                with self._lock:
                    key = self._pidfds.pop(fd, None)
                try:
                    self._epoll.unregister(fd)
                finally:
                    os.close(fd)
                if key:
                    self.queue.add(key)

    # -- pods ------------------------------------------------------------------------------
    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                delay = self.sync(key)
                if delay is not None:
                    self.queue.add_after(key, delay)
            except Exception:  # noqa: BLE001 - one pod's failure must not stop the kubelet
                log.exception("pod %s: sync failed", key)
                self.queue.add_after(key, 2.0)
            finally:
                self.queue.done(key)

    def sync(self, key: str) -> float | None:
        ns, name = split_key(key)
        pod = self.informer.get(name, ns)
        worker = self.workers.get(key)
        if worker is not None and (pod is None or pod["metadata"]["uid"] != worker.uid):
            # force-deleted, or replaced by a new pod of the same name: tear the old one down
            if not worker.done:
                worker.terminate(None)
            self.workers.pop(key, None)
            worker = None
        if pod is None:
            return None
        if MIRROR in (pod["metadata"].get("annotations") or {}):
            # a static pod the topology made: not ours to run; only finish its deletion
            if pod["metadata"].get("deletionTimestamp"):
                self.client.delete("pods", name, ns, grace_period=0)
            return None
        if worker is None:
            worker = self.workers[key] = PodWorker(self, pod)
        return worker.sync(pod)

    def cleanup_orphans(self) -> None:
        """After a restart: tear down the sandboxes of pods that were deleted for good while
        no kubelet ran (their API objects are gone, so no worker will ever stop them)."""
        known = {p["metadata"].get("uid") for p in self.informer.items()}
        base = self.rundir / "nodes" / self.node / "pods"
        try:
            entries = list(base.iterdir())
        except OSError:
            return
        for pdir in entries:
            parts = pdir.name.split("_")  # <namespace>_<name>_<uid>: no "_" in DNS names
            if len(parts) != 3 or parts[2] in known:
                continue
            sb = Sandbox(self, pdir, parts[0], parts[1], parts[2])
            if sb.load():
                log.info("pod %s/%s: deleted while the kubelet was away: tearing it down",
                         parts[0], parts[1])
            if not sb.host_network:
                sb.ip = "orphan"  # CNI DEL from the cache releases its address
            sb.teardown()

    # -- running ---------------------------------------------------------------------------
    def service_env(self) -> dict[str, str]:
        """The ``kubernetes`` Service's variables every container gets (the kubelet always
        adds the master Service's, whatever enableServiceLinks says); read once."""
        if self._service_env is None:
            try:
                svc = self.client.get("services", "kubernetes", "default")
            except (KnetlabError, OSError):
                return {}  # asked again for the next container
            ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
            self._service_env = {
                "KUBERNETES_SERVICE_HOST": ip, "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
                "KUBERNETES_PORT": f"tcp://{ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
                f"KUBERNETES_PORT_{port}_TCP_ADDR": ip}
        return self._service_env

    def start(self) -> None:
        self.register()
        self.renew_lease()
        threading.Thread(target=self._monitor, name="pidfd", daemon=True).start()
        for i in range(self._n_workers):
            threading.Thread(target=self._work, name=f"podworker-{i}", daemon=True).start()
        self.informer.start()

    def wait_synced(self, timeout: float = 30) -> bool:
        return self.informer.wait_synced(timeout)

    def run(self, ready_file: Path | None = None) -> None:
        self.start()
        if not self.wait_synced():
            log.warning("pod informer not synced after 30 s; going on")
        else:
            try:
                self.cleanup_orphans()
            except Exception:  # noqa: BLE001 - a leftover must not keep the kubelet down
                log.exception("cleaning up pods deleted while the kubelet was away")
        if ready_file is not None:
            ready_file.write_text(f"{os.getpid()}\n")
        last_status = time.monotonic()
        while not self._stop.wait(LEASE_PERIOD):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_PERIOD - 1:
                    self.heartbeat_status()
                    last_status = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - API away: try at the next beat
                log.warning("heartbeat: %s", exc)

    def stop(self, keep_pods: bool = False) -> None:
        self._stop.set()
        os.eventfd_write(self._wake, 1)
        self.informer.stop()
        self.queue.shutdown()
        self.prober.stop()
        self.events.stop()
        if keep_pods:
            return
        for worker in list(self.workers.values()):
            if not worker.done:
                worker.kill_all(signal.SIGKILL)
                worker.sandbox.teardown()


class KubeletDaemon(pyagent.PyAgent):
    """The kubelet of node ``owner``; ready once its Node is registered and pods synced."""

    name = "kubelet"
    ready_timeout = 30.0

    def __init__(self, rundir: RunDir, owner: str, *, kubeconfig: str | Path, node_netns: str,
                 node_ip: str, pod_cidr: str, cni_conf: str | Path, cni_path: list[str],
                 cni_cache: str | Path, cluster_dns: str = "",
                 cluster_domain: str = "cluster.local", keep_pods: bool = False) -> None:
        super().__init__(rundir, owner)
        self.kubeconfig, self.node_netns, self.node_ip = kubeconfig, node_netns, node_ip
        self.pod_cidr, self.cni_conf, self.cni_path = pod_cidr, cni_conf, cni_path
        self.cni_cache, self.cluster_dns, self.cluster_domain = cni_cache, cluster_dns, \
            cluster_domain
        self.keep_pods = keep_pods
        self.ready_file = self.dir / "ready"

    def command(self) -> list[str]:
        self.ready_file.unlink(missing_ok=True)
        argv = [*pyagent.argv("knetlab.kube.kubelet"),
                "--rundir", str(self.rundir.path), "--node", self.owner,
                "--kubeconfig", str(self.kubeconfig), "--node-netns", self.node_netns,
                "--node-ip", self.node_ip, "--pod-cidr", self.pod_cidr,
                "--cni-conf", str(self.cni_conf), "--cni-path", ":".join(self.cni_path),
                "--cni-cache", str(self.cni_cache), "--cluster-domain", self.cluster_domain,
                "--ready-file", str(self.ready_file)]
        if self.cluster_dns:
            argv += ["--cluster-dns", self.cluster_dns]
        if self.keep_pods:
            argv.append("--keep-pods")
        return argv

    def match(self) -> str:
        return f"--rundir {self.rundir.path} --node {self.owner} "

    def is_ready(self) -> bool:
        return self.ready_file.exists()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="knetlab.kube.kubelet", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--rundir", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--node-netns", required=True)
    p.add_argument("--node-ip", required=True)
    p.add_argument("--pod-cidr", default="")
    p.add_argument("--cni-conf", required=True)
    p.add_argument("--cni-path", required=True)
    p.add_argument("--cni-cache", required=True)
    p.add_argument("--cluster-dns", default="")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--ready-file", default="")
    p.add_argument("--keep-pods", action="store_true",
                   help="leave the pods running when the kubelet stops")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conf_list = json.loads(Path(args.cni_conf).read_text())
    cni = CNIRuntime(conf_list, args.cni_path.split(":"), Path(args.cni_cache),
                     plugin_netns=args.node_netns)
    kubelet = Kubelet(KubeClient.from_kubeconfig(args.kubeconfig), Path(args.rundir), args.node,
                      args.node_netns, args.node_ip, args.pod_cidr, cni, args.cluster_dns,
                      args.cluster_domain)

    def on_term(_sig: int, _frame: object) -> None:
        kubelet._stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        kubelet.run(Path(args.ready_file) if args.ready_file else None)
    finally:
        kubelet.stop(keep_pods=args.keep_pods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
