"""The one small interface every cross-node data plane implements, and the registry by name.

Adding a data plane is adding one module with a ``Backend`` subclass decorated with
``@register``; nothing else in knetlab branches on the data plane's name. Its commands, if
any, are declared in its ``commands.py`` (named in ``knetlab.cli.EXTENSIONS``), the one way
every command is declared: the shell's ``knetlab NAME`` and the Mininet CLI's ``NAME``.

Life cycle, driven by ``Cluster``::

    validate(spec, settings)      before anything is built (class method)
    setup()                       once, after the underlay exists, before nodes
    setup_node(node)              per node, after its uplink is configured
    cni_config(node)              the CNI network configuration list its kubelet uses
    sync()                        level-triggered: program the whole current membership
    remove_node(node)             a node leaves a running cluster
    teardown()                    the cluster goes down (node namespaces die anyway)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab.errors import ConfigError

if TYPE_CHECKING:
    from knetlab.cluster import Cluster
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

_REGISTRY: dict[str, type[Backend]] = {}


class Backend:
    name: ClassVar[str]
    #: topology key holding this data plane's own settings (None: it takes none)
    section: ClassVar[str | None] = None
    #: kernel features (see knetlab.kernel.FEATURES) checked before building
    kernel_features: ClassVar[tuple[str, ...]] = ()
    #: CNI plugins only knetlab ships that this plane's CNI config needs (refused with
    #: ``cni: reference``, whose plugin directory lacks them)
    cni_plugins: ClassVar[tuple[str, ...]] = ()
    #: False if the data plane needs every node on one L2 segment
    routed_underlay_ok: ClassVar[bool] = True
    #: True if a segment underlay needs a router (a VPC router) for this plane
    wants_segment_router: ClassVar[bool] = False

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.settings: dict[str, Any] = cluster.spec.dataplane_settings

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        """Check this plane fits the spec; return its parsed settings."""
        settings.only([])
        if not cls.routed_underlay_ok and spec.underlay.type != "segment":
            raise ConfigError(
                f"data plane {cls.name} needs every node on one L2 segment (next hops must be "
                f"directly reachable), but underlay.type is {spec.underlay.type}",
                file=spec.file, line=spec.lines.get("dataplane"), field="dataplane",
                fix="use underlay.type: segment, or an overlay/fabric data plane such as "
                    "vpc-routes")
        return {}

    def setup(self) -> None:
        pass

    def setup_node(self, node: K8sNode) -> None:
        pass

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        return node.default_cni_config()

    def sync(self) -> None:
        pass

    def remove_node(self, node: K8sNode) -> None:
        pass

    def teardown(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """Extra facts for ``knetlab status`` (daemons, leases, ...)."""
        return {}

    def describe_node(self, node: K8sNode) -> dict[str, Any]:
        """Extra facts of one node for ``knetlab status`` (a Calico node: its IPAM blocks,
        which replace the per-node pod CIDR)."""
        return {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


#: every data plane's module; each registers its Backend classes when imported
BACKEND_MODULES = [
    "knetlab.overlays.static_routes",
    "knetlab.overlays.flannel.backend",
    "knetlab.overlays.calico",
    "knetlab.overlays.ovs.backend",
    "knetlab.overlays.weave.backend",
    "knetlab.overlays.macvlan",
    "knetlab.overlays.rancher_ipsec",
]


def backends() -> dict[str, type[Backend]]:
    for module in BACKEND_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)
