"""calico-ipam: pod addresses from affine blocks of a pool, kept in the lab's store.

As Calico's IPAM: the pool (e.g. 10.244.0.0/16) is cut into blocks (``blockSize``, /26 by
default); a node claims a block (affinity ``host:<node>``) and hands out its addresses; a
node whose blocks are full claims another. A block is one store key
``ipam/blocks/<net>-<len>`` holding its cidr, node and allocations (address -> handle).

This runs as a separate CNI process, so it reads and writes the store's files directly
(``<store>/<key>.json``, the store's ``.lock`` and ``.revision``; see knetlab/store.py,
and ``.ipam-claims``, bumped only when a block changes hands):
every read-modify-write happens under the store lock, which makes a claim atomic even
when two nodes' plugins race for the same block. Stdlib only (``python3 -S``).

STATUS fails (50) when the node can get no address (its blocks full, no block left);
GC releases the node's pod allocations of attachments no longer valid.

ipam config: ``{"type": "calico-ipam", "datastore": "<run dir>/store", "pool":
"10.244.0.0/16", "blockSize": 26, "node": "node-1"}``.
"""

from __future__ import annotations

import fcntl
import os

from knetlab.cni.netutil import int_to_ip, parse_cidr
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import (
    INVALID_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    CNIError,
    convert_result,
    dumps,
    loads,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

NO_ADDRESS = 100  # plugin-specific code: the pool is full
PREFIX = "ipam/blocks"
CLAIMS = ".ipam-claims"  # the claims' own revision (see BlockStore.claims_revision)


def block_key(cidr: str) -> str:
    return f"{PREFIX}/{cidr.replace('/', '-')}"


class BlockStore:
    """The store's files, as a separate process sees them (same layout as store.Store)."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, PREFIX), exist_ok=True)
        self._lock_fd: int | None = None

    def __enter__(self) -> BlockStore:
        self._lock_fd = os.open(os.path.join(self.root, ".lock"), os.O_WRONLY | os.O_CREAT)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._lock_fd is not None
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    def _path(self, cidr: str) -> str:
        return os.path.join(self.root, block_key(cidr) + ".json")

    def read(self, cidr: str) -> dict[str, Any] | None:
        try:
            with open(self._path(cidr)) as f:
                return loads(f.read())
        except (OSError, ValueError):
            return None

    def write(self, block: dict[str, Any]) -> None:
        path = self._path(block["cidr"])
        claim = not os.path.exists(path)
        with open(path + ".tmp", "w") as f:
            f.write(dumps(block))
        os.replace(path + ".tmp", path)
        self._bump(".revision")
        if claim:
            self._bump(CLAIMS)
            self._bump(f"{CLAIMS}-{block['node']}")

    def remove(self, cidr: str) -> None:
        block = self.read(cidr)
        try:
            os.unlink(self._path(cidr))
        except FileNotFoundError:
            return
        self._bump(".revision")
        self._bump(CLAIMS)
        if block:
            self._bump(f"{CLAIMS}-{block['node']}")

    def _bump(self, name: str) -> None:
        rev_path = os.path.join(self.root, name)
        try:
            with open(rev_path) as f:
                rev = int(f.read())
        except (OSError, ValueError):
            rev = 0
        with open(rev_path + ".tmp", "w") as f:
            f.write(str(rev + 1))
        os.replace(rev_path + ".tmp", rev_path)

    def claims_revision(self, node: str = "") -> str:
        """Bumped when a block (of ``node``, or any) is claimed or released, not when an
        address is handed out: every node's speaker watches its own, and re-reading every
        block on each pod's address or another node's claim made a 100-node lab do
        O(nodes x blocks) file reads per pod and per join."""
        try:
            with open(os.path.join(self.root, f"{CLAIMS}-{node}" if node else CLAIMS)) as f:
                return f.read()
        except OSError:
            return ""

    def blocks(self) -> list[dict[str, Any]]:
        out = []
        base = os.path.join(self.root, PREFIX)
        for name in sorted(os.listdir(base)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(base, name)) as f:
                        out.append(loads(f.read()))
                except (OSError, ValueError):
                    continue
        return out


def node_blocks(store: BlockStore, node: str) -> list[dict[str, Any]]:
    return [b for b in store.blocks() if b.get("node") == node]


def _span(cidr: str) -> tuple[int, int]:
    """First and last address of a network (as ints; no ipaddress: plugin start-up time)."""
    addr, plen = parse_cidr(cidr)
    if not 0 <= plen <= 32:
        raise ValueError(f"{cidr!r} is not an IPv4 network")
    size = 1 << (32 - plen)
    first = addr & ~(size - 1) & 0xFFFFFFFF
    return first, first + size - 1


def _subnets(pool: str, size: int) -> list[str]:
    """The pool's /size blocks in address order (ipaddress' ``subnets(new_prefix=size)``)."""
    first, last = _span(pool)
    if size < int(pool.partition("/")[2] or 32):
        raise ValueError(f"blockSize /{size} is larger than pool {pool}")
    step = 1 << (32 - size)
    return [f"{int_to_ip(n)}/{size}" for n in range(first, last + 1, step)]


def claim_block(store: BlockStore, pool: str, size: int, node: str) -> dict[str, Any]:
    """Claim the first free block of the pool for ``node`` (call under the lock)."""
    taken = {b["cidr"] for b in store.blocks()}
    for net in _subnets(pool, size):
        if net not in taken:
            block = {"cidr": net, "node": f"{node}", "affinity": f"host:{node}",
                     "allocations": {}}
            store.write(block)
            return block
    raise CNIError(NO_ADDRESS, f"pool {pool} has no free /{size} block left for {node}")


def _usable(block: dict[str, Any], pool: str) -> list[str]:
    """Every address of the block but the pool's own network and broadcast addresses."""
    first, last = _span(pool)
    lo, hi = _span(block["cidr"])
    return [int_to_ip(ip) for ip in range(lo, hi + 1) if ip not in (first, last)]


