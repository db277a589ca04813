"""calico-ipam: pod addresses from affine blocks of a pool, kept in the lab's etcd.

As Calico's IPAM: the pool (e.g. 10.244.0.0/16) is cut into blocks (``blockSize``, /26 by
default); a node claims a block (affinity ``host:<node>``) and hands out its addresses; a
node whose blocks are full claims another. The keys are those of Calico's etcd datastore:

- ``/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26``: the block (``cidr``,
  ``affinity``, ``allocations``: per address the index of its attribute or null,
  ``unallocated``, ``attributes``: ``handle_id`` and ``secondary``);
- ``/calico/ipam/v2/host/<node>/ipv4/block/10.244.0.0-26``: the node's affinity to it;
- ``/calico/ipam/v2/handle/<handle>``: which block holds a handle's address.

Handles are Calico's: ``<network name>.<container ID>`` for a pod,
``vxlan-tunnel-addr-<node>`` / ``ipip-tunnel-addr-<node>`` for a node's tunnel address.

This runs as a separate CNI process, stdlib only (``python3 -S``), and speaks to etcd
with knetlab.store. Writes are optimistic: read a block with its ``mod_revision``, change
it, and write it in a transaction that compares that revision (a claim compares
``create_revision == 0``); a loser re-reads and retries. So two nodes' plugins racing for
the same block or address never both win, without any lock.

STATUS fails (50) when the node can get no address (its blocks full, no block left);
GC releases the node's pod allocations of attachments no longer valid.

Network configuration, as Calico's (``etcd_*`` and ``nodename`` at the top level, where
the calico plugin has them too)::

    {"type": "calico", "etcd_endpoints": "https://127.0.0.1:2379", "etcd_ca_cert_file": ...,
     "etcd_cert_file": ..., "etcd_key_file": ..., "nodename": "node-1",
     "ipam": {"type": "calico-ipam", "assign_ipv4": "true",
              "ipv4_pools": ["10.244.0.0/16"], "blockSize": 26}}
"""

from __future__ import annotations

import _thread

from knetlab.cni.netutil import int_to_ip, ip_to_int, parse_cidr
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import (
    INVALID_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    CNIError,
    convert_result,
    loads,
)
from knetlab.store import Store, StoreError, delete_op, prefix_end, put_op
from knetlab.storewire import b64, unb64

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

NO_ADDRESS = 100  # plugin-specific code: the pool is full
IPAM = "/calico/ipam/v2"
BLOCKS = f"{IPAM}/assignment/ipv4/block/"
HOSTS = f"{IPAM}/host/"
HANDLES = f"{IPAM}/handle/"
RETRIES = 100  # optimistic writes lost to racing writers before giving up


def _name(cidr: str) -> str:
    return cidr.replace("/", "-")


def block_key(cidr: str) -> str:
    return BLOCKS + _name(cidr)


def affinity_prefix(node: str) -> str:
    return f"{HOSTS}{node}/ipv4/block/"


def affinity_key(node: str, cidr: str) -> str:
    return affinity_prefix(node) + _name(cidr)


def handle_key(handle: str) -> str:
    return HANDLES + handle


def tunnel_handle(kind: str, node: str) -> str:
    """A node's tunnel address handle, as Calico names it (``vxlan-tunnel-addr-node-1``)."""
    return f"{kind}-tunnel-addr-{node}"


# -- Calico's block record <-> knetlab's view of it -------------------------------------
def to_calico(block: dict[str, Any]) -> dict[str, Any]:
    """The AllocationBlock as Calico's etcd datastore stores it."""
    first, last = _span(block["cidr"])
    allocations: list[int | None] = [None] * (last - first + 1)
    attributes = []
    for ip, handle in sorted(block["allocations"].items(), key=lambda kv: ip_to_int(kv[0])):
        allocations[ip_to_int(ip) - first] = len(attributes)
        attributes.append({"handle_id": handle, "secondary": None})
    return {"cidr": block["cidr"], "affinity": f"host:{block['node']}",
            "strictAffinity": False, "allocations": allocations,
            "unallocated": [i for i, a in enumerate(allocations) if a is None],
            "attributes": attributes, "deleted": False}


