"""flannel's network config (the ``/coreos.com/network/config`` JSON), read from the topology.

The ``flannel:`` YAML section uses flannel's own shape::

    flannel:
      Network: 10.244.0.0/16
      SubnetLen: 24
      Backend: {Type: vxlan, VNI: 1, Port: 8472, DirectRouting: false}

Every field is optional: the defaults follow the cluster (podCIDR, podSubnetLen) and the
data plane name (``flannel-vxlan`` -> vxlan, ``flannel-udp`` -> udp, ``host-gw``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

DEFAULT_PORTS = {"vxlan": 8472, "udp": 8285}
ENCAP_OVERHEAD = {"vxlan": 50, "udp": 28, "host-gw": 0}  # bytes of outer headers


def parse(spec: ClusterSpec, f: Fields, kind: str) -> dict[str, Any]:
    """Validate the section against the cluster; return flannel's config dict."""
    f.only(["Network", "SubnetLen", "Backend"])
    network = f.cidr("Network", str(spec.pod_cidr))
    if network != spec.pod_cidr:
        raise f.error("Network", f"{network} differs from podCIDR {spec.pod_cidr}",
                      f"set Network: {spec.pod_cidr} or change podCIDR")
    subnet_len = f.int("SubnetLen", spec.pod_subnet_len, lo=16, hi=28)
    if subnet_len != spec.pod_subnet_len:
        raise f.error("SubnetLen", f"/{subnet_len} differs from podSubnetLen "
                      f"/{spec.pod_subnet_len} (a node's lease is its pod CIDR)",
                      f"set SubnetLen: {spec.pod_subnet_len} or change podSubnetLen")
    b = f.sub("Backend")
    b.only(["Type", "VNI", "Port", "DirectRouting"])
    btype = b.str("Type", kind, choices=["vxlan", "udp", "host-gw"])
    if btype != kind:
        raise b.error("Type", f"Backend.Type {btype} does not match dataplane "
                      f"{spec.dataplane}", f"set Type: {kind} or change dataplane")
    backend: dict[str, Any] = {"Type": btype}
    if btype in DEFAULT_PORTS:
        backend["Port"] = b.int("Port", DEFAULT_PORTS[btype], lo=1, hi=65535)
    elif b.has("Port"):
        raise b.error("Port", "host-gw has no encapsulation port", "remove Port")
    if btype == "vxlan":
        backend["VNI"] = b.int("VNI", 1, lo=1, hi=16777215)
        backend["DirectRouting"] = b.bool("DirectRouting", False)
    else:
        for key in ("VNI", "DirectRouting"):
            if b.has(key):
                raise b.error(key, f"only applies to Backend.Type vxlan, not {btype}",
                              f"remove {key}")
    return {"Network": str(network), "SubnetLen": subnet_len, "Backend": backend}


def mtu(config: dict[str, Any], underlay_mtu: int = 1500) -> int:
    """The pod MTU flannel writes to subnet.env: underlay MTU minus encapsulation."""
    return underlay_mtu - ENCAP_OVERHEAD[config["Backend"]["Type"]]
