"""What a kube-proxy renders: the Services and their endpoints as one node sees them.

``build_state`` turns the API objects (Services and EndpointSlices as the API serves them)
into ``ServicePort`` values, one per Service port, the unit kube-proxy names
``ServicePortName`` ("ns/service:port_name"). Every proxier mode renders the same
``ProxyState``, so the semantics (which endpoints a node uses for which traffic) live here
once and the modes differ only in how they write them into the kernel. Pure: no I/O, so the
benchmark can build a state of 20,000 Services without an API server.

Headless Services (clusterIP None) and ExternalName Services never appear: kube-proxy
renders no rules for them (cluster DNS serves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

#: sessionAffinityConfig.clientIP.timeoutSeconds when the Service names none (3 hours)
DEFAULT_AFFINITY_TIMEOUT = 10800
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int            # the target port resolved for this service port (named ports too)
    node: str | None     # EndpointSlice endpoint nodeName
    ready: bool
    serving: bool
    terminating: bool

    @property
    def address(self) -> str:
        """"ip:port", kube-proxy's endpoint string (hashed into KUBE-SEP names)."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    service: str         # Service name
    port_name: str       # "" when unnamed
    protocol: str        # "TCP" | "UDP" | "SCTP"
    cluster_ip: str      # "" for headless (headless/ExternalName never reach a proxier)
    port: int
    node_port: int       # 0 if none
    load_balancer_ips: tuple[str, ...]   # status.loadBalancer.ingress[].ip
    external_ips: tuple[str, ...]
    affinity_timeout: int                # 0 = no sessionAffinity; else ClientIP timeout s
    external_local: bool                 # externalTrafficPolicy: Local (NodePort/LB only)
    internal_local: bool                 # internalTrafficPolicy: Local
    endpoints: tuple[Endpoint, ...]      # every endpoint of this port, ready or not

    @property
    def key(self) -> str:
        """kube-proxy's ServicePortName: "ns/service:port_name" ("ns/service" when the port
        is unnamed, as kube-proxy prints it and hashes it into chain names)."""
        name = f"{self.namespace}/{self.service}"
        return f"{name}:{self.port_name}" if self.port_name else name

    @property
    def has_external(self) -> bool:
        """Reachable from outside the cluster: a NodePort, an external or LB address."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    def cluster_endpoints(self, node: str) -> tuple[Endpoint, ...]:
        """Endpoints for traffic to the ClusterIP seen from ``node``: the ready ones (with
        internalTrafficPolicy Local only those on ``node``); if none is ready, the
        serving+terminating ones (kube-proxy's terminating-endpoint fallback)."""
        pool = self.endpoints
        if self.internal_local:
            pool = tuple(e for e in pool if e.node == node)
        return usable(pool)

    def local_endpoints(self, node: str) -> tuple[Endpoint, ...]:
        """Usable endpoints on ``node`` (what externalTrafficPolicy Local sends to)."""
        return usable(tuple(e for e in self.endpoints if e.node == node))

    def external_endpoints(self, node: str) -> tuple[Endpoint, ...]:
        """Endpoints for traffic from outside (NodePort, external IPs, LB addresses)."""
        if self.external_local:
            return self.local_endpoints(node)
        return usable(self.endpoints)


def usable(pool: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The endpoints traffic may go to: the ready ones; if none, serving+terminating ones."""
    ready = tuple(e for e in pool if e.ready)
    if ready:
        return ready
    return tuple(e for e in pool if e.serving and e.terminating)


@dataclass
class ProxyState:
    node: str
    node_ips: tuple[str, ...]
    cluster_cidr: str                  # the lab's podCIDR (kube-proxy --cluster-cidr)
    services: dict[str, ServicePort]   # by key


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _proxied(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    ip = spec.get("clusterIP") or ""
    return spec.get("type", "ClusterIP") != "ExternalName" and ip not in ("", "None") \
        and ":" not in ip


def _slice_endpoints(slices: list[Obj], port_name: str,
                     protocol: str) -> tuple[Endpoint, ...]:
    """The endpoints of one Service port over all its slices, deduplicated by ip:port
    (a pod can briefly appear in two slices while the controller moves it)."""
    seen: dict[str, Endpoint] = {}
    for sl in slices:
        if sl.get("addressType", "IPv4") != "IPv4":
            continue
        port = next((p for p in sl.get("ports") or []
                     if (p.get("name") or "") == port_name
                     and (p.get("protocol") or "TCP") == protocol and p.get("port")), None)
        if port is None:
            continue
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # Unset conditions mean "ready/serving" and "not terminating" (the API's rule).
            ready = cond.get("ready") is not False
            serving = cond.get("serving", ready) is not False
            terminating = bool(cond.get("terminating"))
            for ip in ep.get("addresses") or []:
                e = Endpoint(ip=ip, port=int(port["port"]), node=ep.get("nodeName"),
                             ready=ready, serving=serving, terminating=terminating)
                seen.setdefault(e.address, e)
    return tuple(seen[k] for k in sorted(seen))


def service_ports(svc: Obj, slices: list[Obj]) -> list[ServicePort]:
    """One ServicePort per port of a proxied Service (none for headless/ExternalName)."""
    if not _proxied(svc):
        return []
    m, spec = _meta(svc), svc.get("spec") or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    svc_type = spec.get("type", "ClusterIP")
    external_local = (svc_type in ("NodePort", "LoadBalancer")
                      and spec.get("externalTrafficPolicy") == "Local")
    out = []
    for p in spec.get("ports") or []:
        name, proto = p.get("name") or "", p.get("protocol") or "TCP"
        out.append(ServicePort(
            namespace=m.get("namespace", "default"), service=m["name"], port_name=name,
            protocol=proto, cluster_ip=spec["clusterIP"], port=int(p["port"]),
            node_port=int(p.get("nodePort") or 0) if svc_type != "ClusterIP" else 0,
            load_balancer_ips=tuple(i["ip"] for i in ingress
                                    if i.get("ip") and ":" not in i["ip"])
            if svc_type == "LoadBalancer" else (),
            external_ips=tuple(i for i in spec.get("externalIPs") or [] if ":" not in i),
            affinity_timeout=affinity, external_local=external_local,
            internal_local=spec.get("internalTrafficPolicy") == "Local",
            endpoints=_slice_endpoints(slices, name, proto)))
    return out


def build_state(node: str, node_ips: tuple[str, ...], cluster_cidr: str,
                services: list[dict], slices: list[dict]) -> ProxyState:
    """The whole desired state of one node's proxy from the API's Services and slices."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for sl in slices:
        name = (_meta(sl).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if name:
            by_service.setdefault((_meta(sl).get("namespace", "default"), name),
                                  []).append(sl)
    out: dict[str, ServicePort] = {}
    for svc in services:
        m = _meta(svc)
        for sp in service_ports(svc, by_service.get(
                (m.get("namespace", "default"), m.get("name", "")), [])):
            out[sp.key] = sp
    return ProxyState(node=node, node_ips=tuple(node_ips), cluster_cidr=cluster_cidr,
                      services=out)


def changed_keys(old: ProxyState | None, new: ProxyState) -> set[str] | None:
    """Keys of ServicePorts that differ between two states (added, removed or changed);
    None when there is no previous state or the node-wide inputs changed (a full sync)."""
    if old is None or (old.node, old.node_ips, old.cluster_cidr) != (
            new.node, new.node_ips, new.cluster_cidr):
        return None
    keys = set(old.services) | set(new.services)
    return {k for k in keys if old.services.get(k) != new.services.get(k)}
