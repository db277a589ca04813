"""What a trace's SRC and DST name, and the lab's namespaces it may capture in.

SRC and DST are a pod, node or router (``knetlab status`` names them), ``svc/NAME`` or
``svc/NAMESPACE/NAME`` (DST only: the Service's clusterIP and first port, read from the
lab's API), or an IPv4 address. A SRC address must belong to one of the lab's namespaces
(the probe leaves from there); a DST address must lie inside the lab: its pod or service
CIDR, or a subnet connected in one of its nodes or routers. That is how the probe never
leaves the lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from knetlab import shell
from knetlab.errors import KnetlabError, NotFoundError
from knetlab.netns import netns_path
from knetlab.rundir import lab_tag
from knetlab.trace.capture import Point


@dataclass(frozen=True)
class Endpoint:
    name: str  # as the user wrote it
    ip: str
    host: str = ""  # the lab namespace it is in ("" for a Service or a bare address)
    netns: str = ""
    port: int = 0  # a Service's port
    proto: str = ""  # a Service port's protocol (tcp, udp)


class Lab:
    """A running lab as the tracer sees it: its hosts' namespaces and addresses."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.name: str = state["cluster"]
        self.hosts: dict[str, dict[str, Any]] = state.get("hosts", {})
        self.ips = {p["name"]: p["ip"] for p in state.get("pods", []) if p.get("ip")}
        self.ips.update({n["name"]: n["ip"] for n in state.get("nodes", [])})
        self._addrs: dict[str, list[ipaddress.IPv4Interface]] | None = None

    def netns(self, host: str) -> str:
        return netns_path(self.hosts[host]["pid"])

    def kind(self, host: str) -> str:
        return str(self.hosts.get(host, {}).get("kind", ""))

    def addresses(self) -> dict[str, list[ipaddress.IPv4Interface]]:
        """IPv4 addresses (with prefix) of every host but pods (theirs are in the state)."""
        if self._addrs is None:
            self._addrs = {}
            for host in self.hosts:
                if self.kind(host) == "pod":
                    if host in self.ips:
                        self._addrs[host] = [ipaddress.IPv4Interface(f"{self.ips[host]}/32")]
                    continue
                res = shell.run(["ip", "-j", "-4", "addr", "show"], netns=self.netns(host),
                                check=False, timeout=10)
                found = [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
                         for link in json.loads(res.stdout or "[]") if res.ok
                         for a in link.get("addr_info", []) if link.get("ifname") != "lo"]
                self._addrs[host] = found
        return self._addrs

    def owner(self, ip: str) -> str | None:
        for host, ip_of in self.ips.items():
            if ip_of == ip:
                return host
        for host, addrs in self.addresses().items():
            if any(str(a.ip) == ip for a in addrs):
                return host
        return None

    def inside(self, ip: str) -> bool:
        addr = ipaddress.IPv4Address(ip)
        for key in ("podCIDR", "serviceCIDR"):
            if key in self.state and addr in ipaddress.IPv4Network(self.state[key]):
                return True
        return any(addr in a.network for addrs in self.addresses().values() for a in addrs
                   if a.network.prefixlen < 32)

    def points(self) -> list[Point]:
        """Every place of the lab a packet can be seen: each host's namespace, and the
        lab's switch ports in the root namespace."""
        out = [Point(host, self.netns(host)) for host in self.hosts]
        tag = lab_tag(self.name)
        res = shell.run(["ip", "-j", "link", "show"], check=False, timeout=10)
        ports = [link["ifname"] for link in json.loads(res.stdout or "[]") if res.ok
                 if link["ifname"].startswith(tag) and "-" in link["ifname"]]
        by_switch: dict[str, list[str]] = {}
        for port in ports:
            by_switch.setdefault(port.split("-", 1)[0], []).append(port)
        out += [Point(f"switch:{sw}", None, tuple(p)) for sw, p in sorted(by_switch.items())]
        return out

    # -- resolving names ---------------------------------------------------------
    def source(self, text: str) -> Endpoint:
        if text.startswith("svc/"):
            raise KnetlabError(f"a trace starts in a namespace; {text} is a Service "
                               "(use a pod or node as SRC)")
        if text in self.hosts:
            ip = self.ips.get(text) or _first(self.addresses().get(text, []))
            if not ip:
                raise KnetlabError(f"{text} has no IPv4 address to send from")
            return Endpoint(text, ip, text, self.netns(text))
        ip = _address(text)
        host = self.owner(ip)
        if host is None:
            raise NotFoundError(f"{text} is no address of lab {self.name}'s pods, nodes or "
                                "routers; `knetlab status` lists them")
        return Endpoint(text, ip, host, self.netns(host))

    def destination(self, text: str) -> Endpoint:
        if text.startswith("svc/"):
            return self._service(text)
        if text in self.hosts:
            ip = self.ips.get(text) or _first(self.addresses().get(text, []))
            if not ip:
                raise KnetlabError(f"{text} has no IPv4 address to send to")
            return Endpoint(text, ip, text, self.netns(text))
        ip = _address(text)
        if not self.inside(ip):
            raise KnetlabError(f"{ip} is outside lab {self.name} (not in its pod or service "
                               "CIDR nor a subnet of its nodes and routers); a trace never "
                               "sends outside the lab")
        host = self.owner(ip)
        return Endpoint(text, ip, host or "", self.netns(host) if host else "")

    def _service(self, text: str) -> Endpoint:
        parts = text.split("/")[1:]
        namespace, name = (parts[0], parts[1]) if len(parts) == 2 else ("default", parts[0])
        kube = self.state.get("kubernetes")
        if not kube:
            raise KnetlabError(f"lab {self.name} runs without Kubernetes: no Service {name}")
        from knetlab.kube.client import KubeClient
        client = KubeClient.from_kubeconfig(kube["kubeconfig"])
        try:
            svc = client.get("services", name, namespace)
        except KnetlabError as exc:
            raise NotFoundError(f"no Service {namespace}/{name}: {exc}") from None
        spec = svc.get("spec", {})
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            raise KnetlabError(f"Service {namespace}/{name} has no clusterIP (headless); "
                               "trace to one of its pods instead")
        ports = spec.get("ports") or [{}]
        return Endpoint(text, ip, port=int(ports[0].get("port", 0)),
                        proto=str(ports[0].get("protocol", "TCP")).lower())


def _first(addrs: list[ipaddress.IPv4Interface]) -> str:
    return str(addrs[0].ip) if addrs else ""


def _address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NotFoundError(f"{text!r} is no pod, node, router, svc/NAME or IPv4 address "
                            "of the lab; `knetlab status` lists them") from None
