"""The topology YAML: its schema, its validation, and the addresses it implies.

A ``ClusterSpec`` is the whole desired state of one lab. ``load_topology`` validates
everything before anything is built: unknown keys, types, overlapping CIDRs, sizes,
the data plane (known, supported by this kernel, fitting the underlay).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knetlab import kernel
from knetlab.errors import ConfigError, UnsupportedError
from knetlab.topologies.clients import parse_clients
from knetlab.topologies.fields import NODE_NAME_MAX, Fields
from knetlab.topologies.yamlsrc import load_yaml

TOP_KEYS = ["name", "podCIDR", "podSubnetLen", "serviceCIDR", "dnsDomain", "dataplane",
            "switch", "cni", "underlay", "nodes", "pods", "kubernetes", "clients",
            "loadBalancerCIDR"]
NODE_HOST_OFFSET = 10  # node k gets the (10+k)-th address of its subnet; .1 is the router


@dataclass
class Underlay:
    type: str  # "segment" | "leaf-spine"
    cidr: ipaddress.IPv4Network
    racks: int = 1
    spines: int = 0

    def rack_subnet(self, rack: int) -> ipaddress.IPv4Network:
        if self.type == "segment":
            return self.cidr
        return list(self.cidr.subnets(new_prefix=24))[rack]

    def gateway(self, rack: int) -> ipaddress.IPv4Address:
        """The router of a rack (the ToR), or of the segment (a VPC-style router)."""
        return self.rack_subnet(rack).network_address + 1


@dataclass
class NodeSpec:
    name: str
    index: int  # 1-based; derives the node's addresses
    rack: int = 1
    ip: str = ""
    pod_cidr: str = ""
    pod_gateway: str = ""


@dataclass
class PodSpec:
    name: str
    node: str


@dataclass
class ClusterSpec:
    name: str
    file: str
    pod_cidr: ipaddress.IPv4Network
    pod_subnet_len: int
    service_cidr: ipaddress.IPv4Network
    dns_domain: str
    dataplane: str
    switch: str
    cni: str
    underlay: Underlay
    #: run the lab's Kubernetes (etcd, API server, controllers, kubelets); off only for
    #: data-plane measurements that want nothing else on the machine
    kubernetes: bool = True
    nodes: list[NodeSpec] = field(default_factory=list)
    pods: list[PodSpec] = field(default_factory=list)
    dataplane_settings: dict[str, Any] = field(default_factory=dict)
    #: each add-on's parsed settings by add-on name (knetlab.addons)
    addon_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    #: hosts outside the cluster on the underlay (knetlab.topologies.clients)
    clients: list[Any] = field(default_factory=list)
    #: where LoadBalancer Services take their addresses (None: they stay pending)
    load_balancer_cidr: ipaddress.IPv4Network | None = None

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def max_nodes(self) -> int:
        return 2 ** (self.pod_subnet_len - self.pod_cidr.prefixlen) - 1

    def add_node(self, name: str, rack: int = 1) -> NodeSpec:
        """Give a new node the next free index and derive its addresses."""
        index = max((n.index for n in self.nodes), default=0) + 1
        node = NodeSpec(name=name, index=index, rack=rack)
        self.assign(node)
        self.nodes.append(node)
        return node

    def assign(self, node: NodeSpec) -> None:
        if node.index > self.max_nodes():
            raise ConfigError(f"node {node.name} would be number {node.index}, but podCIDR "
                              f"{self.pod_cidr} holds only {self.max_nodes()} /"
                              f"{self.pod_subnet_len} subnets", file=self.file,
                              field="podCIDR", fix="use a larger podCIDR or fewer nodes")
        subnet = self.underlay.rack_subnet(node.rack)
        host = subnet.network_address + NODE_HOST_OFFSET + node.index
        if host not in subnet or host == subnet.broadcast_address:
            raise ConfigError(f"node {node.name} needs address #{NODE_HOST_OFFSET + node.index} "
                              f"but {subnet} is too small", file=self.file, field="underlay.cidr",
                              fix="use a larger underlay.cidr")
        node.ip = f"{host}/{subnet.prefixlen}"
        pod_net = list(self.pod_cidr.subnets(new_prefix=self.pod_subnet_len))[node.index]
        node.pod_cidr = str(pod_net)
        node.pod_gateway = str(pod_net.network_address + 1)


def load_topology(path: str | Path) -> ClusterSpec:
    file = str(path)
    top = Fields(load_yaml(path), file, "")
    top.only(TOP_KEYS + _backend_sections() + _addon_sections())
    spec = ClusterSpec(
        name=top.name("name", Path(file).stem.replace("_", "-").lower()),
        file=file,
        pod_cidr=top.cidr("podCIDR", "10.244.0.0/16"),
        pod_subnet_len=top.int("podSubnetLen", 24, lo=16, hi=28),
        service_cidr=top.cidr("serviceCIDR", "10.96.0.0/12"),
        dns_domain=top.str("dnsDomain", "cluster.local"),
        dataplane=top.str("dataplane", "host-gw"),
        switch=top.str("switch", "linuxbridge", choices=["linuxbridge", "ovs"]),
        # Resolved by _dataplane when absent: it depends on the plugins the data plane needs.
        cni=top.str("cni", choices=["knetlab", "reference"]) if top.has("cni")
        else "auto",
        underlay=_underlay(top.sub("underlay")),
        kubernetes=top.bool("kubernetes", True),
        lines=dict(getattr(top.data, "lines", {})),
        load_balancer_cidr=top.cidr("loadBalancerCIDR", "") if top.has("loadBalancerCIDR")
        else None,
    )
    if spec.pod_subnet_len <= spec.pod_cidr.prefixlen:
        raise top.error("podSubnetLen", f"/{spec.pod_subnet_len} is not smaller than podCIDR "
                        f"{spec.pod_cidr}", "use a podSubnetLen larger than the podCIDR prefix")
    _check_overlaps(spec, top)
    _nodes(spec, top)
    _pods(spec, top)
    parse_clients(spec, top)
    _dataplane(spec, top)
    _addons(spec, top)
    return spec


def _backend_sections() -> list[str]:
    from knetlab.dataplane import backends
    return sorted({b.section for b in backends().values() if b.section})


def _addon_sections() -> list[str]:
    from knetlab.addons import addons
    return sorted({a.section for a in addons().values() if a.section})


def _addons(spec: ClusterSpec, top: Fields) -> None:
    from knetlab.addons import addons
    for name, cls in addons().items():
        section = top.sub(cls.section) if cls.section else Fields(None, spec.file, "")
        spec.addon_settings[name] = cls.validate(spec, section)


def _underlay(f: Fields) -> Underlay:
    f.only(["type", "cidr", "racks", "spines"])
    kind = f.str("type", "segment", choices=["segment", "leaf-spine"])
    if kind == "segment":
        for key in ("racks", "spines"):
            if f.has(key):
                raise f.error(key, "only applies to underlay.type leaf-spine",
                              f"remove {key} or set type: leaf-spine")
        return Underlay("segment", f.cidr("cidr", "192.168.0.0/24"))
    underlay = Underlay("leaf-spine", f.cidr("cidr", "192.168.0.0/16"),
                        racks=f.int("racks", 2, lo=1, hi=64), spines=f.int("spines", 2, lo=1, hi=8))
    if underlay.cidr.prefixlen > 24 - underlay.racks.bit_length():
        raise f.error("cidr", f"{underlay.cidr} cannot hold {underlay.racks} rack /24 subnets "
                      "plus the fabric links", "use a /16 such as 192.168.0.0/16")
    return underlay


def _check_overlaps(spec: ClusterSpec, top: Fields) -> None:
    nets = [("podCIDR", spec.pod_cidr), ("serviceCIDR", spec.service_cidr),
            ("underlay.cidr", spec.underlay.cidr)]
    if spec.load_balancer_cidr is not None:
        nets.append(("loadBalancerCIDR", spec.load_balancer_cidr))
    for i, (name_a, a) in enumerate(nets):
        for name_b, b in nets[i + 1:]:
            if a.overlaps(b):
                key = name_b.split(".")[0]
                raise ConfigError(f"{b} overlaps {name_a} {a}", file=spec.file,
                                  line=top.where(key), field=name_b,
                                  fix=f"choose a {name_b} that does not overlap {a}")


def _nodes(spec: ClusterSpec, top: Fields) -> None:
    raw = top.raw("nodes")
    racks = spec.underlay.racks
    if isinstance(raw, list):
        seen: set[str] = set()
        for i, item in enumerate(raw):
            f = Fields(item, spec.file, f"nodes[{i}]", top.where("nodes") or 0)
            f.only(["name", "rack"])
            name = f.name("name", max_len=NODE_NAME_MAX, host=True)
            if name in seen:
                raise f.error("name", f"node {name!r} is listed twice",
                              "give each node its own name")
            seen.add(name)
            spec.nodes.append(NodeSpec(name, i + 1, f.int("rack", 1, lo=1, hi=racks)))
    else:
        f = top.sub("nodes")
        f.only(["count", "perRack"])
        if spec.underlay.type == "leaf-spine":
            per = f.int("perRack", 2, lo=1, hi=200)
            spec.nodes = [NodeSpec(f"node-{r * per + k + 1}", r * per + k + 1, r + 1)
                          for r in range(racks) for k in range(per)]
        else:
            if f.has("perRack"):
                raise f.error("perRack", "only applies to underlay.type leaf-spine",
                              "use nodes.count on a segment")
            count = f.int("count", 3, lo=1, hi=1000)
            spec.nodes = [NodeSpec(f"node-{k}", k) for k in range(1, count + 1)]
    if not spec.nodes:
        raise top.error("nodes", "a cluster needs at least one node", "add a node")
    if len(spec.nodes) > spec.max_nodes():
        raise top.error("nodes", f"{len(spec.nodes)} nodes do not fit: podCIDR {spec.pod_cidr} "
                        f"holds {spec.max_nodes()} /{spec.pod_subnet_len} node subnets",
                        "use a larger podCIDR, a larger podSubnetLen, or fewer nodes")
    for node in spec.nodes:
        spec.assign(node)


def _pods(spec: ClusterSpec, top: Fields) -> None:
    raw = top.raw("pods")
    names = {n.name for n in spec.nodes}
    if isinstance(raw, list):
        seen: set[str] = set()
        for i, item in enumerate(raw):
            f = Fields(item, spec.file, f"pods[{i}]", top.where("pods") or 0)
            f.only(["name", "node"])
            name, node = f.name("name", host=True), f.str("node")
            if node not in names:
                raise f.error("node", f"no node named {node!r}",
                              f"use one of {', '.join(sorted(names))}")
            if name in seen or name in names:
                raise f.error("name", f"name {name!r} is already used",
                              "give each pod its own name")
            seen.add(name)
            spec.pods.append(PodSpec(name, node))
        return
    f = top.sub("pods")
    f.only(["perNode"])
    per = f.int("perNode", 2, lo=0, hi=250)
    size = 2 ** (32 - spec.pod_subnet_len) - 3
    if per > size:
        raise f.error("perNode", f"{per} pods do not fit a /{spec.pod_subnet_len}",
                      f"use at most {size}")
    spec.pods = [PodSpec(f"pod-{n.index}-{k}", n.name) for n in spec.nodes for k in range(per)]


def _dataplane(spec: ClusterSpec, top: Fields) -> None:
    from knetlab.dataplane import backends
    known = backends()
    if spec.dataplane not in known:
        raise top.error("dataplane", f"unknown data plane {spec.dataplane!r}",
                        f"use one of {', '.join(sorted(known))}")
    backend = known[spec.dataplane]
    for other in {b.section for b in known.values() if b.section} - {backend.section}:
        if top.has(other):
            raise top.error(other, f"settings for another data plane (dataplane is "
                            f"{spec.dataplane})", f"remove {other} or change dataplane")
    section = top.sub(backend.section) if backend.section else Fields(None, spec.file, "")
    spec.dataplane_settings = backend.validate(spec, section)
    if spec.cni == "auto":
        spec.cni = _default_cni(backend.cni_plugins)
    _cni_plugins(spec, top, backend.cni_plugins)
    # After the file's own errors: those are worth fixing whatever the machine.
    for feature in backend.kernel_features:
        try:
            kernel.require(feature, f"data plane {spec.dataplane}")
        except UnsupportedError as exc:
            raise top.error("dataplane", str(exc), "pick a data plane this kernel supports"
                            ) from None


def _default_cni(plugins: tuple[str, ...]) -> str:
    """The reference plugins (bridge, host-local: what flannel's CNI plugin delegates to) for
    every data plane that needs no knetlab-only plugin, when they are installed: they are the
    real ones and wire a pod in a third of the CPU time of knetlab's Python pair."""
    from knetlab.nodes.sandbox_runtime import CNI_PATHS
    if plugins:
        return "knetlab"
    dirs = CNI_PATHS["reference"]
    have = all(any((Path(d) / p).is_file() for d in dirs) for p in ("bridge", "host-local"))
    return "reference" if have else "knetlab"


def _cni_plugins(spec: ClusterSpec, top: Fields, plugins: tuple[str, ...]) -> None:
    """The data plane's CNI plugins must be in the plugin set ``cni`` chooses: knetlab's
    calico or ovs plugin is not among the reference plugins, and would fail at the first pod
    instead of here."""
    from knetlab.nodes.sandbox_runtime import CNI_PATHS
    dirs = CNI_PATHS[spec.cni]
    missing = [p for p in plugins if not any((Path(d) / p).is_file() for d in dirs)]
    if missing:
        raise top.error("cni", f"data plane {spec.dataplane} needs the CNI plugin(s) "
                        f"{', '.join(missing)}, which cni: {spec.cni} does not have (looked in "
                        f"{', '.join(dirs)})", "remove `cni: reference` (use knetlab's plugins)"
                        if spec.cni == "reference" else "install the plugins")
