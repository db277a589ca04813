"""Cluster DNS: the ``coredns`` Deployment behind the ``kube-dns`` Service in kube-system.

The add-on only writes API objects, as kubeadm does: the Service ``kube-dns`` with the
tenth address of serviceCIDR (``ControlPlane.cluster_dns``, what every kubelet writes into
pods' resolv.conf), the ServiceAccount ``coredns`` and the Deployment ``coredns`` whose pods
the scheduler places and the kubelets run like any other. The pods are in-cluster API
clients, as CoreDNS is: they read the service-account token the kubelet mounts and reach the
API through the ``kubernetes`` Service (kube-proxy's rules on their node). Its image,
``registry.k8s.io/coredns/coredns``, maps to knetlab's DNS program (``server.py``): unbound
serving the records that ``records.py`` derives from Services, EndpointSlices and Pods (see
docs/dns.md for why unbound).

Topology section (all optional)::

    dns:
      upstream: [10.244.1.7]   # forward names outside the cluster domain there (inside the
                               # lab only); without it they are answered REFUSED
      replicas: 1
      ttl: 5
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from knetlab.addons import Addon, register
from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.kube.client import KubeClient
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.addons.dns")
NAMESPACE = "kube-system"
SERVICE = "kube-dns"
DEPLOYMENT = "coredns"
SERVICE_ACCOUNT = "coredns"
LABELS = {"k8s-app": "kube-dns"}
IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"
READY_PORT = 8181


def lab_networks(spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
    """Where an upstream may be: the lab's own address space, never the machine's resolver
    nor the internet."""
    nets = [spec.pod_cidr, spec.service_cidr, spec.underlay.cidr]
    if spec.load_balancer_cidr is not None:
        nets.append(spec.load_balancer_cidr)
    return nets


@register
class ClusterDNS(Addon):
    name = "dns"
    section = "dns"

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        settings.only(["upstream", "replicas", "ttl"])
        upstream: list[str] = []
        if settings.has("upstream"):
            raw = settings.raw("upstream")
            values = raw if isinstance(raw, list) else [raw]
            nets = lab_networks(spec)
            inside = ", ".join(str(n) for n in nets)
            for value in values:
                try:
                    ip = ipaddress.IPv4Address(str(value).strip())
                except ValueError:
                    raise settings.error("upstream", f"{value!r} is not an IPv4 address",
                                         "give the address of a DNS server inside the lab, "
                                         "e.g. a pod's IP") from None
                if not any(ip in n for n in nets):
                    raise settings.error(
                        "upstream", f"{ip} is outside the lab ({inside}); cluster DNS "
                        "never forwards to the internet or the machine's resolver",
                        f"use a DNS server inside the lab ({inside}), or remove upstream "
                        "to answer other names REFUSED")
                if ip == spec.service_cidr.network_address + 10:
                    raise settings.error("upstream", f"{ip} is kube-dns itself (a loop)",
                                         "use another DNS server inside the lab")
                upstream.append(str(ip))
        return {"upstream": upstream,
                "replicas": settings.int("replicas", 1, lo=1, hi=10),
                "ttl": settings.int("ttl", 5, lo=0, hi=3600)}

    # -- the API objects ---------------------------------------------------------------
    def args(self) -> list[str]:
        spec, control = self.cluster.spec, self.cluster.control
        assert control is not None
        out = ["--domain", spec.dns_domain,
               "--dns-ip", control.cluster_dns, "--ttl", str(self.settings["ttl"]),
               "--reverse-cidr", str(spec.service_cidr), "--reverse-cidr", str(spec.pod_cidr)]
        for ip in self.settings["upstream"]:
            out += ["--upstream", ip]
        return out

    def service(self) -> dict[str, Any]:
        assert self.cluster.control is not None
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                             "labels": {**LABELS, "kubernetes.io/name": "CoreDNS"}},
                "spec": {"selector": dict(LABELS),
                         "clusterIP": self.cluster.control.cluster_dns,
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP",
                                    "targetPort": 53},
                                   {"name": "dns-tcp", "port": 53, "protocol": "TCP",
                                    "targetPort": 53}]}}

    def service_account(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}}

    def deployment(self) -> dict[str, Any]:
        container = {
            "name": "coredns", "image": IMAGE, "args": self.args(),
            "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                      {"name": "ready", "containerPort": READY_PORT, "protocol": "TCP"}],
            # Ready within a second of serving (the startup probe), then looked at every
            # 10 s as CoreDNS's manifest does: a 1 s readiness probe was an idle lab's most
            # frequent wake-up (kubelet and server, every second)
            "startupProbe": {"httpGet": {"path": "/ready", "port": READY_PORT},
                             "periodSeconds": 1, "failureThreshold": 300},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT},
                               "periodSeconds": 10, "failureThreshold": 3}}
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": dict(LABELS)},
                "spec": {"replicas": self.settings["replicas"],
                         "selector": {"matchLabels": dict(LABELS)},
                         "template": {"metadata": {"labels": dict(LABELS)},
                                      "spec": {"serviceAccountName": SERVICE_ACCOUNT,
                                               "dnsPolicy": "Default",
                                               "containers": [container]}}}}

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        client = self.client
        ensure_namespace(client, NAMESPACE)
        client.apply(self.service_account())
        client.apply(self.service())
        client.apply(self.deployment())

    @property
    def client(self) -> KubeClient:
        assert self.cluster.control is not None
        return self.cluster.control.client

    def pods(self) -> list[dict[str, Any]]:
        return self.client.list("pods", NAMESPACE, label_selector="k8s-app=kube-dns")["items"]

    def wait_ready(self, timeout: float = 60.0) -> list[str]:
        """Wait until every replica is Ready; return the DNS pods' IPs."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [p["status"]["podIP"] for p in self.pods()
                     if any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (p.get("status") or {}).get("conditions") or [])
                     and not p["metadata"].get("deletionTimestamp")]
            if len(ready) >= self.settings["replicas"]:
                return ready
            if time.monotonic() > deadline:
                raise KnetlabError(f"cluster DNS not ready after {timeout:.0f}s "
                                   f"({len(ready)}/{self.settings['replicas']} pods ready)")
            time.sleep(0.1)


def ensure_namespace(client: KubeClient, name: str) -> None:
    from knetlab.kube.client import ApiError
    try:
        client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name}})
    except ApiError as exc:
        if exc.code != 409:
            raise

