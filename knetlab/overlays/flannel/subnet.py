"""flannel's subnet manager over the lab store: the network config and one lease per node.

Keys mirror flannel's etcd layout: ``flannel/config`` holds the network config and
``flannel/subnets/10.244.1.0-24`` a node's lease (PublicIP, BackendType, BackendData such
as the VTEP MAC), with a TTL the node's agent renews while it lives. A node's lease is its
pod CIDR (the foundation's ``node.spec.pod_cidr``), so the rest of knetlab stays right.
Stdlib only: the agent and the UDP forwarder import this in their own processes.
"""

from __future__ import annotations

import time
from typing import Any

from knetlab.store import Store

CONFIG_KEY = "flannel/config"
SUBNETS = "flannel/subnets"
LEASE_TTL = 60.0  # seconds; flannel's is 24 h, shorter here so a dead node's lease goes
RENEW_EVERY = LEASE_TTL / 6


class LeaseTakenError(Exception):
    pass


def lease_key(subnet: str) -> str:
    return f"{SUBNETS}/{subnet.replace('/', '-')}"


def put_config(store: Store, config: dict[str, Any]) -> None:
    store.put(CONFIG_KEY, config)


def get_config(store: Store) -> dict[str, Any]:
    config = store.get(CONFIG_KEY)
    if config is None:
        raise RuntimeError(f"no flannel network config at {CONFIG_KEY} in {store.root}")
    return config


def acquire(store: Store, node: str, subnet: str, public_ip: str, btype: str,
            data: dict[str, Any]) -> dict[str, Any]:
    """Claim (or renew our own) lease on ``subnet``; LeaseTakenError if another node has it."""
    lease = {"subnet": subnet, "node": node, "PublicIP": public_ip, "BackendType": btype,
             "BackendData": data}
    key = lease_key(subnet)
    if store.create(key, lease, ttl=LEASE_TTL):
        return lease
    current = store.get(key)
    if current is not None and current.get("node") != node:
        raise LeaseTakenError(f"subnet {subnet} is leased to {current.get('node')}")
    renew(store, lease)
    return lease


def renew(store: Store, lease: dict[str, Any]) -> None:
    """Extend the lease's TTL by another LEASE_TTL. A keep-alive makes no new revision, so
    100 agents renewing do not wake each other; a lease that had expired is re-created."""
    if not store.refresh(lease_key(lease["subnet"]), LEASE_TTL):
        store.put(lease_key(lease["subnet"]),
                  {k: v for k, v in lease.items() if k != "expires"}, ttl=LEASE_TTL)


def release(store: Store, subnet: str) -> None:
    store.delete(lease_key(subnet))


def leases(store: Store) -> list[dict[str, Any]]:
    """Every live lease, ordered by subnet."""
    return sorted(store.list(SUBNETS).values(), key=lambda v: _sort_key(v["subnet"]))


def _sort_key(subnet: str) -> tuple[int, ...]:
    return tuple(int(p) for p in subnet.split("/")[0].split("."))


def remaining(lease: dict[str, Any]) -> float:
    return max(0.0, lease.get("expires", time.time()) - time.time())
