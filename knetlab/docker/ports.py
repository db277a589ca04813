"""Port publishing: Docker's ``-p``/``--publish`` forms and the per-node port allocator.

Forms (as ``docker run`` accepts them)::

    -p 8080:80            all host addresses, tcp        -p 80          random host port
    -p 1.2.3.4:8080:80    one host address               -p 1.2.3.4::80 random port, one address
    -p 8080:80/udp        udp                            -p 8000-8002:9000-9002  ranges
    -p 8000-8010:80       one free host port of the range for one container port

Random ports come from the ephemeral range (``net.ipv4.ip_local_port_range``, 32768-60999
by default) in increasing order, as Docker's port allocator hands them out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from knetlab.errors import KnetlabError

EPHEMERAL = (32768, 60999)
ANY = "0.0.0.0"


class PortError(KnetlabError):
    pass


@dataclass(frozen=True)
class PortSpec:
    """One requested mapping; ``host_ports`` empty means "pick one" (random)."""
    host_ip: str
    host_ports: tuple[int, ...]
    container_port: int
    proto: str


@dataclass(frozen=True)
class Binding:
    """One allocated mapping: host ip:port -> container port."""
    host_ip: str
    host_port: int
    container_port: int
    proto: str

    def docker_port_line(self) -> str:
        return f"{self.container_port}/{self.proto} -> {self.host_ip}:{self.host_port}"

    def ps_text(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.proto}"


def _range(text: str, what: str) -> list[int]:
    try:
        lo, _, hi = text.partition("-")
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise PortError(f"invalid {what} {text!r}") from None
    if not 1 <= first <= last <= 65535:
        raise PortError(f"invalid {what} {text!r}")
    return list(range(first, last + 1))


def parse_publish(spec: str) -> list[PortSpec]:
    """Parse one ``-p`` value into mappings (one per container port)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise PortError(f"invalid proto: {proto}")
    parts = body.rsplit(":", 2) if body.count(":") <= 2 else None
    if not parts:
        raise PortError(f"invalid publish spec {spec!r}")
    ip, host = (parts[0], parts[1]) if len(parts) == 3 else (ANY, parts[0] if len(parts) == 2
                                                               else "")
    ip = ip or ANY
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise PortError(f"invalid IP address {ip!r} in publish spec {spec!r}") from None
    cports = _range(parts[-1], "containerPort")
    hports = _range(host, "hostPort") if host else []
    if not hports:
        return [PortSpec(ip, (), c, proto) for c in cports]
    if len(cports) == 1:  # one container port, a host range: any free port of it
        return [PortSpec(ip, tuple(hports), cports[0], proto)]
    if len(hports) != len(cports):
        raise PortError(f"invalid ranges specified for container and host Ports: "
                        f"{parts[-1]} and {host}")
    return [PortSpec(ip, (h,), c, proto) for h, c in zip(hports, cports, strict=True)]


def parse_expose(spec: str) -> list[tuple[int, str]]:
    body, _, proto = spec.partition("/")
    return [(p, proto or "tcp") for p in _range(body, "port")]


class Allocator:
    """Host ports in use on one node, by (proto, ip, port). ``0.0.0.0`` overlaps every ip."""

    def __init__(self, ephemeral: tuple[int, int] = EPHEMERAL) -> None:
        self.used: dict[tuple[str, str, int], str] = {}  # -> container name
        self.ephemeral = ephemeral

    def _taken(self, proto: str, ip: str, port: int, extra: set[tuple[str, str, int]]) -> bool:
        keys = set(self.used) | extra
        if ip == ANY:
            return any(k[0] == proto and k[2] == port for k in keys)
        return (proto, ip, port) in keys or (proto, ANY, port) in keys

    def allocate(self, specs: list[PortSpec]) -> list[Binding]:
        """All or nothing: raise Docker's error and keep nothing if a port is taken."""
        got: set[tuple[str, str, int]] = set()
        out: list[Binding] = []
        for s in specs:
            candidates = s.host_ports or tuple(range(self.ephemeral[0], self.ephemeral[1] + 1))
            port = next((p for p in candidates if not self._taken(s.proto, s.host_ip, p, got)),
                        None)
            if port is None:
                shown = s.host_ports[0] if len(s.host_ports) == 1 else \
                    f"{s.host_ports[0]}-{s.host_ports[-1]}" if s.host_ports else "random"
                raise PortError(f"Bind for {s.host_ip}:{shown} failed: port is already allocated")
            got.add((s.proto, s.host_ip, port))
            out.append(Binding(s.host_ip, port, s.container_port, s.proto))
        return out

    def commit(self, bindings: list[Binding], owner: str) -> None:
        for b in bindings:
            self.used[(b.proto, b.host_ip, b.host_port)] = owner

    def release(self, owner: str) -> None:
        self.used = {k: v for k, v in self.used.items() if v != owner}
