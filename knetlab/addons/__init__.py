"""Add-ons: the lab's cluster services that run on top of Kubernetes as API clients.

kube-proxy, cluster DNS, the ingress controller and the network-policy agent are add-ons.
Each watches the API (``knetlab.kube.client.Informer``) and writes kernel state on its node
(rules, routes, processes); none imports a data plane, and the data plane never imports one,
so every add-on works on every data plane. Adding one is adding one module with an ``Addon``
subclass decorated with ``@register`` and naming it in ``MODULES``; every registered add-on
runs in every lab that has Kubernetes.

Life cycle, driven by ``Cluster`` once the control plane is up::

    start(cluster)          once: cluster-wide objects (a Service, a ConfigMap) and daemons
    start_node(node)        per node, after its kubelet (a per-node agent: kube-proxy)
    stop_node(node)         a node leaves
    stop()                  the lab goes down (its daemons are stopped by pid)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode

_REGISTRY: dict[str, type[Addon]] = {}


MODULES: list[str] = []  # e.g. "knetlab.addons.kubeproxy"


class Addon:
    name: ClassVar[str]

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def start(self) -> None:
        pass

    def start_node(self, node: K8sNode) -> None:
        pass

    def stop_node(self, node: K8sNode) -> None:
        pass

    def stop(self) -> None:
        pass


def register(cls: type[Addon]) -> type[Addon]:
    _REGISTRY[cls.name] = cls
    return cls


def addons() -> dict[str, type[Addon]]:
    """Every add-on by name (their modules register on import)."""
    import importlib
    for module in MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
