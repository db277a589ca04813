"""The flannel processes knetlab starts in a node's namespace: the agent (flanneld) and,
for the UDP backend, the TUN/UDP forwarder. Both are ``Daemon``s: run dir, pid file, log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from knetlab import pyagent

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.store import Store


class FlannelAgent(pyagent.PyAgent):
    name = "flanneld"

    def __init__(self, node: K8sNode, store: Store) -> None:
        super().__init__(node.rundir, node.name, node.netns)
        self.node, self.store = node, store
        (self.dir / "subnet.env").unlink(missing_ok=True)

    def command(self) -> list[str]:
        n = self.node
        return [*pyagent.argv("knetlab.overlays.flannel.agent"), "--run-dir",
                str(self.dir), "--store", self.store.to_arg(), "--node", n.name,
                "--subnet", n.spec.pod_cidr, "--public-ip", n.spec.ip, "--iface", n.uplink]

    def is_ready(self) -> bool:
        return (self.dir / "applied.json").exists()

    def start(self, wait: bool = True) -> None:
        (self.dir / "applied.json").unlink(missing_ok=True)
        super().start(wait)


class UdpForwarder(pyagent.PyAgent):
    name = "flannel-udp"

    def __init__(self, node: K8sNode, store: Store, subnet_len: int) -> None:
        super().__init__(node.rundir, node.name, node.netns)
        self.node, self.store, self.subnet_len = node, store, subnet_len

    def command(self) -> list[str]:
        return [*pyagent.argv("knetlab.overlays.flannel.udpfwd"), "--run-dir",
                str(self.dir), "--store", self.store.to_arg(), "--subnet",
                self.node.spec.pod_cidr, "--subnet-len", str(self.subnet_len)]

    def is_ready(self) -> bool:
        return (self.dir / "ready").exists()

    def start(self, wait: bool = True) -> None:
        (self.dir / "ready").unlink(missing_ok=True)
        super().start(wait)
