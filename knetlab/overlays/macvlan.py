"""The ``macvlan`` data plane: every pod's eth0 is a macvlan (bridge mode) of its node's
uplink, with an address of the underlay itself; no overlay, no routes to program.

Addresses: the underlay segment is cut into slices of ``macvlan.sliceLen`` (default /24).
Slice 0 holds the nodes (and routers); node k owns slice k, from which host-local hands
out its pods' addresses (``192.168.0.0/16`` -> node-1 pods in 192.168.1.0/24, node-2's
in 192.168.2.0/24, ...). The pods' subnet is the whole segment, so pods reach every
other pod and every other node directly on the wire.

What macvlan cannot do by itself: a macvlan's parent (the node's uplink) never receives
its children's frames, nor they its frames (bridge mode switches only between the
children and the wire). So a node cannot reach its own pods, nor they it (and nothing on
the node, such as Services' rules, sees their traffic). The fix users apply, applied here:
a *shim*, one more macvlan child on the node (``macvlan-shim``) that owns the slice's
first address; the node routes its slice through the shim (source: the node IP) and
the pods route the node's IP and their default route through the shim. ``knetlab check``
prints this note; delete the shim and the node->own-pod probes fail. For the same reason
pod-to-pod traffic bypasses anything in the node's namespace: the policy agent sees the
shim (a macvlan on the node) and enforces NetworkPolicy in the pods' own namespaces.
Services work via the shim (a ClusterIP goes to the default gateway, the shim); kube-proxy
masquerades that traffic (the pods are outside its cluster CIDR), which it must here: the
endpoint's reply would otherwise go straight back to the client pod on the wire.

The pods are wired by the reference CNI ``macvlan`` and ``host-local`` plugins.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab.dataplane import Backend, register
from knetlab.errors import ConfigError, KnetlabError
from knetlab.topologies.schema import NODE_HOST_OFFSET

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

SHIM = "macvlan-shim"
NOTE = ("macvlan: a node cannot reach its own pods over macvlan (the parent interface "
        "never sees its macvlan children's frames, nor they its frames); every node has a "
        f"shim macvlan '{SHIM}' holding its slice's first address, which carries "
        "node<->own-pod traffic (without it the node->own-pod probes above fail; pods on "
        "other nodes are reached on the wire)")

POLICY_NOTE = ("macvlan: pod-to-pod traffic never enters a node's namespace (it is switched "
               "by the uplink's macvlan bridge and the wire), so the policy agent enforces "
               "NetworkPolicy in the pods' own namespaces; Services work through the shim, "
               "masqueraded to the client's node (an endpoint's ingress policy sees that "
               "node, not the client pod)")


def node_slice(cidr: ipaddress.IPv4Network, slice_len: int, index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((int(cidr.network_address) + (index << (32 - slice_len)),
                                  slice_len))


def shim_mac(node_ip: str) -> str:
    """Locally administered, derived from the node IP."""
    return "0e:4d:" + ":".join(f"{int(o):02x}" for o in node_ip.split("."))


@register
class MacvlanBackend(Backend):
    name = "macvlan"
    section: ClassVar[str | None] = "macvlan"
    kernel_features: ClassVar[tuple[str, ...]] = ("macvlan",)
    routed_underlay_ok: ClassVar[bool] = False  # pods live on the segment itself

    @classmethod
    def validate(cls, spec: ClusterSpec, f: Fields) -> dict[str, Any]:
        f.only(["sliceLen"])
        if spec.underlay.type != "segment":
            raise _config_error(spec, "dataplane", "macvlan pods live on their node's L2 "
                                f"segment, but underlay.type is {spec.underlay.type}",
                                "use underlay.type: segment")
        cidr = spec.underlay.cidr
        slice_len = f.int("sliceLen", 24, lo=9, hi=29)
        slices = 1 << max(0, slice_len - cidr.prefixlen)
        if slices - 1 < len(spec.nodes):
            raise f.error("sliceLen", f"underlay.cidr {cidr} holds {slices} /{slice_len} "
                          f"slices: one for the nodes plus one per node needs "
                          f"{len(spec.nodes) + 1}",
                          "use a larger underlay.cidr such as 192.168.0.0/16 (node k's pods "
                          "in 192.168.k.0/24), or a longer sliceLen")
        last = NODE_HOST_OFFSET + max(n.index for n in spec.nodes)
        if last >= (1 << (32 - slice_len)) - 1:
            raise f.error("sliceLen", f"node addresses (up to #{last}) do not fit slice 0 "
                          f"(a /{slice_len})", "use a shorter sliceLen")
        if spec.cni == "knetlab":
            raise _config_error(spec, "cni", "macvlan pods are wired by the reference CNI "
                                "macvlan plugin, which cni: knetlab does not have",
                                "remove `cni: knetlab`")
        return {"sliceLen": slice_len}

    def slice(self, node: K8sNode) -> ipaddress.IPv4Network:
        spec = self.cluster.spec
        slice_len = self.settings["sliceLen"]
        if node.spec.index >= 1 << (slice_len - spec.underlay.cidr.prefixlen):
            raise KnetlabError(f"node {node.name} would own slice #{node.spec.index} of "
                               f"{spec.underlay.cidr}, which has no /{slice_len} slice left "
                               "for it (use a larger underlay.cidr)")
        return node_slice(spec.underlay.cidr, slice_len, node.spec.index)

    def setup_node(self, node: K8sNode) -> None:
        net = self.slice(node)
        shim_ip = net.network_address + 1
        node.run(["ip", "link", "del", SHIM], check=False)
        node.run(["ip", "-batch", "-"], input="\n".join([
            # A stable MAC: a re-made shim must not leave pods' ARP caches pointing at a
            # MAC that is gone.
            f"link add {SHIM} link {node.uplink} address {shim_mac(node.node_ip)} "
            "type macvlan mode bridge",
            f"addr add {shim_ip}/32 dev {SHIM}",
            f"link set {SHIM} up",
            f"route replace {net} dev {SHIM} src {node.node_ip}"]) + "\n")

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        net = self.slice(node)
        first = net.network_address
        return {"cniVersion": "1.0.0", "name": "macvlan", "plugins": [{
            "type": "macvlan", "master": node.uplink, "mode": "bridge", "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.cluster.spec.underlay.cidr),
                             "rangeStart": str(first + 2),
                             "rangeEnd": str(net.broadcast_address - 1),
                             "gateway": str(first + 1)}]],
                # Via the shim: the pod's own node, and whatever leaves the segment.
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": f"{node.node_ip}/32"}],
                "dataDir": str(Path(node.dir) / "ipam")}}]}

    def describe(self) -> dict[str, Any]:
        return {"summary": [f"macvlan: pods on the underlay {self.cluster.spec.underlay.cidr},"
                            f" /{self.settings['sliceLen']} slice per node; shim "
                            f"'{SHIM}' per node for node<->own pod", POLICY_NOTE],
                "check_notes": [NOTE, POLICY_NOTE]}

    def describe_node(self, node: K8sNode) -> dict[str, Any]:
        return {"blocks": [str(self.slice(node))]}


def _config_error(spec: ClusterSpec, field: str, message: str, fix: str) -> ConfigError:
    return ConfigError(message, file=spec.file, line=spec.lines.get(field), field=field, fix=fix)
