"""Add-ons: the lab's cluster services that run on top of Kubernetes as API clients.

kube-proxy, cluster DNS, the ingress controller and the network-policy agent are add-ons.
Each watches the API (``knetlab.kube.client.Informer``) and writes kernel state on its node
(rules, routes, processes); none imports a data plane, and the data plane never imports one,
so every add-on works on every data plane. Adding one is adding one module with an ``Addon``
subclass decorated with ``@register`` and naming it in ``MODULES``; every registered add-on
runs in every lab that has Kubernetes.

An add-on with settings names its topology key in ``section`` (``kubeProxy``, ``dns``) and
parses it in ``validate`` (before anything is built, errors naming file, line and field);
the parsed dict is ``self.settings``. ``validate`` runs even when the key is absent (an empty
``Fields``), so defaults live in one place.

Life cycle, driven by ``Cluster`` once the control plane is up::

    start(cluster)          once: cluster-wide objects (a Service, a ConfigMap) and daemons
    start_node(node)        per node, after its kubelet (a per-node agent: kube-proxy)
    stop_node(node)         a node leaves
    stop()                  the lab goes down (its daemons are stopped by pid)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

_REGISTRY: dict[str, type[Addon]] = {}


MODULES: list[str] = [  # e.g. "knetlab.addons.kubeproxy"
    "knetlab.addons.lbspeaker",
    "knetlab.addons.kubeproxy",
    "knetlab.addons.ingress.addon",
    "knetlab.addons.dns",
    "knetlab.addons.netpolicy.addon",
]


class Addon:
    name: ClassVar[str]
    #: topology key holding this add-on's settings (None: it takes none)
    section: ClassVar[str | None] = None

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        if self.name not in cluster.spec.addon_settings:  # a spec not made by load_topology
            from knetlab.topologies.fields import Fields
            cluster.spec.addon_settings[self.name] = self.validate(
                cluster.spec, Fields(None, cluster.spec.file, ""))
        self.settings: dict[str, Any] = cluster.spec.addon_settings[self.name]

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        """Parse this add-on's section (empty when absent); return its settings."""
        settings.only([])
        return {}

    def start(self) -> None:
        pass

    def start_node(self, node: K8sNode) -> None:
        pass

    def stop_node(self, node: K8sNode) -> None:
        pass

    def stop(self) -> None:
        pass

    def daemons(self) -> list[dict[str, Any]]:
        """Its running daemons as ``knetlab status`` lists them (name, owner, pid)."""
        return []


def register(cls: type[Addon]) -> type[Addon]:
    _REGISTRY[cls.name] = cls
    return cls


def addons() -> dict[str, type[Addon]]:
    """Every add-on by name (their modules register on import)."""
    import importlib
    for module in MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
