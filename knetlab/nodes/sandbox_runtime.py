"""The sandbox runtime of a node's topology pods: sets up and tears down their networking
through CNI, as a container runtime does for the kubelet (CRI's RunPodSandbox /
StopPodSandbox). The node's real kubelet (knetlab/kube/kubelet.py) runs the API's pods with
its own CNI runtime; these are the static pods of the topology file."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from knetlab.cni.runtime import KNETLAB_PLUGINS, REFERENCE_PLUGINS, CNIRuntime

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.nodes.pod import Pod

log = logging.getLogger("knetlab.sandbox_runtime")
CNI_PATHS = {"knetlab": [KNETLAB_PLUGINS], "reference": [REFERENCE_PLUGINS]}


class SandboxRuntime:
    def __init__(self, node: K8sNode, conf_list: dict[str, Any], plugins: str) -> None:
        self.node = node
        conf_dir = node.dir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        # Written where a kubelet would read it, so a learner can cat it.
        (conf_dir / "10-knetlab.conflist").write_text(json.dumps(conf_list, indent=2))
        self.cni = CNIRuntime(conf_list, CNI_PATHS[plugins], node.dir / "cni",
                                  plugin_netns=node.netns)

    def _args(self, pod: Pod) -> dict[str, str]:
        # IgnoreUnknown first, as kubelet sends it: plugins that do not know the K8S_ keys
        # (the reference ones) must not fail on them.
        return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod.name,
                "K8S_POD_INFRA_CONTAINER_ID": pod.container_id}

    def run_pod_sandbox(self, pod: Pod) -> dict[str, Any]:
        result = self.cni.add(pod.container_id, pod.netns, "eth0", self._args(pod))
        pod.attached(result)
        log.debug("pod %s on %s: %s", pod.name, self.node.name, pod.ip)
        return result

    def stop_pod_sandbox(self, pod: Pod) -> None:
        self.cni.delete(pod.container_id, pod.netns, "eth0", self._args(pod))

    def check_pod(self, pod: Pod) -> None:
        self.cni.check(pod.container_id, pod.netns, "eth0", self._args(pod))
