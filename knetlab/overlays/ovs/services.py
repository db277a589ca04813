"""Service traffic on the OVS planes: through the node's netfilter, as Antrea does with
kube-proxy (before AntreaProxy).

Pods hang off ``br-int``, not off a kernel bridge, so a pod's packets meet the node's
kernel only where a flow sends them to ``gw0``. For Service traffic that already holds:
L3Forwarding sends every destination that is not a pod subnet (the service CIDR, node
ports, LoadBalancer addresses) to ``gw0`` (pipeline.gateway_flows), and there kube-proxy's
DNAT applies in the node's PREROUTING. The reply is the problem: the endpoint answers the
client pod's own address, and br-int delivers that straight to the pod (L3Forwarding, local
pod), past the node's conntrack, so the reply is never un-DNATed and the client drops it
(a reply from the endpoint's address, not the ClusterIP).

So, as Antrea's agent does for gw0, the node masquerades Service connections of its pods
leaving through gw0: ``ct status dnat`` (kube-proxy rewrote the destination) with a pod
source. The endpoint then answers the gateway address, which br-int sends to gw0 (its own
flow), the node's conntrack reverses both translations and the reply reaches the pod. The
price, also Antrea's then: endpoints see the client node's gateway address, not the client
pod's. Traffic from outside the pod network (a NodePort client) is left as kube-proxy
decides (no SNAT with externalTrafficPolicy Local): its replies are not to a local pod,
so they leave through gw0 by the catch-all flow anyway.

One nft table of its own in each node's namespace, replaced whole on every apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knetlab.overlays.ovs.pipeline import GW_IFACE

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode

SNAT_TABLE = "knetlab_ovs_svc"


def service_snat_rules(pod_cidr: str) -> str:
    """nft script: masquerade DNATed connections of pods (``pod_cidr``) out of gw0."""
    return (f"table ip {SNAT_TABLE} {{}}\n"
            f"delete table ip {SNAT_TABLE}\n"
            f"table ip {SNAT_TABLE} {{\n"
            f"  chain postrouting {{\n"
            # 100 = srcnat (nft 1.0.6 wants the number in some hook/family pairs)
            f"    type nat hook postrouting priority 100; policy accept;\n"
            f"    oifname \"{GW_IFACE}\" ip saddr {pod_cidr} ct status dnat counter masquerade"
            f" comment \"pod to Service: replies come back through the node\"\n"
            f"  }}\n"
            f"}}\n")


def apply_service_snat(node: K8sNode, pod_cidr: str) -> None:
    node.run(["nft", "-f", "-"], input=service_snat_rules(pod_cidr),
             context=f"nft Service SNAT on {GW_IFACE} in {node.name}")
