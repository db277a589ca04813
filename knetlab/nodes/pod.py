"""A pod: one network namespace held by one long-lived process (the pause container).

The Mininet host's shell plays pause: it holds the namespace, and every container of the
pod is a process started in it (``pod.cmd``), so they share lo and eth0 as in Kubernetes.
``eth0`` is made by the CNI runtime on the pod's node, not by Mininet.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from mininet.link import Intf

from knetlab.netns import link_up
from knetlab.nodes.host import NetnsHost

if TYPE_CHECKING:
    from knetlab.rundir import RunDir


def _no_move(*_args: Any, **_kw: Any) -> bool:
    return True  # CNI already put the interface in the pod's namespace


class Pod(NetnsHost):
    def __init__(self, name: str, rundir: RunDir, node: str, **params: Any) -> None:
        super().__init__(name, rundir, **params)
        self.node_name = node
        self.container_id = hashlib.sha1(f"{rundir.cluster}/{name}".encode()).hexdigest()
        self.ip = ""
        self.cni_result: dict[str, Any] = {}
        link_up(self.netns, "lo")

    def attached(self, result: dict[str, Any], ifname: str = "eth0") -> None:
        """Record the CNI result and show eth0 to Mininet (for ``pod ping other-pod``)."""
        self.cni_result = result
        address = result["ips"][0]["address"]
        self.ip = address.split("/")[0]
        mac = next((i.get("mac") for i in result.get("interfaces", [])
                    if i.get("name") == ifname and i.get("sandbox")), None)
        intf = Intf(ifname, node=self, moveIntfFn=_no_move)
        intf.ip, intf.prefixLen, intf.mac = self.ip, int(address.split("/")[1]), mac

    def IP(self, intf: Any = None) -> str:  # noqa: N802 - Mininet's name
        return self.ip