def from_calico(raw: dict[str, Any], revision: int = 0) -> dict[str, Any]:
    """knetlab's view: ``cidr``, ``node``, ``affinity``, ``allocations`` (address ->
    handle) and ``revision`` (the key's mod_revision, for the write back)."""
    first, _ = _span(raw["cidr"])
    attrs = raw.get("attributes") or []
    allocations = {int_to_ip(first + i): attrs[a]["handle_id"]
                   for i, a in enumerate(raw.get("allocations") or []) if a is not None}
    affinity = raw.get("affinity") or ""
    return {"cidr": raw["cidr"], "node": affinity.partition("host:")[2],
            "affinity": affinity, "allocations": allocations, "revision": revision}


class BlockStore:
    """Calico's IPAM keys in the lab's etcd."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: node -> the names of its blocks when last read: a hint (never trusted alone)
        #: that lets ``node_blocks`` read affinities and blocks in one request
        self.hints: dict[str, list[str]] = {}

    def blocks(self) -> list[dict[str, Any]]:
        """Every block of every node, by address."""
        _, kvs = self.store.range(BLOCKS, prefix=True)
        out = [from_calico(v, rev) for _k, v, rev, _l in kvs]
        return sorted(out, key=lambda b: ip_to_int(b["cidr"].partition("/")[0]))

    def affinities(self) -> dict[str, str]:
        """block cidr -> node, from the affinity keys alone (no block is read)."""
        _, kvs = self.store.range(HOSTS, prefix=True, keys_only=True)
        out = {}
        for key, _v, _r, _l in kvs:
            node, _, name = key[len(HOSTS):].partition("/ipv4/block/")
            out[name.replace("-", "/")] = node
        return out

    def node_blocks(self, node: str) -> list[dict[str, Any]]:
        """The node's blocks (with their revisions), in one etcd request when the node's
        blocks are those of the last read: one read-only transaction ranges over the
        node's affinity keys and, in the same snapshot, over the blocks last seen; only
        blocks the affinities name beyond those take a second request."""
        prefix = affinity_prefix(node)
        hint = self.hints.get(node, [])
        ops = [{"request_range": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                  "keys_only": True}}]
        ops += [{"request_range": {"key": b64(BLOCKS + name)}} for name in hint]
        out = self.store.call("/v3/kv/txn", {"compare": [], "success": ops, "failure": []})
        ranges = [r.get("response_range") or {} for r in out.get("responses") or []]
        if len(ranges) != len(ops):
            raise StoreError(f"etcd txn: {len(ops)} ranges asked, {len(ranges)} answered")
        names = [unb64(kv["key"]).decode().rpartition("/")[2]
                 for kv in ranges[0].get("kvs") or []]
        read = {}
        for r in ranges[1:]:
            for kv in r.get("kvs") or []:
                read[unb64(kv["key"]).decode()[len(BLOCKS):]] = (
                    loads(unb64(kv["value"])), int(kv.get("mod_revision", 0)))
        blocks = []
        for name in names:
            raw, rev = read[name] if name in read else self.store.get_kv(BLOCKS + name)
            if raw is not None:
                blocks.append(from_calico(raw, rev))
        self.hints[node] = names
        return blocks

    def write(self, block: dict[str, Any], also: list[dict[str, Any]] | None = None) -> bool:
        """Write the block back if nobody changed it since it was read (``revision``)."""
        return self.store.put_if(block_key(block["cidr"]), to_calico(block),
                                 block["revision"], also)

    def claim(self, cidr: str, node: str) -> dict[str, Any] | None:
        """Create the block with ``node``'s affinity, atomically; None if it exists."""
        block = {"cidr": cidr, "node": node, "affinity": f"host:{node}", "allocations": {},
                 "revision": 0}
        if not self.store.create(block_key(cidr), to_calico(block),
                                 also=[put_op(affinity_key(node, cidr), {"state": "confirmed",
                                                                         "deleted": False})]):
            return None
        _, block["revision"] = self.store.get_kv(block_key(cidr))
        return block

    def remove(self, block: dict[str, Any]) -> None:
        """The block back to the pool, with its affinity and its handles."""
        ops = [delete_op(block_key(block["cidr"])),
               delete_op(affinity_key(block["node"], block["cidr"]))]
        ops += [delete_op(handle_key(h)) for h in set(block["allocations"].values())]
        self.store.txn([], ops)


