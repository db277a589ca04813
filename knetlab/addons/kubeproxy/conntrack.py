"""Stale UDP conntrack entries: what kube-proxy deletes after a sync, in every mode.

UDP has no connection to end: a client that keeps sending from one port keeps hitting the
conntrack entry that DNATed its first datagram, even after that endpoint is gone (or, for a
Service that had no endpoints, the entry made while its packets were rejected). So after a
successful sync, for each UDP ServicePort, the entries towards endpoints that left are
deleted (``conntrack -D --orig-dst SERVICE_IP --dst-nat ENDPOINT_IP``, and by NodePort), and
when a Service gains its first endpoint every entry to its addresses goes.
"""

from __future__ import annotations

from knetlab import shell
from knetlab.addons.kubeproxy.model import ProxyState, ServicePort, usable


def _addresses(sp: ServicePort) -> list[str]:
    return [sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips]


def stale_udp_deletions(old: ProxyState | None, new: ProxyState) -> list[list[str]]:
    """``conntrack -D`` argument lists for the UDP flows ``new`` no longer serves."""
    if old is None:
        return []
    out: list[list[str]] = []
    for key, before in old.services.items():
        if before.protocol != "UDP":
            continue
        after = new.services.get(key)
        had = {e.ip for e in usable(before.endpoints)}
        has = {e.ip for e in usable(after.endpoints)} if after else set()
        for ip in sorted(had - has):
            for addr in _addresses(before):
                out.append(["-p", "udp", "--orig-dst", addr, "--dst-nat", ip])
            if before.node_port:
                out.append(["-p", "udp", "--orig-port-dst", str(before.node_port),
                            "--dst-nat", ip])
    for key, after in new.services.items():
        before = old.services.get(key)
        if after.protocol != "UDP" or not usable(after.endpoints):
            continue
        if before is None or not usable(before.endpoints):
            for addr in _addresses(after):
                out.append(["-p", "udp", "--orig-dst", addr, "--orig-port-dst",
                            str(after.port)])
            if after.node_port:
                out.append(["-p", "udp", "--orig-port-dst", str(after.node_port)])
    return out


def delete_stale_udp(old: ProxyState | None, new: ProxyState) -> int:
    """Delete them (in the calling thread's namespace); how many commands ran."""
    deletions = stale_udp_deletions(old, new)
    for args in deletions:
        # exit 1 = nothing matched: the common case, not an error
        shell.run(["conntrack", "-D", *args], check=False, timeout=10)
    return len(deletions)
