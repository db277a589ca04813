"""The lab's Kubernetes control plane: etcd, kube-apiserver, controllers + scheduler, kubelets.

Each is a Daemon (own dir, pid file, log, stopped by pid) under the lab's run dir, as on a
kubeadm node: ``daemons/control-plane/{etcd,kube-apiserver,kube-controller-manager}`` and
``daemons/<node>/kubelet``. The API server listens on 127.0.0.1 with the lab's own CA and a
bearer token (``<rundir>/kube/kubeconfig``, root only); everything else, the kubelets
included, is an API client, so killing and restarting any of them loses nothing.

Start order: PKI -> etcd -> API server -> controllers; kubelets as nodes come up. Every
start returns at once (``wait=False``) and ``wait_ready`` collects them, so the control plane
boots while the underlay is being built.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knetlab.daemon import status_rows, stop_pids
from knetlab.kube.client import KubeClient
from knetlab.kube.etcd import EtcdDaemon, free_port
from knetlab.kube.pki import make_pki

if TYPE_CHECKING:
    from knetlab.daemon import Daemon
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.nodes.pod import Pod
    from knetlab.rundir import RunDir
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.kube")
OWNER = "control-plane"
MIRROR = "kubernetes.io/config.mirror"  # the kubelet's mark on a static pod's API object
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
KUBELET_STOP_S = 15.0  # a kubelet's own teardown of its pods (CNI DEL each) before SIGKILL


class ControlPlane:
    def __init__(self, rundir: RunDir, spec: ClusterSpec,
                 etcd: EtcdDaemon | None = None) -> None:
        self.rundir, self.spec = rundir, spec
        self.kube_dir = rundir.path / "kube"
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        # The lab's etcd, when the lab runs it (its control-plane store); else our own.
        self.etcd = etcd or EtcdDaemon(rundir, OWNER)
        self.owns_etcd = etcd is None
        self.apiserver: Daemon | None = None
        self.controllers: Daemon | None = None
        self.kubelets: dict[str, Daemon] = {}
        self._client: KubeClient | None = None

    @property
    def cluster_dns(self) -> str:
        """kube-dns's Service address, the tenth of the service CIDR as kubeadm picks it:
        pods' resolv.conf points there (never at the machine's own resolver)."""
        return str(self.spec.service_cidr.network_address + 10)

    @property
    def kubeconfig(self) -> Path:
        return self.kube_dir / "kubeconfig"

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            self._client = KubeClient.from_kubeconfig(self.kubeconfig)
        return self._client

    def describe(self) -> dict[str, Any]:
        return {"server": self.server, "kubeconfig": str(self.kubeconfig),
                "etcd": self.etcd.client_url}

    def daemons(self) -> list[dict[str, Any]]:
        """Each running daemon as the status table lists them (name, owner, pid)."""
        return status_rows([self.etcd, self.apiserver, self.controllers,
                            *self.kubelets.values()])

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start etcd, then the API server and the controllers; returns before they are
        ready (``wait_ready``)."""
        from knetlab.kube.apiserver import ApiServerDaemon
        from knetlab.kube.controllers import ControllerManagerDaemon

        make_pki(self.kube_dir, self.server, self.rundir.cluster,
                 ips=(str(self.spec.service_cidr.network_address + 1),))
        if self.owns_etcd:
            self.etcd.start()  # the API server needs it at once
        self.apiserver = ApiServerDaemon(
            self.rundir, OWNER, etcd_url=self.etcd.client_url, port=self.port,
            service_cidr=str(self.spec.service_cidr))
        self.apiserver.start(wait=True)
        lb = self.spec.load_balancer_cidr
        self.controllers = ControllerManagerDaemon(self.rundir, OWNER,
                                                   kubeconfig=self.kubeconfig,
                                                   load_balancer_cidr=str(lb) if lb else "")
        self.controllers.start(wait=False)

    def wait_ready(self) -> None:
        for d in [self.controllers, *self.kubelets.values()]:
            if d is not None:
                d.wait_ready()

    def start_kubelet(self, node: K8sNode, cni_path: list[str], wait: bool = False) -> None:
        from knetlab.kube.kubelet import KubeletDaemon

        kubelet = KubeletDaemon(
            self.rundir, node.name, kubeconfig=self.kubeconfig, node_netns=node.netns,
            node_ip=node.node_ip, pod_cidr=node.spec.pod_cidr,
            cni_conf=node.dir / "cni" / "net.d" / "10-knetlab.conflist",
            cni_path=cni_path, cni_cache=node.dir / "cni",
            cluster_dns=self.cluster_dns, cluster_domain=self.spec.dns_domain)
        self.kubelets[node.name] = kubelet
        kubelet.start(wait=wait)

    def remove_node(self, name: str) -> None:
        """A node leaves: its kubelet stops and its Node object goes (PodGC then deletes its
        pods and their controllers recreate them elsewhere)."""
        kubelet = self.kubelets.pop(name, None)
        if kubelet:
            kubelet.stop()
        from knetlab.kube.client import ApiError
        try:
            self.client.delete("nodes", name)
        except ApiError as exc:
            if exc.code != 404:
                raise

    # -- pods the API runs, as the rest of knetlab sees them ------------------------------
    def running_pods(self) -> list[dict[str, Any]]:
        """Pods the kubelets run with their own network (mirror and hostNetwork pods left
        out): name (``name`` in default, ``name.namespace`` elsewhere, as Mininet needs one
        word), namespace, node, ip and the pid of the sandbox holding the namespaces."""
        from knetlab.errors import NotFoundError
        from knetlab.kube.runtime import sandbox_pid
        out = []
        for pod in self.client.list("pods").get("items", []):
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            if (MIRROR in (meta.get("annotations") or {}) or spec.get("hostNetwork")
                    or not status.get("podIP") or meta.get("deletionTimestamp")):
                continue
            try:
                pid = sandbox_pid(self.rundir, pod)
            except NotFoundError:
                continue
            ns = meta.get("namespace", "default")
            out.append({"name": meta["name"] if ns == "default" else f"{meta['name']}.{ns}",
                        "namespace": ns, "node": spec.get("nodeName", ""),
                        "ip": status["podIP"], "pid": pid})
        return out

    # -- topology pods: static pods, seen in the API through their mirror pods ----------
    def mirror_pods(self, pods: list[Pod]) -> None:
        """Show pods the topology file made (wired by CNI before the API knew them) as the
        kubelet shows static pods: a mirror Pod object per pod, Running with its IP. The
        kubelets leave mirror pods alone; deleting one in the API does not stop the pod."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._mirror, pods))

    def _mirror(self, pod: Pod) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod.name, "namespace": "default",
                            "labels": {"knetlab.io/source": "topology"},
                            "annotations": {MIRROR: pod.container_id,
                                            "kubernetes.io/config.source": "file"}},
               "spec": {"nodeName": pod.node_name,
                        "containers": [{"name": "pause", "image": PAUSE_IMAGE}]}}
        created = self.client.create("pods", obj, "default")
        node_ip = self.spec.node(pod.node_name).ip.split("/")[0]
        created["status"] = {
            "phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
            "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
            "startTime": now, "qosClass": "BestEffort",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady",
                                     "Ready")],
            "containerStatuses": [{"name": "pause", "image": PAUSE_IMAGE,
                                   "imageID": f"knetlab://{PAUSE_IMAGE}",
                                   "containerID": f"knetlab://{pod.container_id}",
                                   "ready": True, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}}]}
        self.client.update("pods", created, "default", subresource="status")

    def delete_mirror_pod(self, name: str) -> None:
        from knetlab.kube.client import ApiError
        try:
            self.client.delete("pods", name, "default", grace_period=0)
        except ApiError as exc:
            if exc.code != 404:
                raise

    def stop(self) -> None:
        # Every kubelet at once: each tears its pods down (CNI DEL, SIGTERM, grace) on
        # SIGTERM, and 100 of them one after another took minutes.
        kubelets = [d for d in self.kubelets.values() if d.pid]
        stop_pids([(d.pid, d.match()) for d in kubelets if d.pid], timeout=KUBELET_STOP_S)
        for d in kubelets:
            d.stop()  # reaps and removes the pid file
        for d in [self.controllers, self.apiserver, self.etcd if self.owns_etcd else None]:
            if d is not None:
                try:
                    d.stop()
                except Exception:  # noqa: BLE001 - teardown goes on; clean removes the rest
                    log.exception("stopping %s failed", d.name)
        self.kubelets = {}