def node_blocks(store: BlockStore, node: str) -> list[dict[str, Any]]:
    return store.node_blocks(node)


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
    """Claim the first free block of the pool for ``node``; a block another node claims
    first (the transaction fails) is skipped."""
    taken = set(store.affinities())
    for net in _subnets(pool, size):
        if net not in taken:
            block = store.claim(net, node)
            if block is not None:
                return block
    raise CNIError(NO_ADDRESS, f"pool {pool} has no free /{size} block left for {node}")


def _usable(block: dict[str, Any], pool: str) -> list[str]:
    """Every address of the block but the pool's own network and broadcast addresses."""
    first, last = _span(pool)
    lo, hi = _span(block["cidr"])
    return [int_to_ip(ip) for ip in range(lo, hi + 1) if ip not in (first, last)]


def _handle_op(handle: str, cidr: str) -> dict[str, Any]:
    return put_op(handle_key(handle), {"handleID": handle, "block": {cidr: 1}, "deleted": False})


def allocate(store: BlockStore, pool: str, size: int, node: str, handle: str) -> str:
    """An address for ``handle`` from the node's blocks, claiming one more when they are
    full. Idempotent: a handle keeps its address. A write that loses a race re-reads; so
    does a claim that finds the pool taken (racing ADDs of this node may have claimed the
    blocks that now have room): only a pool full on a fresh read is an error."""
    pool_full = False
    for _ in range(RETRIES):
        blocks = store.node_blocks(node)
        for b in blocks:
            for ip, h in b["allocations"].items():
                if h == handle:
                    return ip
        for b in blocks:
            free = next((ip for ip in _usable(b, pool) if ip not in b["allocations"]), None)
            if free is not None:
                b["allocations"][free] = handle
                if store.write(b, also=[_handle_op(handle, b["cidr"])]):
                    return free
                break  # someone else wrote the block: read again
        else:
            try:
                claim_block(store, pool, size, node)  # then allocate from it, next round
            except CNIError:
                if pool_full:
                    raise
                pool_full = True
    raise CNIError(NO_ADDRESS, f"no address for {handle} on {node}: {RETRIES} writes lost "
                   "to racing writers")


def release(store: BlockStore, node: str, handle: str) -> str | None:
    """Free ``handle``'s address; the block keeps its affinity, as Calico's does."""
    for _ in range(RETRIES):
        for b in store.node_blocks(node):
            ip = next((ip for ip, h in b["allocations"].items() if h == handle), None)
            if ip is not None:
                del b["allocations"][ip]
                if store.write(b, also=[delete_op(handle_key(handle))]):
                    return ip
                break
        else:
            return None
    raise CNIError(PLUGIN_NOT_AVAILABLE, f"could not release {handle}: {RETRIES} writes "
                   "lost to racing writers")


def _config(args: Args) -> tuple[BlockStore, str, int, str]:
    conf = args.conf
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "network configuration has no ipam section")
    pools = ipam.get("ipv4_pools") or []
    if not pools or not isinstance(pools, list):
        raise CNIError(INVALID_CONFIG, "calico-ipam: ipam.ipv4_pools (a list of CIDRs) "
                       "is required")
    node = conf.get("nodename") or ipam.get("nodename")
    if not node:
        raise CNIError(INVALID_CONFIG, "calico-ipam: nodename is required")
    size = int(ipam.get("blockSize", 26))
    if not 20 <= size <= 32:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: blockSize {size} is not in 20..32")
    try:
        store = _block_store(conf)
    except (StoreError, ValueError) as exc:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: {exc}") from None
    return store, pools[0], size, node


