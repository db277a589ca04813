"""host-local IPAM: addresses from the node's range, one file per address, under a lock.

Store layout (as the reference plugin): ``<dataDir>/<network>/<ip>`` holds
``<containerID>\\n<ifname>``; ``last_reserved_ip.0`` remembers where to continue, so a
released address is not handed out again at once. DEL is idempotent.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager
from pathlib import Path

from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import INVALID_CONFIG, CNIError, convert_result

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
NO_ADDRESS = 100  # plugin-specific code: the range is full


class RangeSet:
    def __init__(self, subnet: str, start: str | None, end: str | None, gateway: str | None):
        try:
            self.subnet = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise CNIError(INVALID_CONFIG, f"invalid subnet {subnet!r}", str(exc)) from None
        hosts = self.subnet.num_addresses
        first = self.subnet.network_address + (1 if hosts > 2 else 0)
        last = self.subnet.broadcast_address - (1 if hosts > 2 else 0)
        self.start = ipaddress.IPv4Address(start) if start else first
        self.end = ipaddress.IPv4Address(end) if end else last
        self.gateway = ipaddress.IPv4Address(gateway) if gateway else first
        for ip in (self.start, self.end):
            if ip not in self.subnet:
                raise CNIError(INVALID_CONFIG, f"range address {ip} is outside {self.subnet}")

    def candidates(self, after: ipaddress.IPv4Address | None) -> Iterator[ipaddress.IPv4Address]:
        """Every usable address once, starting after ``after`` and wrapping around."""
        size = int(self.end) - int(self.start) + 1
        offset = 0
        if after is not None and self.start <= after <= self.end:
            offset = int(after) - int(self.start) + 1
        for i in range(size):
            ip = self.start + (offset + i) % size
            if ip != self.gateway:
                yield ip


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = Path(data_dir) / network
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.dir / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def allocations(self) -> dict[str, tuple[str, str]]:
        out = {}
        for p in self.dir.iterdir():
            if p.name[0].isdigit():
                cid, _, ifname = p.read_text().partition("\n")
                out[p.name] = (cid.strip(), ifname.strip())
        return out

    def find(self, cid: str, ifname: str) -> str | None:
        for ip, owner in self.allocations().items():
            if owner == (cid, ifname):
                return ip
        return None

    def reserve(self, ip: str, cid: str, ifname: str) -> bool:
        try:
            fd = os.open(self.dir / ip, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{cid}\n{ifname}")
        (self.dir / "last_reserved_ip.0").write_text(ip)
        return True

    def last_reserved(self) -> ipaddress.IPv4Address | None:
        try:
            return ipaddress.IPv4Address((self.dir / "last_reserved_ip.0").read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self, ip: str) -> None:
        (self.dir / ip).unlink(missing_ok=True)


def _ipam(args: Args) -> tuple[dict[str, Any], RangeSet, Store]:
    ipam = args.conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "network configuration has no ipam section")
    ranges = ipam.get("ranges")
    if ranges:
        first = ranges[0][0]
    elif ipam.get("subnet"):
        first = ipam
    else:
        raise CNIError(INVALID_CONFIG, "ipam needs 'ranges' or 'subnet'")
    rs = RangeSet(first["subnet"], first.get("rangeStart"), first.get("rangeEnd"),
                  first.get("gateway"))
    name = args.conf.get("name")
    if not name:
        raise CNIError(INVALID_CONFIG, "network configuration has no name")
    return ipam, rs, Store(ipam.get("dataDir", DEFAULT_DATA_DIR), name)


def _result(args: Args, ipam: dict[str, Any], rs: RangeSet, ip: str) -> dict[str, Any]:
    result = {
        "cniVersion": args.version,
        "ips": [{"address": f"{ip}/{rs.subnet.prefixlen}", "gateway": str(rs.gateway)}],
        "routes": ipam.get("routes", []),
        "dns": ipam.get("dns", {}),
    }
    return convert_result(result, args.version)


def add(args: Args) -> dict[str, Any]:
    ipam, rs, store = _ipam(args)
    with store.locked():
        ip = store.find(args.container_id, args.ifname)
        if ip is None:
            for candidate in rs.candidates(store.last_reserved()):
                if store.reserve(str(candidate), args.container_id, args.ifname):
                    ip = str(candidate)
                    break
        if ip is None:
            raise CNIError(NO_ADDRESS, f"no IP addresses available in range set "
                           f"{rs.start}-{rs.end}")
    return _result(args, ipam, rs, ip)


def delete(args: Args) -> None:
    _, _, store = _ipam(args)
    with store.locked():
        ip = store.find(args.container_id, args.ifname)
        if ip:
            store.release(ip)


def check(args: Args) -> None:
    _, _, store = _ipam(args)
    if store.find(args.container_id, args.ifname) is None:
        raise CNIError(INVALID_CONFIG, f"host-local: failed to find address for container "
                       f"{args.container_id} interface {args.ifname}")


def gc(args: Args) -> None:
    """Release every address whose (container, ifname) is not a valid attachment."""
    _, _, store = _ipam(args)
    valid = {(a.get("containerID"), a.get("ifname"))
             for a in args.conf.get("cni.dev/valid-attachments", [])}
    with store.locked():
        for ip, owner in store.allocations().items():
            if owner not in valid:
                store.release(ip)


def main() -> None:
    plugin_main(add, delete, check, gc=gc)
