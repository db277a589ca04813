"""Cluster: the Python API. Load a topology, bring it up, use it, tear it down.

    with Cluster.load("topologies/default.yaml") as c:
        print(c.pod("pod-1-0").cmd("ping -c1", c.pod("pod-2-0").ip))

Bring-up order: run dir -> the lab's etcd (the control-plane store: knetlab/labstore.py)
-> Kubernetes control plane (API server, controllers; boots
while the rest is built) -> (OVS for the underlay) -> underlay -> data plane setup -> nodes
(uplink, sysctls, data plane, CNI, kubelet daemon) -> data plane sync -> topology pods (CNI
ADD, in parallel across nodes; shown in the API as static pods' mirror pods) -> kubelets
ready -> state file. Any failure, or Ctrl-C, tears down what was built.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mininet.net import Mininet

from knetlab import clean
from knetlab.addons import Addon, addons
from knetlab.check import Report, endpoints, format_report, run_check
from knetlab.dataplane import Backend, backends
from knetlab.errors import KnetlabError, NotFoundError
from knetlab.faults import Faults
from knetlab.kube.controlplane import ControlPlane
from knetlab.kube.etcd import EtcdDaemon
from knetlab.labstore import etcd_store, start_lab_etcd
from knetlab.nodes.host import NetnsHost
from knetlab.nodes.k8snode import K8sNode
from knetlab.nodes.pod import ApiPod, Pod
from knetlab.nodes.sandbox_runtime import CNI_PATHS, SandboxRuntime
from knetlab.ovs import OvsInstance
from knetlab.rundir import RunDir, pid_alive
from knetlab.store import Store
from knetlab.topologies.clients import Client, build_clients, describe_clients
from knetlab.topologies.fields import NAME_MAX, NODE_NAME_MAX, name_problem
from knetlab.topologies.schema import ClusterSpec, PodSpec, load_topology
from knetlab.topologies.underlay import Underlay

if TYPE_CHECKING:
    from knetlab.docker.engine import DockerService

log = logging.getLogger("knetlab.cluster")
CNI_WORKERS = 6  # plugin runs are mostly exec + wait; a few in flight fill 2 cores


class Cluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.rundir = RunDir(spec.name)
        self.net: Mininet | None = None
        self.underlay: Underlay | None = None
        self.backend: Backend | None = None
        self.ovs: OvsInstance | None = None
        self.nodes: dict[str, K8sNode] = {}
        self.pods: dict[str, Pod] = {}
        self.clients: dict[str, Client] = {}  # hosts outside the cluster (topology `clients`)
        self.timings: dict[str, float] = {}
        # Told each bring-up phase as it ends (name, seconds): `knetlab up` prints progress.
        self.on_phase: Callable[[str, float], object] | None = None
        self.etcd: EtcdDaemon | None = None  # the lab's etcd: store and Kubernetes' backend
        self._store_boot: Future[None] | None = None  # its start, while the network is built
        self.store: Store | None = None  # the lab's control-plane store (etcd), once up
        # the API's pods as Mininet hosts: looked up from several threads (pings in parallel)
        self._api_hosts_lock = threading.Lock()
        self.control: ControlPlane | None = None  # its Kubernetes, unless spec.kubernetes is off
        self._kube: Any = None  # the official client, made on first use
        self.addons: list[Addon] = []  # cluster services on top of Kubernetes (knetlab.addons)
        self.faults = Faults(self)  # injected faults (knetlab.faults); faults.clear() undoes
        self.docker_service: DockerService | None = None  # node engines, made by `docker` use

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        return cls(load_topology(path))

    # -- context manager: up on enter, down on exit --------------------------------
    def __enter__(self) -> Cluster:
        if self.net is None:
            self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    # -- bring-up ----------------------------------------------------------------
    def up(self) -> Cluster:
        self._claim_rundir()
        t0 = time.monotonic()
        try:
            self._build()
        except BaseException:
            log.error("bring-up of %s failed; tearing down what was built", self.spec.name)
            self.down()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _claim_rundir(self) -> None:
        state = self.rundir.read_state()
        if state and pid_alive(state.get("owner_pid", 0), state.get("owner_match", "\0")):
            raise KnetlabError(f"cluster {self.spec.name} is already running (pid "
                               f"{state['owner_pid']}); run `knetlab down` first")
        if self.rundir.exists():  # leftovers of a crashed run of the same lab
            clean.clean_lab(self.rundir)
        self.rundir.create()

    def _build(self) -> None:
        spec = self.spec
        self.net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False,
                           autoStaticArp=False, waitConnected=False)
        self._write_state("starting")
        t = time.monotonic()
        # The lab's etcd first, in the background: its PKI and boot overlap the underlay;
        # the data plane's setup and the API server wait for it.
        with ThreadPoolExecutor(2) as boot:
            self._store_boot = boot.submit(self._start_store)
            control = boot.submit(self._start_control_plane) if spec.kubernetes else None
            self._build_network()
            if control is not None:
                control.result()
        self._phase_done("network", t)
        t = time.monotonic()
        if self.control is not None:
            for node in self.nodes.values():
                self.control.start_kubelet(node, CNI_PATHS[spec.cni])
        self._start_pods(spec.pods)
        self._phase_done("pods", t)
        if self.control is not None:
            t = time.monotonic()
            self.control.wait_ready()
            self.control.mirror_pods(list(self.pods.values()))
            self.addons = [cls(self) for cls in addons().values()]
            for addon in self.addons:
                addon.start()
                for node in self.nodes.values():
                    addon.start_node(node)
            self._phase_done("kubernetes", t)
        self._write_state("running")

    def _phase_done(self, name: str, started: float) -> None:
        self.timings[name] = time.monotonic() - started
        if self.on_phase is not None:
            self.on_phase(name, self.timings[name])

    def _start_store(self) -> None:
        ips = (str(self.spec.service_cidr.network_address + 1),)  # the API server's too
        self.etcd = start_lab_etcd(self.rundir, ips)
        self.store = etcd_store(self.etcd)

    def _start_control_plane(self) -> None:
        assert self._store_boot is not None
        self._store_boot.result()
        self.control = ControlPlane(self.rundir, self.spec, etcd=self.etcd)
        self.control.start()

    def _build_network(self) -> None:
        spec = self.spec
        cls = backends()[spec.dataplane]
        assert self.net is not None
        t = time.monotonic()
        if spec.switch == "ovs":
            self.ovs = OvsInstance(self.rundir, "underlay")
            self.ovs.start()
            os.environ.update(self.ovs.env)  # Mininet's OVSSwitch runs plain ovs-vsctl
        self.underlay = Underlay(spec, self.net, self.rundir, cls.wants_segment_router)
        self.underlay.build()
        assert self._store_boot is not None
        self._store_boot.result()  # the lab's etcd is up (or its failure is raised here)
        self.backend = cls(self)
        self.backend.setup()
        self.clients = build_clients(self)
        self._phase_done("underlay", t)
        t = time.monotonic()
        for node_spec in spec.nodes:
            self._start_node(node_spec)
        self.backend.sync()
        self.underlay.start_reconciler(self._fabric_changed)
        self._phase_done("nodes", t)

    def _fabric_changed(self, nodes_back: list[K8sNode]) -> None:
        """The underlay re-applied its routes after a link changed: a data plane that
        programs the fabric re-programs it (next hops over the links now up), and the node
        routes a returning uplink lost."""
        backend = self.backend
        if backend is not None and backend.wants_segment_router:
            for node in nodes_back:
                backend.setup_node(node)
            backend.sync()

    def _start_node(self, node_spec: Any) -> K8sNode:
        assert self.net is not None and self.underlay and self.backend
        node = self.net.addHost(node_spec.name, cls=K8sNode, rundir=self.rundir, spec=node_spec,
                                ip=None)
        self.nodes[node.name] = node
        self.underlay.attach_node(node)
        node.prepare()
        self.backend.setup_node(node)
        node.runtime = SandboxRuntime(node, self.backend.cni_config(node), self.spec.cni)
        return node

    def _start_pods(self, specs: list[PodSpec]) -> None:
        """Create and wire pods, nodes in parallel: each node's pause shells are made and
        wired (CNI ADD) in order, so addresses follow the topology."""
        assert self.net is not None
        by_node: dict[str, list[PodSpec]] = {}
        for ps in specs:
            if ps.name in self.pods or ps.name in self.nodes:
                raise KnetlabError(f"name {ps.name} is already used in cluster {self.spec.name}")
            by_node.setdefault(ps.node, []).append(ps)
        try:
            with ThreadPoolExecutor(CNI_WORKERS) as pool:
                for fut in [pool.submit(self._wire, group) for group in by_node.values()]:
                    fut.result()
        finally:  # listed in topology order, whatever order the threads finished in
            order = {p.name: i for i, p in enumerate(self.spec.pods + specs)}
            self.pods = dict(sorted(self.pods.items(), key=lambda kv: order.get(kv[0], 0)))

    def _wire(self, specs: list[PodSpec]) -> None:
        assert self.net is not None
        for ps in specs:
            pod = self.net.addHost(ps.name, cls=Pod, rundir=self.rundir, node=ps.node, ip=None)
            self.pods[ps.name] = pod
            runtime = self.nodes[pod.node_name].runtime
            assert runtime
            try:
                runtime.run_pod_sandbox(pod)
            except Exception as exc:
                raise KnetlabError(f"failed to set up networking of pod {pod.name} on "
                                   f"{pod.node_name}: {exc}") from exc

    # -- live changes ----------------------------------------------------------------
    def add_pod(self, name: str, node: str) -> Pod:
        """Add a pod to the running lab; on any failure the lab is left as it was."""
        self._check_new_name("pod", name, NAME_MAX)
        self._known_node(node)
        try:
            self._start_pods([PodSpec(name, node)])
            self.spec.pods.append(PodSpec(name, node))
            if self.control is not None:
                self.control.mirror_pods([self.pods[name]])
        except BaseException:
            self._undo_pod(name)
            raise
        self._write_state("running")
        return self.pods[name]

    def _undo_pod(self, name: str) -> None:
        """Roll back a failed add_pod, each step tried whatever the others did."""
        self.spec.pods = [p for p in self.spec.pods if p.name != name]
        pod = self.pods.pop(name, None)
        if pod is not None:
            runtime = self.nodes[pod.node_name].runtime
            if runtime is not None:
                _attempt(f"CNI DEL of pod {name}", runtime.stop_pod_sandbox, pod)
            _attempt(f"remove pod {name}", self._remove_host, pod)
        if self.control is not None:
            _attempt(f"delete mirror pod {name}", self.control.delete_mirror_pod, name)

    def _check_new_name(self, kind: str, name: str, max_len: int) -> None:
        """Live additions obey the topology's naming rules, and take no name in use."""
        problem = name_problem(name, max_len, host=True)
        if problem:
            raise KnetlabError(f"cannot add {kind}: {problem}")
        used = set(self.nodes) | set(self.pods)
        if self.net is not None:
            used |= set(self.net.nameToNode)  # routers, reflectors, containers
        if name in used:
            raise KnetlabError(f"cannot add {kind}: name {name} is already used in cluster "
                               f"{self.spec.name}")

    def delete_pod(self, name: str) -> None:
        """Delete a topology pod (the API's pods are deleted through the API)."""
        pod = self.pods.get(name)
        if pod is None:
            raise NotFoundError(f"no topology pod {name!r} in cluster {self.spec.name} "
                                "(delete the API's pods with kubectl)")
        runtime = self.nodes[pod.node_name].runtime
        assert runtime
        runtime.stop_pod_sandbox(pod)
        self._remove_host(pod)
        del self.pods[name]
        if self.control is not None:
            self.control.delete_mirror_pod(name)
        self.spec.pods = [p for p in self.spec.pods if p.name != name]
        self._write_state("running")

    def add_node(self, name: str, rack: int = 1) -> K8sNode:
        """Add a node to the running lab; on any failure the lab is left as it was."""
        self._check_new_name("node", name, NODE_NAME_MAX)
        if not 1 <= rack <= self.spec.underlay.racks:
            raise KnetlabError(f"rack {rack} does not exist (1..{self.spec.underlay.racks})")
        node_spec = self.spec.add_node(name, rack)
        try:
            node = self._start_node(node_spec)
            assert self.backend
            self.backend.sync()
            if self.control is not None:
                self.control.start_kubelet(node, CNI_PATHS[self.spec.cni], wait=True)
            for addon in self.addons:
                addon.start_node(node)
        except BaseException:
            self._undo_node(name)
            raise
        self._write_state("running")
        return node

    def _undo_node(self, name: str) -> None:
        """Roll back a failed add_node: delete_node's steps, each tried whatever the others
        did (the node may be half built), then the other nodes forget it."""
        self.spec.nodes = [n for n in self.spec.nodes if n.name != name]
        node = self.nodes.pop(name, None)
        if node is not None:
            for addon in self.addons:
                _attempt(f"stop {addon.name} on {name}", addon.stop_node, node)
            if self.control is not None:
                _attempt(f"remove node {name} from Kubernetes", self.control.remove_node, name)
            if self.backend is not None:
                _attempt(f"remove node {name} from the data plane", self.backend.remove_node,
                         node)
            if self.underlay is not None:
                _attempt(f"detach node {name}", self.underlay.detach_node, node)
            _attempt(f"remove node {name}", self._remove_host, node)
            _attempt(f"forget {node.node_ip}", self._forget_address, node.node_ip)
            # Its IPAM and CNI state must not greet a later node of the same name.
            shutil.rmtree(self.rundir.node_dir(name), ignore_errors=True)
        if self.backend is not None:
            _attempt("re-sync the data plane", self.backend.sync)

    def delete_node(self, name: str) -> None:
        node = self._known_node(name)
        for addon in self.addons:
            addon.stop_node(node)
        if self.control is not None:
            self.control.remove_node(name)
        for pod in [p for p in self.pods.values() if p.node_name == name]:
            self._remove_host(pod)
            del self.pods[pod.name]
        assert self.backend and self.underlay
        self.backend.remove_node(node)
        self.underlay.detach_node(node)
        self._remove_host(node)
        self._forget_address(node.node_ip)
        del self.nodes[name]
        self.spec.nodes = [n for n in self.spec.nodes if n.name != name]
        self.spec.pods = [p for p in self.spec.pods if p.node != name]
        try:
            self.backend.sync()  # raises if the others do not converge without it
        finally:
            self._write_state("running")  # the node is gone either way

    def _forget_address(self, ip: str) -> None:
        """A departed node's address comes back with another MAC (the next node added takes
        the freed index): its neighbours must not keep sending to the old MAC until their
        entry times out."""
        assert self.net is not None
        for host in self.net.hosts:
            if isinstance(host, NetnsHost) and not isinstance(host, Pod):
                host.run(["ip", "neigh", "flush", "to", ip], check=False)

    def _remove_host(self, host: NetnsHost) -> None:
        assert self.net is not None
        host.terminate()
        if host in self.net.hosts:
            self.net.hosts.remove(host)
        self.net.nameToNode.pop(host.name, None)

    # -- teardown ------------------------------------------------------------------
    def down(self) -> None:
        if self.underlay is not None:
            self.underlay.stop_reconciler()  # no re-apply into a lab being torn down
        for addon in self.addons:
            try:
                addon.stop()
            except Exception:  # noqa: BLE001 - teardown goes on; clean removes the rest
                log.exception("add-on %s failed to stop", addon.name)
        self.addons = []
        if self.control is not None:
            self.control.stop()
            self.control = None
        self._release_pods()
        if self.backend:
            try:
                self.backend.teardown()
            except Exception:  # noqa: BLE001 - teardown goes on; clean removes the rest
                log.exception("data plane teardown failed")
        if self.net is not None:
            for host in self.net.hosts:
                host.terminate()
            for sw in self.net.switches:
                sw.stop(deleteIntfs=False)
        if self.ovs:
            self.ovs.stop()
            for key in self.ovs.env:
                os.environ.pop(key, None)
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.etcd is not None:  # last: CNI DEL and the data plane release state in it
            self.etcd.stop()
            self.etcd = None
        clean.clean_lab(self.rundir)  # whatever the steps above missed, by ownership
        self.net, self.backend, self.ovs = None, None, None
        self.nodes, self.pods, self.clients = {}, {}, {}
        self.docker_service = None  # its engines' objects went with the nodes

    def _release_pods(self) -> None:
        """CNI DEL for every topology pod while its namespace and the data plane still
        exist, nodes in parallel as ``_start_pods`` does ADD: IPAM (host-local files,
        calico blocks' allocations) and host-side state are released as a kubelet
        releases them. Also for pods whose ADD failed (DEL cleans up partial work); a
        failure is logged and teardown goes on."""
        by_node: dict[str, list[Pod]] = {}
        for pod in self.pods.values():
            by_node.setdefault(pod.node_name, []).append(pod)

        def release(pods: list[Pod]) -> None:
            for pod in pods:
                node = self.nodes.get(pod.node_name)
                if node is None or node.runtime is None:
                    continue  # its node never got that far: no ADD ran
                try:
                    node.runtime.stop_pod_sandbox(pod)
                except Exception:  # noqa: BLE001 - teardown goes on; clean removes the rest
                    log.exception("CNI DEL of pod %s on %s failed", pod.name, node.name)

        with ThreadPoolExecutor(CNI_WORKERS) as pool:
            list(pool.map(release, by_node.values()))

    # -- lookups ---------------------------------------------------------------------
    def k8s_nodes(self) -> list[K8sNode]:
        return list(self.nodes.values())

    def pod(self, name: str) -> Pod | ApiPod:
        """A pod by name: the topology's, or one the API runs (``web-0``; ``name.namespace``
        outside default), as a host with ``cmd()``."""
        if name in self.pods:
            return self.pods[name]
        self.sync_api_hosts()
        host = self.net.nameToNode.get(name) if self.net is not None else None
        if isinstance(host, ApiPod):
            return host
        raise NotFoundError(f"no pod {name!r} in cluster {self.spec.name}")

    def node(self, name: str) -> K8sNode:
        return self._known_node(name)

    def _known_node(self, name: str) -> K8sNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFoundError(f"no node {name!r} in cluster {self.spec.name}") from None

    def host(self, name: str) -> NetnsHost:
        """Any namespace of the lab by name: pod, node or router."""
        assert self.net is not None
        if name in self.net.nameToNode and isinstance(self.net[name], NetnsHost):
            return self.net[name]
        raise NotFoundError(f"no pod, node or router {name!r} in cluster {self.spec.name}")

    def check(self, sample: int | None = None) -> Report:
        """Prove the Kubernetes network model with real packets (see knetlab.check)."""
        pods, nodes = endpoints(self.state())
        return run_check(pods, nodes, sample)

    # -- Kubernetes ------------------------------------------------------------------
    def _control(self) -> ControlPlane:
        if self.control is None:
            raise KnetlabError(f"cluster {self.spec.name} runs without Kubernetes "
                               "(topology has `kubernetes: false`)")
        return self.control

    @property
    def kubeconfig(self) -> Path:
        return self._control().kubeconfig

    @property
    def kube(self) -> Any:
        """An official ``kubernetes`` client (``ApiClient``) for this lab's API server:
        ``kubernetes.client.CoreV1Api(c.kube).list_namespaced_pod("default")``."""
        if self._kube is None:
            from kubernetes import config
            self._kube = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._kube

    def apply(self, manifest: str | Path | dict[str, Any], namespace: str = "default"
              ) -> list[dict[str, Any]]:
        """Create (or update) every object of a manifest: a path, YAML text or one dict."""
        import yaml
        if isinstance(manifest, dict):
            docs = [manifest]
        else:
            text = manifest
            if isinstance(manifest, Path) or "\n" not in manifest:
                text = Path(manifest).read_text()
            docs = [d for d in yaml.safe_load_all(text) if d]
        client = self._control().client
        out = []
        for doc in docs:
            items = doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc]
            out += [client.apply(obj, namespace) for obj in items]
        return out

    # -- requests from the CLI (through the supervisor) ----------------------------
    RPC = ("state", "add_node", "delete_node", "add_pod", "delete_pod", "check_report",
           "docker", "fault")

    def rpc(self, op: str, args: dict[str, Any]) -> Any:
        """Run one named operation for a remote caller; only RPC names are reachable (a
        command's own in-lab half: ``knetlab.supervisor.call_in_lab``)."""
        if op not in self.RPC:
            raise KnetlabError(f"unknown operation {op!r}")
        result = getattr(self, op)(**args)
        return result.name if isinstance(result, NetnsHost) else result

    def check_report(self, sample: int | None = None) -> str:
        return format_report(self.check(sample))

    def fault(self, action: str, args: dict[str, Any]) -> Any:
        """One ``knetlab fault ACTION`` (link-down, kill, loss, ...; see knetlab.faults)."""
        return self.faults.run(action, args)

    def docker(self, node: str, argv: list[str]) -> str:
        """Run one ``docker`` command line on a node's emulated engine (knetlab.docker);
        the engines are made on first use and belong to this cluster until ``down``."""
        from knetlab.docker.engine import DockerService
        from knetlab.docker.execute import execute
        if self.docker_service is None:
            self.docker_service = DockerService(self)
        return execute(self.docker_service, node, argv)

    # -- state -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        assert self.net is not None
        hosts = {h.name: {"pid": h.pid, "kind": type(h).__name__.lower()}
                 for h in self.net.hosts if isinstance(h, NetnsHost)}
        out: dict[str, Any] = {
            "cluster": self.spec.name,
            "file": self.spec.file,
            "dataplane": self.spec.dataplane,
            "underlay": self.spec.underlay.type,
            "switch": self.spec.switch,
            "podCIDR": str(self.spec.pod_cidr),
            "serviceCIDR": str(self.spec.service_cidr),
            "nodes": [{"name": n.name, "ip": n.node_ip, "podCIDR": n.spec.pod_cidr,
                       "rack": n.spec.rack, **(self.backend.describe_node(n)
                                               if self.backend else {})}
                      for n in self.nodes.values()],
            "pods": [{"name": p.name, "node": p.node_name, "ip": p.ip}
                     for p in self.pods.values()],
            "hosts": hosts,
        }
        if self.clients:
            out["clients"] = describe_clients(self.clients)
        if self.backend:
            out.update(self.backend.describe())
        if self.etcd is not None:
            out["store"] = {"etcd": self.etcd.client_url}
            if self.control is None:
                out["daemons"] = [*out.get("daemons", []), {
                    "name": self.etcd.name, "owner": self.etcd.owner, "pid": self.etcd.pid}]
        if self.control is not None:
            out["kubernetes"] = self.control.describe()
            out["daemons"] = [*out.get("daemons", []), *self.control.daemons()]
            for addon in self.addons:
                out["daemons"] += addon.daemons()
            if self.net is not None and self.rundir.exists():
                for p in self._api_pods():
                    out["pods"].append({"name": p["name"], "node": p["node"], "ip": p["ip"],
                                        "source": "api"})
                    hosts[p["name"]] = {"pid": p["pid"], "kind": "pod"}
        return out

    def _api_pods(self) -> list[dict[str, Any]]:
        """The API's running pods, not the topology's (an API that is down lists none)."""
        assert self.control is not None
        try:
            return [p for p in self.control.running_pods() if p["name"] not in self.pods]
        except (KnetlabError, OSError) as exc:
            log.warning("cannot list the API's pods: %s", exc)
            return []

    def sync_api_hosts(self) -> None:
        """Mininet hosts for the API's running pods (``web-0 ping web-1`` in the CLI); hosts
        of pods that are gone are dropped."""
        if self.control is None or self.net is None:
            return
        live = {p["name"]: p for p in self._api_pods()}
        with self._api_hosts_lock:  # two threads must not make or drop the same host
            for host in [h for h in self.net.hosts if isinstance(h, ApiPod)]:
                p = live.get(host.name)
                if p is None or p["pid"] != host.sandbox_pid:
                    self._remove_host(host)
            for name, p in live.items():
                if name not in self.net.nameToNode:
                    self.net.addHost(name, cls=ApiPod, rundir=self.rundir, node=p["node"],
                                     sandbox_pid=p["pid"], ip=p["ip"])

    def _write_state(self, phase: str) -> None:
        state = self.state() if self.net is not None else {}  # (Mininet has __len__)
        me = os.getpid()
        match = Path(f"/proc/{me}/cmdline").read_bytes().split(b"\0")[0].decode()
        state.update(phase=phase, owner_pid=me, owner_match=match)
        self.rundir.write_state(state)


def _attempt(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """One step of a rollback: a failure is logged and the rollback goes on."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the remaining steps still have to run
        log.exception("rollback: %s failed", what)