#: one BlockStore (one kept-alive connection, the block hints) per datastore: the node's
#: CNI agent serves every pod of its node from one process, so its requests skip the
#: connect and read a node's blocks in one request (a plugin run has one invocation)
_STORES: dict[tuple[str, ...], BlockStore] = {}


def _block_store(conf: dict[str, Any]) -> BlockStore:
    key = tuple(str(conf.get(k) or "") for k in ("etcd_endpoints", "etcd_authority",
                                                   "etcd_scheme", "etcd_ca_cert_file",
                                                   "etcd_cert_file", "etcd_key_file"))
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = BlockStore(Store.from_conf(conf))
    return store


def _handle(args: Args) -> str:
    """Calico's pod handle: ``<network name>.<container ID>``."""
    return f"{args.conf.get('name', 'k8s-pod-network')}.{args.container_id}"


def _unavailable(exc: StoreError) -> CNIError:
    return CNIError(PLUGIN_NOT_AVAILABLE, "calico-ipam: the datastore is unusable", str(exc))


#: Calico's host-wide IPAM lock, for the invocations one process serves (the node's CNI
#: agent runs them in parallel): a node's concurrent ADDs take addresses one after the
#: other instead of racing each other into claiming a block apiece
IPAM_LOCK = _thread.allocate_lock()


def add(args: Args) -> dict[str, Any]:
    store, pool, size, node = _config(args)
    try:
        with IPAM_LOCK:
            ip = allocate(store, pool, size, node, _handle(args))
    except StoreError as exc:
        raise _unavailable(exc) from None
    result = {"cniVersion": args.version, "ips": [{"address": f"{ip}/32"}],
              "routes": [], "dns": {}}
    return convert_result(result, args.version)


def delete(args: Args) -> None:
    store, _pool, _size, node = _config(args)
    try:
        with IPAM_LOCK:
            release(store, node, _handle(args))
    except StoreError as exc:
        raise _unavailable(exc) from None


def check(args: Args) -> None:
    store, _pool, _size, node = _config(args)
    try:
        found = any(h == _handle(args) for b in store.node_blocks(node)
                    for h in b["allocations"].values())
    except StoreError as exc:
        raise _unavailable(exc) from None
    if not found:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: no address for {_handle(args)}")


def _free_address(store: BlockStore, pool: str, size: int, node: str) -> bool:
    """Could ``allocate`` hand out an address now: a free one in the node's blocks, or a
    block of the pool nobody has claimed?"""
    for b in store.node_blocks(node):
        if any(ip not in b["allocations"] for ip in _usable(b, pool)):
            return True
    taken = set(store.affinities())
    return any(net not in taken for net in _subnets(pool, size))


def status(args: Args) -> None:
    """Ready when the datastore is usable and an address can be handed out."""
    store, pool, size, node = _config(args)
    try:
        free = _free_address(store, pool, size, node)
    except StoreError as exc:
        raise _unavailable(exc) from None
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"calico-ipam: {exc}") from None
    if not free:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"calico-ipam: pool {pool} has no free address "
                       f"for {node}", "every block of the node is full and none is unclaimed")


def gc(args: Args) -> None:
    """Release the node's pod allocations whose container is no valid attachment.

    Only this network's pod handles (``<network>.<containerID>``) are candidates: the
    tunnel addresses the data plane allocates (``vxlan-tunnel-addr-<node>``) are no
    attachment, as Calico's GC leaves its tunnel handles alone. Blocks keep their
    affinity (as DEL)."""
    store, _pool, _size, node = _config(args)
    net = f"{args.conf.get('name', 'k8s-pod-network')}."
    valid = {net + cid for cid, _ifname in args.valid_attachments()}
    try:
        for _ in range(RETRIES):
            lost = False
            for b in store.node_blocks(node):
                stale = [ip for ip, h in b["allocations"].items()
                         if h.startswith(net) and h not in valid]
                if not stale:
                    continue
                ops = [delete_op(handle_key(b["allocations"].pop(ip))) for ip in stale]
                lost = lost or not store.write(b, also=ops)
            if not lost:
                return
    except StoreError as exc:
        raise _unavailable(exc) from None


def main() -> None:
    plugin_main(add, delete, check, status, gc)
