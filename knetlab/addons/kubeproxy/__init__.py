"""kube-proxy: Services on every node, in the mode the topology names.

Topology::

    kubeProxy:
      mode: iptables      # default; nftables, userspace; ipvs is refused (no IP_VS here)
      iptablesBackend: legacy   # or nft: iptables' kernel interface (iptables, userspace)

One agent per node (``agent.py``, a recorded ``Daemon``: pid file, log and status under
``daemons/<node>/kube-proxy/``), each an API client watching Services and EndpointSlices and
writing that node's rules through its mode's ``Proxier`` (``proxier.py``; ``model.py`` is
what every mode renders). The agent also gives the API server an address pods can reach
(``apirelay.py``): this add-on points the ``kubernetes`` Service's Endpoints and
EndpointSlice at ``NODE_IP:6443`` of the lab's first three nodes, as a cluster's three API
servers would be listed (not every node: each change of that list makes every proxy sync,
which made a 100-node bring-up spend 4,600 syncs on it).

Package layout: model (desired state), proxier (interface + registry), iptables / nftables /
userspace (the modes), conntrack (stale UDP entries), apirelay, agent (the process),
commands (``knetlab proxy rules``, ``knetlab conntrack``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knetlab import pyagent
from knetlab.addons import Addon, register
from knetlab.addons.kubeproxy.apirelay import API_PORT
from knetlab.daemon import status_rows
from knetlab.kube.client import ApiError

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.addons.kubeproxy")
#: how many nodes' relays the ``kubernetes`` Service lists (a cluster's API servers)
API_ENDPOINTS = 3
MODES = ("iptables", "nftables", "userspace", "ipvs")
DAEMON = "kube-proxy"


class KubeProxyDaemon(pyagent.PyAgent):
    """The kube-proxy agent of node ``owner``; ready after its first successful sync. It
    runs in the root namespace (the API server is on its 127.0.0.1) and works in the node's
    (see agent.py)."""

    name = DAEMON
    ready_timeout = 60.0

    def __init__(self, rundir: RunDir, owner: str, *, kubeconfig: Path, node_netns: str,
                 node_ip: str, cluster_cidr: str, service_cidr: str, mode: str,
                 api_port: int, iptables_backend: str = "legacy") -> None:
        super().__init__(rundir, owner)
        self.kubeconfig, self.node_netns, self.node_ip = kubeconfig, node_netns, node_ip
        self.cluster_cidr, self.service_cidr, self.mode = cluster_cidr, service_cidr, mode
        self.api_port, self.iptables_backend = api_port, iptables_backend
        self.ready_file = self.dir / "ready"
        self.status_file = self.dir / "status.json"

    def command(self) -> list[str]:
        self.ready_file.unlink(missing_ok=True)
        return [*pyagent.argv("knetlab.addons.kubeproxy"),
                "--kubeconfig", str(self.kubeconfig), "--node", self.owner,
                "--netns", self.node_netns, "--node-ip", self.node_ip,
                "--cluster-cidr", self.cluster_cidr, "--service-cidr", self.service_cidr,
                "--mode", self.mode, "--dir", str(self.dir), "--api-port", str(self.api_port),
                "--iptables-backend", self.iptables_backend]

    def is_ready(self) -> bool:
        return self.ready_file.exists()


@register
class KubeProxy(Addon):
    name = "kube-proxy"
    section = "kubeProxy"

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.daemons_by_node: dict[str, KubeProxyDaemon] = {}
        self.published: list[str] | None = None  # the relays last written (None: not yet)

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        from knetlab.addons.kubeproxy.proxier import proxiers
        settings.only(["mode", "iptablesBackend"])
        mode = settings.str("mode", "iptables", choices=list(MODES))
        backend = settings.str("iptablesBackend", "legacy", choices=["legacy", "nft"])
        working = sorted(proxiers())
        if mode == "ipvs":
            lacks = ("" if Path("/proc/net/ip_vs").exists() else
                     "this kernel has no IP Virtual Server (CONFIG_IP_VS, module ip_vs) and "
                     "cannot load modules; ")
            raise settings.error("mode", f"kube-proxy mode ipvs is not available: {lacks}"
                                 "knetlab has no ipvs proxier",
                                 f"use one of: {', '.join(working)}")
        if mode not in working:
            raise settings.error("mode", f"kube-proxy mode {mode} is not built yet",
                                 f"use one of: {', '.join(working)}")
        return {"mode": mode, "iptablesBackend": backend}

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._publish_api_endpoints()

    def start_node(self, node: K8sNode) -> None:
        cluster = self.cluster
        control = cluster.control
        assert control is not None
        daemon = KubeProxyDaemon(
            cluster.rundir, node.name, kubeconfig=control.kubeconfig, node_netns=node.netns,
            node_ip=node.node_ip, cluster_cidr=str(cluster.spec.pod_cidr),
            service_cidr=str(cluster.spec.service_cidr), mode=self.settings["mode"],
            api_port=control.port, iptables_backend=self.settings["iptablesBackend"])
        self.daemons_by_node[node.name] = daemon
        # Not waited for: nodes boot their proxies in parallel (``wait_ready``); a Service
        # made before a proxy's first sync is rendered by that sync.
        daemon.start(wait=False)
        self._publish_api_endpoints()

    def stop_node(self, node: K8sNode) -> None:
        daemon = self.daemons_by_node.pop(node.name, None)
        if daemon is not None:
            daemon.stop()
        self._publish_api_endpoints()

    def stop(self) -> None:
        for daemon in self.daemons_by_node.values():
            daemon.stop()
        self.daemons_by_node = {}

    def wait_ready(self) -> None:
        for daemon in self.daemons_by_node.values():
            daemon.wait_ready()

    def daemons(self) -> list[dict[str, Any]]:
        return status_rows(self.daemons_by_node.values())

    # -- the ``kubernetes`` Service's endpoints ------------------------------------------
    def _publish_api_endpoints(self) -> None:
        """Endpoints and EndpointSlice ``kubernetes`` in ``default``: the relays
        (NODE_IP:6443) of the first ``API_ENDPOINTS`` nodes in the lab's order, as the API
        servers' endpoint reconciler lists their own addresses; unchanged (no write, no
        proxy sync) while those nodes stay."""
        control = self.cluster.control
        if control is None:
            return
        ips = [node.node_ip for name, node in self.cluster.nodes.items()
               if name in self.daemons_by_node][:API_ENDPOINTS]
        if ips == self.published:
            return
        port = {"name": "https", "port": API_PORT, "protocol": "TCP"}
        meta = {"name": "kubernetes", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes",
                           "endpointslice.kubernetes.io/skip-mirror": "true"}}
        endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": dict(meta),
                     "subsets": [{"addresses": [{"ip": ip} for ip in ips],
                                  "ports": [port]}] if ips else []}
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": dict(meta), "addressType": "IPv4", "ports": [port],
                  "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}
                                for ip in ips]}
        for obj in (endpoints, slice_):  # the lists are atomic: a patch replaces them
            try:
                control.client.apply(obj)
            except ApiError as exc:
                log.warning("cannot publish the kubernetes Service's %s: %s", obj["kind"], exc)
                return  # written again on the next node change
        self.published = ips
