"""LoadBalancer addresses made reachable on a segment: MetalLB's layer-2 mode.

The controller manager's ``service-lb`` allocator (knetlab/kube/controllers/loadbalancer.py)
gives each LoadBalancer Service an address from the topology's ``loadBalancerCIDR``; this
add-on runs one speaker per node (``agent.py``, a Daemon in the node's namespace, as
MetalLB's speaker DaemonSet) and the elected node answers ARP for the address
(``election.py``). Outside clients on the segment route ``loadBalancerCIDR`` on-link
(knetlab/topologies/clients.py).

Only on a segment underlay: on leaf-spine an address cannot be announced over layer 2 to
other racks; there calico-bgp advertises the pool from every node over BGP (Calico's
service IP advertisement, knetlab/overlays/calico.py). Without ``loadBalancerCIDR`` the
add-on does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knetlab import pyagent
from knetlab.addons import Addon, register
from knetlab.daemon import status_rows

if TYPE_CHECKING:
    from pathlib import Path

    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir


class SpeakerDaemon(pyagent.PyAgent):
    name = "lb-speaker"
    ready_timeout = 60.0  # informers list through an API server busy with a bring-up

    def __init__(self, rundir: RunDir, node: K8sNode, kubeconfig: Path, pool: str) -> None:
        super().__init__(rundir, node.name)  # beside the API server; acts in node.netns
        self.node_netns, self.node_ip = node.netns, node.node_ip
        self.kubeconfig, self.pool = kubeconfig, pool
        self.ready_file = self.dir / "ready"

    def command(self) -> list[str]:
        return [*pyagent.argv("knetlab.addons.lbspeaker"), "--kubeconfig",
                str(self.kubeconfig), "--node", self.owner, "--node-ip", self.node_ip,
                "--node-netns", self.node_netns,
                "--pool", self.pool, "--ready-file", str(self.ready_file)]

    def is_ready(self) -> bool:
        return self.ready_file.exists()


@register
class LoadBalancerSpeaker(Addon):
    name = "lb-speaker"

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.speakers: dict[str, SpeakerDaemon] = {}

    def enabled(self) -> bool:
        spec = self.cluster.spec
        return spec.load_balancer_cidr is not None and spec.underlay.type == "segment"

    def start_node(self, node: K8sNode) -> None:
        if not self.enabled() or node.name in self.speakers:
            return
        speaker = SpeakerDaemon(self.cluster.rundir, node, self.cluster.kubeconfig,
                                str(self.cluster.spec.load_balancer_cidr))
        speaker.start(wait=False)
        self.speakers[node.name] = speaker

    def wait_ready(self) -> None:
        for speaker in self.speakers.values():
            speaker.wait_ready()

    def daemons(self) -> list[dict[str, Any]]:
        return status_rows(self.speakers.values())

    def stop_node(self, node: K8sNode) -> None:
        speaker = self.speakers.pop(node.name, None)
        if speaker is not None:
            speaker.stop()

    def stop(self) -> None:
        for speaker in self.speakers.values():
            speaker.stop()
        self.speakers = {}
