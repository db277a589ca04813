"""A Kubernetes node: a Mininet host with forwarding on, a pod bridge and a kubelet.

The node's uplink (``<node>-eth0``) carries the node IP on the underlay. Pods are wired
through CNI (the topology's by the node's ``SandboxRuntime``, the API's by its kubelet
daemon); the cross-node data plane is the cluster's ``Backend``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knetlab.nodes.host import NetnsHost
from knetlab.nodes.sandbox_runtime import SandboxRuntime

if TYPE_CHECKING:
    from knetlab.rundir import RunDir
    from knetlab.topologies.schema import NodeSpec


class K8sNode(NetnsHost):
    def __init__(self, name: str, rundir: RunDir, spec: NodeSpec, **params: Any) -> None:
        super().__init__(name, rundir, **params)
        self.spec = spec
        self.dir = rundir.node_dir(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runtime: SandboxRuntime | None = None  # wires its topology pods (CNI)

    @property
    def node_ip(self) -> str:
        return self.spec.ip.split("/")[0]

    @property
    def uplink(self) -> str:
        return f"{self.name}-eth0"

    def prepare(self) -> None:
        """Kernel settings every node has, before any data plane touches it."""
        self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0"])
        self.cmd("ip link set lo up")

    def default_cni_config(self, mtu: int = 1500, name: str = "knetlab") -> dict[str, Any]:
        """bridge + host-local over the node's pod subnet: what kubenet/flannel hand to CNI."""
        return {
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "isDefaultGateway": True,
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.spec.pod_cidr, "gateway": self.spec.pod_gateway}]],
                    "dataDir": str(self.dir / "ipam"),
                },
            }],
        }
