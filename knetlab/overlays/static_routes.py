"""Routed data plane without encapsulation: a cloud's VPC routes (flannel's ``host-gw``
lives in ``knetlab.overlays.flannel``, lease- and agent-based).

- ``vpc-routes``: what flannel's aws-vpc/gce backends do: program the fabric's routers
  (the VPC router on a segment, ToRs and spines on leaf-spine) with a route per node's
  pod subnet; nodes send the whole pod CIDR to their router.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, ClassVar

from knetlab.dataplane import Backend, register
from knetlab.routes import reconcile_routes

if TYPE_CHECKING:
    from knetlab.nodes.host import NetnsHost
    from knetlab.nodes.k8snode import K8sNode


@register
class VpcRoutesBackend(Backend):
    name = "vpc-routes"
    wants_segment_router: ClassVar[bool] = True

    def setup_node(self, node: K8sNode) -> None:
        gw = self.cluster.underlay.gateway_for(node)
        reconcile_routes(node, {str(self.cluster.spec.pod_cidr): f"via {gw}"})

    def sync(self) -> None:
        desired: dict[NetnsHost, dict[str, str]] = defaultdict(dict)
        for node in self.cluster.k8s_nodes():
            for router, hop in self.cluster.underlay.fabric_routes(node).items():
                desired[router][node.spec.pod_cidr] = hop
        for router in self.cluster.underlay.routers():
            reconcile_routes(router, desired.get(router, {}))