def allocate(store: BlockStore, pool: str, size: int, node: str, handle: str) -> str:
    """An address for ``handle`` from the node's blocks, claiming one more when they are
    full (call under the lock). Idempotent: a handle keeps its address."""
    blocks = node_blocks(store, node)
    for b in blocks:
        for ip, h in b["allocations"].items():
            if h == handle:
                return ip
    for b in [*blocks, None]:
        if b is None:
            b = claim_block(store, pool, size, node)
        for ip in _usable(b, pool):
            if ip not in b["allocations"]:
                b["allocations"][ip] = handle
                store.write(b)
                return ip
    raise CNIError(NO_ADDRESS, f"no address left for {node}")  # a /32 block of a net addr


def release(store: BlockStore, node: str, handle: str) -> str | None:
    for b in node_blocks(store, node):
        for ip, h in list(b["allocations"].items()):
            if h == handle:
                del b["allocations"][ip]
                store.write(b)  # the block keeps its affinity, as Calico's does
                return ip
    return None


def _config(args: Args) -> tuple[dict[str, Any], str, int, str]:
    ipam = args.conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "network configuration has no ipam section")
    for key in ("datastore", "pool", "node"):
        if not ipam.get(key):
            raise CNIError(INVALID_CONFIG, f"calico-ipam: ipam.{key} is required")
    size = int(ipam.get("blockSize", 26))
    if not 20 <= size <= 32:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: blockSize {size} is not in 20..32")
    return ipam, ipam["pool"], size, ipam["node"]


def _handle(args: Args) -> str:
    return f"{args.container_id}/{args.ifname}"


def add(args: Args) -> dict[str, Any]:
    ipam, pool, size, node = _config(args)
    with BlockStore(ipam["datastore"]) as store:
        ip = allocate(store, pool, size, node, _handle(args))
    result = {"cniVersion": args.version, "ips": [{"address": f"{ip}/32"}],
              "routes": [], "dns": {}}
    return convert_result(result, args.version)


def delete(args: Args) -> None:
    ipam, _pool, _size, node = _config(args)
    with BlockStore(ipam["datastore"]) as store:
        release(store, node, _handle(args))


def check(args: Args) -> None:
    ipam, _pool, _size, node = _config(args)
    with BlockStore(ipam["datastore"]) as store:
        found = any(h == _handle(args) for b in node_blocks(store, node)
                    for h in b["allocations"].values())
    if not found:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: no address for {_handle(args)}")


def _free_address(store: BlockStore, pool: str, size: int, node: str) -> bool:
    """Could ``allocate`` hand out an address now: a free one in the node's blocks, or a
    block of the pool nobody has claimed?"""
    for b in node_blocks(store, node):
        if any(ip not in b["allocations"] for ip in _usable(b, pool)):
            return True
    taken = {b["cidr"] for b in store.blocks()}
    return any(net not in taken for net in _subnets(pool, size))


def status(args: Args) -> None:
    """Ready when the datastore is usable and an address can be handed out."""
    ipam, pool, size, node = _config(args)
    try:
        with BlockStore(ipam["datastore"]) as store:
            free = _free_address(store, pool, size, node)
    except OSError as exc:
        raise CNIError(PLUGIN_NOT_AVAILABLE, "calico-ipam: the datastore is unusable",
                       str(exc)) from None
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: {exc}") from None
    if not free:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"calico-ipam: pool {pool} has no free address "
                       f"for {node}", "every block of the node is full and none is unclaimed")


def gc(args: Args) -> None:
    """Release the node's pod allocations whose (container, ifname) is no valid attachment.

    Only CNI handles (``<containerID>/<ifname>``) are candidates: the tunnel addresses the
    data plane allocates (``ipip-tunnel-addr``, ``vxlan-tunnel-addr``) are no attachment,
    as Calico's GC leaves its tunnel handles alone. Blocks keep their affinity (as DEL)."""
    ipam, _pool, _size, node = _config(args)
    valid = {f"{cid}/{ifname}" for cid, ifname in args.valid_attachments()}
    with BlockStore(ipam["datastore"]) as store:
        for b in node_blocks(store, node):
            stale = [ip for ip, h in b["allocations"].items() if "/" in h and h not in valid]
            for ip in stale:
                del b["allocations"][ip]
            if stale:
                store.write(b)


def main() -> None:
    plugin_main(add, delete, check, status, gc)
