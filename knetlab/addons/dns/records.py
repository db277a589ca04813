"""The cluster's DNS records, computed from Services, EndpointSlices and Pods.

One pure function, ``build_records``, renders the whole record set of the cluster domain
from the API objects, as the Kubernetes DNS-Based Service Discovery specification (schema
1.0.1, kubernetes/dns ``docs/specification.md``) defines it:

- ``dns-version.<zone> TXT "1.0.1"`` (2.2), and the zone's SOA and NS (negative answers carry
  the SOA, so resolvers cache NXDOMAIN/NODATA for its minimum TTL);
- ClusterIP Service (2.3): ``<svc>.<ns>.svc.<zone> A <clusterIP>``; per *named* port
  ``_<port>._<proto>.<svc>.<ns>.svc.<zone> SRV 0 100 <port> <svc>.<ns>.svc.<zone>``; PTR of
  the cluster IP;
- headless Service (2.4): an A per *ready* endpoint on the Service name, an A per endpoint
  on ``<hostname>.<svc>.<ns>.svc.<zone>`` (the endpoint's ``hostname``, set for pods with
  ``hostname`` + ``subdomain`` such as a StatefulSet's ``web-0``, else the dashed address
  ``10-244-1-5``, the identifier CoreDNS uses), SRV per endpoint x named port pointing at
  those names, PTR of each endpoint address; no ready endpoint: no name at all (NXDOMAIN);
- ExternalName Service (2.5): ``<svc>.<ns>.svc.<zone> CNAME <externalName>.``;
- pods (2.6, deprecated but required): ``<a-b-c-d>.<ns>.pod.<zone> A a.b.c.d`` for the
  running pods of the namespace (CoreDNS's ``pods verified``: an address that is no pod of
  that namespace is NXDOMAIN, not echoed back).

An endpoint is *ready* when its ``conditions.ready`` is not false, or when the Service
publishes not-ready addresses (``publishNotReadyAddresses`` or the older annotation
``service.alpha.kubernetes.io/tolerate-unready-endpoints: "true"``).

NXDOMAIN versus NODATA is the server's: the zone is served ``static`` (see ``unbound.py``),
so a name with records answers NODATA for other types, an empty non-terminal such as
``default.svc.<zone>`` or ``svc.<zone>`` answers NODATA, and any other name NXDOMAIN.

Records are presentation-format lines (``name TTL IN TYPE rdata``) grouped by owner name;
``diff`` says which names to replace, so a sync sends only what changed.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
#: owner name (lowercase, trailing dot) -> its records (presentation format)
Records = dict[str, frozenset[str]]

SCHEMA_VERSION = "1.0.1"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"


@dataclass(frozen=True)
class ZoneConfig:
    domain: str = "cluster.local"     # the cluster domain (dnsDomain), no trailing dot
    ttl: int = 5                      # CoreDNS's default TTL for cluster records
    dns_ip: str = "10.96.0.10"        # kube-dns's address: the NS record's glue
    #: networks whose reverse zones the server owns (service and pod CIDRs)
    reverse_cidrs: tuple[str, ...] = ("10.96.0.0/12", "10.244.0.0/16")

    @property
    def origin(self) -> str:
        return self.domain.strip(".").lower() + "."


def reverse_zones(cidrs: Iterable[str]) -> list[str]:
    """The in-addr.arpa zones that cover ``cidrs``, each on an octet boundary
    (10.96.0.0/12 -> 96.10 ... 111.10.in-addr.arpa., 16 zones)."""
    zones: set[str] = set()
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version != 4:
            continue
        octets = max(1, -(-net.prefixlen // 8))  # round up to whole octets, at least one
        for sub in net.subnets(new_prefix=octets * 8) if net.prefixlen < octets * 8 else [net]:
            labels = str(sub.network_address).split(".")[:octets]
            zones.add(".".join(reversed(labels)) + ".in-addr.arpa.")
    return sorted(zones)


def ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def dashed(ip: str) -> str:
    """The DNS label of an address: 10.244.1.5 -> 10-244-1-5."""
    return ip.replace(".", "-").replace(":", "-")


class _Builder:
    def __init__(self, cfg: ZoneConfig) -> None:
        self.cfg = cfg
        self.out: dict[str, set[str]] = defaultdict(set)

    def add(self, name: str, rtype: str, rdata: str) -> None:
        name = name.lower()
        self.out[name].add(f"{name} {self.cfg.ttl} IN {rtype} {rdata}")

    def address(self, name: str, ip: str) -> None:
        self.add(name, "AAAA" if ":" in ip else "A", ip)


def _ipv4s(values: Iterable[str]) -> list[str]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v)))
        except ValueError:
            continue
    return out


def _ready(ep: Obj, publish_unready: bool) -> bool:
    return publish_unready or (ep.get("conditions") or {}).get("ready") is not False


def _publishes_unready(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    notes = svc["metadata"].get("annotations") or {}
    return bool(spec.get("publishNotReadyAddresses")) or \
        str(notes.get(TOLERATE_UNREADY, "")).lower() == "true"


def _cluster_ips(svc: Obj) -> list[str]:
    spec = svc.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return _ipv4s(ip for ip in ips if ip != "None")


def _srv_ports(ports: Iterable[Obj], number_key: str) -> list[tuple[str, str, int]]:
    """(name, proto, number) of every named port: unnamed ports have no SRV (2.3.2)."""
    out = set()
    for p in ports:
        if p.get("name") and p.get(number_key):
            out.add((p["name"].lower(), str(p.get("protocol", "TCP")).lower(),
                     int(p[number_key])))
    return sorted(out)


def _service(b: _Builder, svc: Obj, slices: list[Obj]) -> None:
    meta, spec = svc["metadata"], svc.get("spec") or {}
    base = f"{meta['name']}.{meta.get('namespace', 'default')}.svc.{b.cfg.origin}"
    if spec.get("type") == "ExternalName":
        target = str(spec.get("externalName") or "").strip().rstrip(".").lower()
        if target:
            b.add(base, "CNAME", target + ".")
        return
    ips = _cluster_ips(svc)
    if ips:  # ClusterIP (also NodePort and LoadBalancer): the virtual address
        for ip in ips:
            b.address(base, ip)
            b.add(ptr_name(ip), "PTR", base)
        for name, proto, port in _srv_ports(spec.get("ports") or [], "port"):
            b.add(f"_{name}._{proto}.{base}", "SRV", f"0 100 {port} {base}")
        return
    # Headless: the ready endpoints themselves.
    unready_ok = _publishes_unready(svc)
    for sl in slices:
        if sl.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        ports = _srv_ports(sl.get("ports") or [], "port")
        for ep in sl.get("endpoints") or []:
            if not _ready(ep, unready_ok):
                continue
            for ip in _ipv4s(ep.get("addresses") or []):
                host = f"{(ep.get('hostname') or dashed(ip)).lower()}.{base}"
                b.address(base, ip)
                b.address(host, ip)
                b.add(ptr_name(ip), "PTR", host)
                for name, proto, port in ports:
                    b.add(f"_{name}._{proto}.{base}", "SRV", f"0 100 {port} {host}")


def _pod(b: _Builder, pod: Obj) -> None:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return
    ns = pod["metadata"].get("namespace", "default")
    ips = [p.get("ip", "") for p in status.get("podIPs") or []] or [status.get("podIP", "")]
    for ip in _ipv4s(i for i in ips if i):
        b.address(f"{dashed(ip)}.{ns}.pod.{b.cfg.origin}", ip)


def zone_records(cfg: ZoneConfig) -> Records:
    """The records that exist whatever the API holds: SOA, NS, dns-version."""
    b = _Builder(cfg)
    origin = cfg.origin
    ns_name = f"ns.dns.{origin}"
    soa = f"{ns_name} hostmaster.{origin} 1 7200 1800 86400 {cfg.ttl}"
    b.add(origin, "SOA", soa)
    b.add(origin, "NS", ns_name)
    b.address(ns_name, cfg.dns_ip)
    b.add(f"dns-version.{origin}", "TXT", f'"{SCHEMA_VERSION}"')
    for zone in reverse_zones(cfg.reverse_cidrs):
        b.add(zone, "SOA", soa)
        b.add(zone, "NS", ns_name)
    return {k: frozenset(v) for k, v in b.out.items()}


def build_records(cfg: ZoneConfig, services: Iterable[Obj], slices: Iterable[Obj],
                  pods: Iterable[Obj]) -> Records:
    """Every record of the cluster domain and its reverse zones (see the module doc)."""
    by_service: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for sl in slices:
        meta = sl["metadata"]
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and not meta.get("deletionTimestamp"):
            by_service[(meta.get("namespace", "default"), owner)].append(sl)
    b = _Builder(cfg)
    for svc in services:
        meta = svc["metadata"]
        _service(b, svc, by_service.get((meta.get("namespace", "default"), meta["name"]), []))
    for pod in pods:
        _pod(b, pod)
    records = {k: frozenset(v) for k, v in b.out.items()}
    for name, rrs in zone_records(cfg).items():
        records[name] = records.get(name, frozenset()) | rrs
    return records


def diff(old: Records, new: Records) -> tuple[list[str], list[str]]:
    """(names to remove, records to add) turning ``old`` into ``new``. A name whose record
    set only grew just gets the new records; one that lost records is replaced whole
    (the server removes a name with all its records)."""
    remove: list[str] = []
    add: list[str] = []
    remove += [name for name in old if name not in new]
    for name, rrs in new.items():
        prev = old.get(name, frozenset())
        if rrs == prev:
            continue
        if prev <= rrs:
            add.extend(sorted(rrs - prev))
        else:
            remove.append(name)
            add.extend(sorted(rrs))
    return sorted(remove), add
