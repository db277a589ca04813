"""host-local IPAM: addresses from the node's range, one file per address, under a lock.

Store layout (as the reference plugin): ``<dataDir>/<network>/<ip>`` holds
``<containerID>\\n<ifname>``; ``last_reserved_ip.0`` remembers where to continue, so a
released address is not handed out again at once. DEL is idempotent. STATUS fails (50)
when the range is full; GC releases the reservations of attachments no longer valid.
Addresses are plain integers here (no ipaddress/pathlib: a plugin's import time is paid
by every pod).
"""

from __future__ import annotations

import fcntl
import os

from knetlab.cni.netutil import int_to_ip, ip_to_int
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import INVALID_CONFIG, PLUGIN_NOT_AVAILABLE, CNIError, convert_result

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
NO_ADDRESS = 100  # plugin-specific code: the range is full


def _addr(text: str, what: str) -> int:
    try:
        return ip_to_int(text)
    except ValueError:
        raise CNIError(INVALID_CONFIG, f"invalid {what} {text!r}") from None


class RangeSet:
    def __init__(self, subnet: str, start: str | None, end: str | None, gateway: str | None):
        net, _, plen_text = subnet.partition("/")
        if not plen_text.isdigit() or not 0 < int(plen_text) <= 32:
            raise CNIError(INVALID_CONFIG, f"invalid subnet {subnet!r}")
        self.prefixlen = int(plen_text)
        size = 1 << (32 - self.prefixlen)
        self.network = _addr(net, "subnet") & ~(size - 1) & 0xFFFFFFFF
        self.broadcast = self.network + size - 1
        inner = 1 if size > 2 else 0
        self.start = _addr(start, "rangeStart") if start else self.network + inner
        self.end = _addr(end, "rangeEnd") if end else self.broadcast - inner
        self.gateway = _addr(gateway, "gateway") if gateway else self.network + inner
        for ip in (self.start, self.end):
            if not self.network <= ip <= self.broadcast:
                raise CNIError(INVALID_CONFIG, f"range address {int_to_ip(ip)} is outside "
                               f"{subnet}")

    def candidates(self, after: int | None) -> Iterator[int]:
        """Every usable address once, starting after ``after`` and wrapping around."""
        size = self.end - self.start + 1
        offset = after - self.start + 1 if after is not None and self.start <= after <= self.end \
            else 0
        for i in range(size):
            ip = self.start + (offset + i) % size
            if ip != self.gateway:
                yield ip


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)
        os.makedirs(self.dir, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def lock(self) -> int:
        """An exclusive lock on the network's store; close the returned fd to release."""
        fd = os.open(self._path("lock"), os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def allocations(self) -> dict[str, tuple[str, str]]:
        out = {}
        for name in os.listdir(self.dir):
            if name[0].isdigit():
                with open(self._path(name)) as f:
                    cid, _, ifname = f.read().partition("\n")
                out[name] = (cid.strip(), ifname.strip())
        return out

    def find(self, cid: str, ifname: str) -> str | None:
        for ip, owner in self.allocations().items():
            if owner == (cid, ifname):
                return ip
        return None

    def reserve(self, ip: str, cid: str, ifname: str) -> bool:
        try:
            fd = os.open(self._path(ip), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{cid}\n{ifname}")
        with open(self._path("last_reserved_ip.0"), "w") as f:
            f.write(ip)
        return True

    def last_reserved(self) -> int | None:
        try:
            with open(self._path("last_reserved_ip.0")) as f:
                return ip_to_int(f.read().strip())
        except (OSError, ValueError):
            return None

    def release(self, ip: str) -> None:
        try:
            os.unlink(self._path(ip))
        except FileNotFoundError:
            pass


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
        "ips": [{"address": f"{ip}/{rs.prefixlen}", "gateway": int_to_ip(rs.gateway)}],
        "routes": ipam.get("routes", []),
        "dns": ipam.get("dns", {}),
    }
    return convert_result(result, args.version)


def add(args: Args) -> dict[str, Any]:
    ipam, rs, store = _ipam(args)
    lock = store.lock()
    try:
        ip = store.find(args.container_id, args.ifname)
        if ip is None:
            for candidate in rs.candidates(store.last_reserved()):
                if store.reserve(int_to_ip(candidate), args.container_id, args.ifname):
                    ip = int_to_ip(candidate)
                    break
    finally:
        os.close(lock)
    if ip is None:
        raise CNIError(NO_ADDRESS, f"no IP addresses available in range set "
                       f"{int_to_ip(rs.start)}-{int_to_ip(rs.end)}")
    return _result(args, ipam, rs, ip)


def delete(args: Args) -> None:
    _, _, store = _ipam(args)
    lock = store.lock()
    try:
        ip = store.find(args.container_id, args.ifname)
        if ip:
            store.release(ip)
    finally:
        os.close(lock)


def check(args: Args) -> None:
    _, _, store = _ipam(args)
    if store.find(args.container_id, args.ifname) is None:
        raise CNIError(INVALID_CONFIG, f"host-local: failed to find address for container "
                       f"{args.container_id} interface {args.ifname}")


def status(args: Args) -> None:
    """Ready when the configuration is valid, the store usable and an address is free
    (spec: a plugin with exhausted resources must say it cannot serve ADD)."""
    try:
        _, rs, store = _ipam(args)
        taken = set(store.allocations())
    except OSError as exc:
        raise CNIError(PLUGIN_NOT_AVAILABLE, "host-local: the address store is unusable",
                       str(exc)) from None
    if not any(int_to_ip(ip) not in taken for ip in rs.candidates(None)):
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"host-local: no free address in range set "
                       f"{int_to_ip(rs.start)}-{int_to_ip(rs.end)}",
                       f"{len(taken)} reservations in {store.dir}")


def gc(args: Args) -> None:
    """Release every address whose (container, ifname) is not a valid attachment."""
    _, _, store = _ipam(args)
    valid = args.valid_attachments()
    lock = store.lock()
    try:
        for ip, owner in store.allocations().items():
            if owner not in valid:
                store.release(ip)
    finally:
        os.close(lock)


def main() -> None:
    plugin_main(add, delete, check, status, gc)
