"""The LoadBalancer address allocator (what a cloud's service controller, ServiceLB or
MetalLB's controller does on bare metal): every ``type: LoadBalancer`` Service gets an
address from the lab's ``loadBalancerCIDR`` in ``status.loadBalancer.ingress``.

- ``spec.loadBalancerIP`` is honoured when it is in the pool and free; otherwise the Service
  stays pending with a Warning event saying why (MetalLB's ``AllocationFailed``).
- The address is released when the Service is deleted or stops being a LoadBalancer (its
  status is cleared), and is then free for the next Service.
- A Service with a ``spec.loadBalancerClass`` belongs to another implementation: left alone.
- Without a pool (no ``loadBalancerCIDR`` in the topology) Services stay ``<pending>``, as on
  a bare-metal cluster without a load-balancer implementation.

Allocation is level-triggered: who holds which address is read from the Services' status in
the cache, plus the writes of this controller the watch has not delivered yet (``_mine``),
so two Services synced back to back never get the same address. Reaching the address is the
announcers' job (knetlab.addons.lbspeaker on a segment, BGP on calico-bgp), and kube-proxy's
rules (``load_balancer_ips``) send its traffic to the endpoints.
"""

from __future__ import annotations

import ipaddress
import threading

from knetlab.kube.client import key_of, split_key
from knetlab.kube.controllers.base import Controller, ignore_missing
from knetlab.kube.controllers.util import Obj, meta

OPTION = "load_balancer_cidr"  # Context.options key: the pool, a CIDR ("" for none)


def ingress_ips(svc: Obj) -> list[str]:
    lb = (svc.get("status") or {}).get("loadBalancer") or {}
    return [i["ip"] for i in lb.get("ingress") or [] if i.get("ip")]


class LoadBalancerController(Controller):
    name = "service-lb"

    def setup(self) -> None:
        cidr = getattr(self.ctx, "options", {}).get(OPTION) or ""
        self.pool = ipaddress.IPv4Network(cidr) if cidr else None
        self._mine: dict[str, str] = {}  # service key -> address we wrote, not yet seen
        self._lock = threading.Lock()
        self.on("services", self._changed)

    def _changed(self, event: str, obj: Obj, old: Obj | None) -> None:
        if event == "DELETED":
            with self._lock:
                self._mine.pop(key_of(obj), None)  # its address is free again
        else:
            self.enqueue(obj)
        if event == "DELETED" or (old and ingress_ips(old) and not ingress_ips(obj)):
            # An address was freed: the Services waiting for one try again (one waiting
            # for exactly that loadBalancerIP gets it now).
            for svc in self.informer("services").items():
                if ((svc.get("spec") or {}).get("type") == "LoadBalancer"
                        and not ingress_ips(svc)):
                    self.enqueue(svc)

    def _in_pool(self, ip: str) -> bool:
        try:
            return self.pool is not None and ipaddress.IPv4Address(ip) in self.pool
        except ValueError:
            return False

    def _holders(self, skip: str) -> dict[str, str]:
        """address -> Service key holding it, from the cache and our unseen writes."""
        held: dict[str, str] = {}
        for svc in self.informer("services").items():
            k = key_of(svc)
            if k != skip and (svc.get("spec") or {}).get("type") == "LoadBalancer":
                held.update({ip: k for ip in ingress_ips(svc) if self._in_pool(ip)})
        with self._lock:
            held.update({ip: k for k, ip in self._mine.items() if k != skip})
        return held

    def _free(self, held: dict[str, str]) -> str | None:
        assert self.pool is not None
        hosts = self.pool.hosts() if self.pool.prefixlen < 31 else iter(self.pool)
        return next((str(ip) for ip in hosts if str(ip) not in held), None)

    def sync(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.informer("services").get(name, ns)
        if svc is None or self.pool is None:
            return
        spec = svc.get("spec") or {}
        current = [ip for ip in ingress_ips(svc) if self._in_pool(ip)]
        if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass"):
            if current:  # no longer ours: release
                self._write(svc, None)
            return
        held = self._holders(key)
        want = spec.get("loadBalancerIP") or ""
        if want:
            if not self._in_pool(want):
                return self._refuse(svc, current, f"requested IP {want} is not in the "
                                    f"load-balancer pool {self.pool} (loadBalancerCIDR)")
            if want in held:
                return self._refuse(svc, current, f"requested IP {want} is already "
                                    f"allocated to {held[want]}")
            ip: str | None = want
        elif current and current[0] not in held:
            ip = current[0]
        else:
            ip = self._free(held)
            if ip is None:
                return self._refuse(svc, current, f"no available IPs in pool {self.pool}")
        if current != [ip]:
            self._write(svc, ip)
            self.event(svc, "Service", "IPAllocated", f'Assigned IP ["{ip}"]')

    def _refuse(self, svc: Obj, current: list[str], why: str) -> None:
        if current:
            self._write(svc, None)
        self.event(svc, "Service", "AllocationFailed", f"Failed to allocate IP for "
                   f"\"{key_of(svc)}\": {why}", etype="Warning")

    def _write(self, svc: Obj, ip: str | None) -> None:
        m, k = meta(svc), key_of(svc)
        ingress = [{"ip": ip, "ipMode": "VIP"}] if ip else None
        ignore_missing(lambda: self.client.patch(
            "services", m["name"], {"status": {"loadBalancer": {"ingress": ingress}}},
            m.get("namespace"), subresource="status"))
        with self._lock:
            if ip:
                self._mine[k] = ip
            else:
                self._mine.pop(k, None)
