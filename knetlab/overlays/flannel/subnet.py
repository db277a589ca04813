"""flannel's subnet manager over the lab's etcd: the network config and one lease per node.

The keys and values are flanneld's own (its etcd subnet manager, ``--etcd-prefix
/coreos.com/network``): ``/coreos.com/network/config`` holds the network config
(``Network``, ``SubnetLen``, ``Backend``) and ``/coreos.com/network/subnets/10.244.1.0-24``
a node's lease (``PublicIP``, ``BackendType``, ``BackendData`` such as the VTEP MAC),
attached to an etcd lease with a TTL that the node's agent keeps alive while it lives:
when the agent dies the lease expires and etcd deletes the key, which releases the
subnet. A node's lease is its pod CIDR (the foundation's ``node.spec.pod_cidr``), so the
rest of knetlab stays right. Stdlib only: the agent and the UDP forwarder import this.
"""

from __future__ import annotations

from typing import Any

from knetlab.store import Store

PREFIX = "/coreos.com/network"
CONFIG_KEY = f"{PREFIX}/config"
SUBNETS = f"{PREFIX}/subnets/"
LEASE_TTL = 60.0  # seconds; flannel's is 24 h, shorter here so a dead node's lease goes
RENEW_EVERY = LEASE_TTL / 6


class LeaseTakenError(Exception):
    pass


def lease_key(subnet: str) -> str:
    return SUBNETS + subnet.replace("/", "-")


def put_config(store: Store, config: dict[str, Any]) -> None:
    store.put(CONFIG_KEY, config)


def get_config(store: Store) -> dict[str, Any]:
    config = store.get(CONFIG_KEY)
    if config is None:
        raise RuntimeError(f"no flannel network config at {CONFIG_KEY} in {store.endpoint}")
    return config


def acquire(store: Store, subnet: str, public_ip: str, btype: str,
            data: dict[str, Any]) -> dict[str, Any]:
    """Claim ``subnet`` under a new etcd lease, or take over our own (same PublicIP, as
    flanneld reuses its lease after a restart); LeaseTakenError if another node has it.
    The returned lease carries its etcd lease ID under ``lease``."""
    attrs = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": btype,
             "BackendData": data}
    key = lease_key(subnet)
    for _ in range(10):
        lease_id = store.grant(LEASE_TTL)
        if store.create(key, attrs, lease=lease_id):
            return {"subnet": subnet, **attrs, "lease": lease_id}
        current, rev = store.get_kv(key)
        if current is not None and current.get("PublicIP") != public_ip:
            store.revoke(lease_id)
            raise LeaseTakenError(f"subnet {subnet} is leased to {current.get('PublicIP')}")
        if current is not None and store.put_if(key, attrs, rev, lease=lease_id):
            return {"subnet": subnet, **attrs, "lease": lease_id}
        store.revoke(lease_id)  # it changed (or went) under us: again
    raise LeaseTakenError(f"subnet {subnet}: lost every race to claim it")


def renew(store: Store, lease: dict[str, Any]) -> dict[str, Any]:
    """Keep the lease alive (no new revision: 100 agents renewing wake nobody); a lease
    that expired (the agent was stopped too long) is acquired again. The lease now."""
    if store.keepalive(lease["lease"]) > 0 and store.get(lease_key(lease["subnet"])):
        return lease
    return acquire(store, lease["subnet"], lease["PublicIP"], lease["BackendType"],
                   lease["BackendData"])


def release(store: Store, subnet: str) -> None:
    """Give the subnet back (its etcd lease too, if it has one)."""
    _, kvs = store.range(lease_key(subnet))
    for _k, _v, _rev, lease_id in kvs:
        if lease_id:
            store.revoke(lease_id)
    store.delete(lease_key(subnet))


def leases(store: Store, with_ttl: bool = False) -> list[dict[str, Any]]:
    """Every live lease, ordered by subnet: flanneld's attributes plus ``subnet`` (from
    the key), ``lease`` (the etcd lease ID) and, if asked, ``ttl`` (seconds left)."""
    return read_leases(store, with_ttl)[1]


def read_leases(store: Store, with_ttl: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """(revision of the read, the leases): watch from that revision on."""
    rev, kvs = store.range(SUBNETS, prefix=True)
    out = []
    for key, value, _mod, lease_id in kvs:
        lease = {"subnet": key[len(SUBNETS):].replace("-", "/"), **value, "lease": lease_id}
        if with_ttl:
            lease["ttl"] = store.time_to_live(lease_id) if lease_id else -1
        out.append(lease)
    return rev, sorted(out, key=lambda v: _sort_key(v["subnet"]))


def _sort_key(subnet: str) -> tuple[int, ...]:
    return tuple(int(p) for p in subnet.split("/")[0].split("."))

