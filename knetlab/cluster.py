"""Cluster: the Python API. Load a topology, bring it up, use it, tear it down.

    with Cluster.load("topologies/default.yaml") as c:
        print(c.pod("pod-1-0").cmd("ping -c1", c.pod("pod-2-0").ip))

Bring-up order: run dir -> (OVS for the underlay) -> underlay -> data plane setup ->
nodes (uplink, sysctls, data plane, kubelet) -> data plane sync -> pods (CNI ADD, in
parallel across nodes) -> state file. Any failure, or Ctrl-C, tears down what was built.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mininet.net import Mininet

from knetlab import clean
from knetlab.check import Report, endpoints, format_report, run_check
from knetlab.dataplane import Backend, backends
from knetlab.errors import KnetlabError, NotFoundError
from knetlab.nodes.host import NetnsHost
from knetlab.nodes.k8snode import K8sNode
from knetlab.nodes.kubelet import Kubelet
from knetlab.nodes.pod import Pod
from knetlab.ovs import OvsInstance
from knetlab.rundir import RunDir, pid_alive
from knetlab.store import Store, lab_store
from knetlab.topologies.schema import ClusterSpec, PodSpec, load_topology
from knetlab.topologies.underlay import Underlay

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
        self.timings: dict[str, float] = {}
        self.store: Store | None = None  # the lab's control-plane store, once up

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
        self.store = lab_store(self.rundir.path)

    def _build(self) -> None:
        spec = self.spec
        cls = backends()[spec.dataplane]
        self.net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False,
                           autoStaticArp=False, waitConnected=False)
        self._write_state("starting")
        t = time.monotonic()
        if spec.switch == "ovs":
            self.ovs = OvsInstance(self.rundir, "underlay")
            self.ovs.start()
            os.environ.update(self.ovs.env)  # Mininet's OVSSwitch runs plain ovs-vsctl
        self.underlay = Underlay(spec, self.net, self.rundir, cls.wants_segment_router)
        self.underlay.build()
        self.backend = cls(self)
        self.backend.setup()
        self.timings["underlay"] = time.monotonic() - t
        t = time.monotonic()
        for node_spec in spec.nodes:
            self._start_node(node_spec)
        self.backend.sync()
        self.timings["nodes"] = time.monotonic() - t
        t = time.monotonic()
        self._start_pods(spec.pods)
        self.timings["pods"] = time.monotonic() - t
        self._write_state("running")

    def _start_node(self, node_spec: Any) -> K8sNode:
        assert self.net is not None and self.underlay and self.backend
        node = self.net.addHost(node_spec.name, cls=K8sNode, rundir=self.rundir, spec=node_spec,
                                ip=None)
        self.nodes[node.name] = node
        self.underlay.attach_node(node)
        node.prepare()
        self.backend.setup_node(node)
        node.kubelet = Kubelet(node, self.backend.cni_config(node), self.spec.cni)
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
            kubelet = self.nodes[pod.node_name].kubelet
            assert kubelet
            try:
                kubelet.run_pod_sandbox(pod)
            except Exception as exc:
                raise KnetlabError(f"failed to set up networking of pod {pod.name} on "
                                   f"{pod.node_name}: {exc}") from exc

    # -- live changes ----------------------------------------------------------------
    def add_pod(self, name: str, node: str) -> Pod:
        self._known_node(node)
        self._start_pods([PodSpec(name, node)])
        self.spec.pods.append(PodSpec(name, node))
        self._write_state("running")
        return self.pods[name]

    def delete_pod(self, name: str) -> None:
        pod = self.pod(name)
        kubelet = self.nodes[pod.node_name].kubelet
        assert kubelet
        kubelet.stop_pod_sandbox(pod)
        self._remove_host(pod)
        del self.pods[name]
        self.spec.pods = [p for p in self.spec.pods if p.name != name]
        self._write_state("running")

    def add_node(self, name: str, rack: int = 1) -> K8sNode:
        if name in self.nodes or name in self.pods:
            raise KnetlabError(f"name {name} is already used in cluster {self.spec.name}")
        if not 1 <= rack <= self.spec.underlay.racks:
            raise KnetlabError(f"rack {rack} does not exist (1..{self.spec.underlay.racks})")
        node_spec = self.spec.add_node(name, rack)
        node = self._start_node(node_spec)
        assert self.backend
        self.backend.sync()
        self._write_state("running")
        return node

    def delete_node(self, name: str) -> None:
        node = self._known_node(name)
        for pod in [p for p in self.pods.values() if p.node_name == name]:
            self._remove_host(pod)
            del self.pods[pod.name]
        assert self.backend and self.underlay
        self.backend.remove_node(node)
        self.underlay.detach_node(node)
        self._remove_host(node)
        del self.nodes[name]
        self.spec.nodes = [n for n in self.spec.nodes if n.name != name]
        self.spec.pods = [p for p in self.spec.pods if p.node != name]
        self.backend.sync()
        self._write_state("running")

    def _remove_host(self, host: NetnsHost) -> None:
        assert self.net is not None
        host.terminate()
        if host in self.net.hosts:
            self.net.hosts.remove(host)
        self.net.nameToNode.pop(host.name, None)

    # -- teardown ------------------------------------------------------------------
    def down(self) -> None:
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
        clean.clean_lab(self.rundir)  # whatever the steps above missed, by ownership
        self.net, self.backend, self.ovs = None, None, None
        self.nodes, self.pods = {}, {}

    # -- lookups ---------------------------------------------------------------------
    def k8s_nodes(self) -> list[K8sNode]:
        return list(self.nodes.values())

    def pod(self, name: str) -> Pod:
        try:
            return self.pods[name]
        except KeyError:
            raise NotFoundError(f"no pod {name!r} in cluster {self.spec.name}") from None

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

    # -- requests from the CLI (through the supervisor) ----------------------------
    RPC = ("state", "add_node", "delete_node", "add_pod", "delete_pod", "check_report",
           "docker")

    def rpc(self, op: str, args: dict[str, Any]) -> Any:
        """Run one named operation for a remote caller; only RPC names (and the data
        plane's ``rpc_methods``) are reachable."""
        if op in self.RPC:
            result = getattr(self, op)(**args)
        elif self.backend and op in self.backend.rpc_methods():
            result = self.backend.rpc_methods()[op](**args)
        else:
            raise KnetlabError(f"unknown operation {op!r}")
        return result.name if isinstance(result, NetnsHost) else result

    def check_report(self, sample: int | None = None) -> str:
        return format_report(self.check(sample))

    def docker(self, node: str, argv: list[str]) -> str:
        """Run one ``docker`` command line on a node's emulated engine (knetlab.docker)."""
        from knetlab.docker.cli import execute
        return execute(self, node, argv)

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
        if self.backend:
            out.update(self.backend.describe())
        return out

    def _write_state(self, phase: str) -> None:
        state = self.state() if self.net is not None else {}  # (Mininet has __len__)
        me = os.getpid()
        match = Path(f"/proc/{me}/cmdline").read_bytes().split(b"\0")[0].decode()
        state.update(phase=phase, owner_pid=me, owner_match=match)
        self.rundir.write_state(state)
