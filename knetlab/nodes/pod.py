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


class ApiPod(NetnsHost):
    """A pod the API created (kubectl, a controller), shown to Mininet as a host.

    The kubelet owns the sandbox; this host is only a shell entered into the pod's network,
    UTS and mount namespaces (``nsenter`` before Mininet's ``mnexec``), so that the Mininet
    CLI can run ``web-0 ping web-1`` as it does for any host. The kubelet's teardown of the
    pod kills the shell with the pod's other processes.
    """

    def __init__(self, name: str, rundir: RunDir, node: str, sandbox_pid: int, ip: str,
                 **params: Any) -> None:
        self.sandbox_pid = sandbox_pid
        super().__init__(name, rundir, inNamespace=False, **params)
        self.node_name, self.ip = node, ip
        intf = Intf("eth0", node=self, moveIntfFn=_no_move)
        intf.ip, intf.prefixLen = ip, 32

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        enter = ["nsenter", f"--target={self.sandbox_pid}", "--net", "--uts", "--mount", "--"]
        return super()._popen(enter + list(cmd), **params)

    def IP(self, intf: Any = None) -> str:  # noqa: N802 - Mininet's name
        return self.ip
