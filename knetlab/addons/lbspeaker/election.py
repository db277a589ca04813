"""Which node announces a LoadBalancer address: MetalLB's layer-2 election, pure.

Every speaker computes the same answer from the same API objects, with no talk between
them: the candidates are the Ready nodes (without the label that excludes a node from
external load balancers); with ``externalTrafficPolicy: Local`` only those with a ready
endpoint of the Service; the winner is the candidate whose ``sha256(node + "#" + ip)`` is
smallest. So addresses spread over the nodes, and when a node goes only its addresses
move.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

Obj = dict[str, Any]
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SERVICE_LABEL = "kubernetes.io/service-name"


def node_ready(node: Obj) -> bool:
    if EXCLUDE_LABEL in (node.get("metadata", {}).get("labels") or {}):
        return False
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def local_nodes(service: Obj, slices: list[Obj]) -> set[str]:
    """Nodes with a ready endpoint of ``service`` (for externalTrafficPolicy Local)."""
    meta = service["metadata"]
    out: set[str] = set()
    for s in slices:
        sm = s.get("metadata") or {}
        if (sm.get("namespace") != meta.get("namespace")
                or (sm.get("labels") or {}).get(SERVICE_LABEL) != meta["name"]):
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) and ep.get("nodeName"):
                out.add(ep["nodeName"])
    return out


def winner(ip: str, candidates: set[str]) -> str | None:
    if not candidates:
        return None
    return min(candidates, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).hexdigest())


def announced_by(me: str, pool: ipaddress.IPv4Network, services: list[Obj], nodes: list[Obj],
                 slices: list[Obj]) -> set[str]:
    """The LoadBalancer addresses in ``pool`` that node ``me`` must announce."""
    ready = {n["metadata"]["name"] for n in nodes if node_ready(n)}
    out: set[str] = set()
    for svc in services:
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer":
            continue
        lb = (svc.get("status") or {}).get("loadBalancer") or {}
        ips = [i["ip"] for i in lb.get("ingress") or [] if i.get("ip")]
        candidates = ready
        if spec.get("externalTrafficPolicy") == "Local":
            candidates = ready & local_nodes(svc, slices)
        for ip in ips:
            try:
                if ipaddress.IPv4Address(ip) not in pool:
                    continue
            except ValueError:
                continue
            if winner(ip, candidates) == me:
                out.add(ip)
    return out
