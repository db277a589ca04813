"""`down` runs CNI DEL for every pod before the namespaces go: the IPAM state of each pod
(host-local's one file per address, calico-ipam's allocations in its blocks) is released
while the lab still exists, as a kubelet releases it."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from knetlab.cluster import Cluster
from knetlab.cni.plugins.calico_ipam import BlockStore
from knetlab.nodes.host import NetnsHost
from knetlab.store import Store
from tests.conftest import needs_root, write_topology

pytestmark = [pytest.mark.e2e, needs_root]

LAB = """\
name: {name}
dataplane: {dataplane}
kubernetes: false
underlay:
  type: segment
  cidr: 192.168.0.0/24
nodes:
  count: 2
pods:
  perNode: 2
"""


def host_local_ips(ipam_dirs: list[Path]) -> set[str]:
    """host-local's reservations: one file named by the address."""
    out = set()
    for d in ipam_dirs:
        for f in d.rglob("*"):
            try:
                out.add(str(ipaddress.IPv4Address(f.name)))
            except ValueError:
                continue  # its lock and last_reserved_ip files
    return out


def calico_handles(store: Store) -> set[str]:
    return {h for b in BlockStore(store).blocks() for h in b["allocations"].values()}


def down_seen(c: Cluster, monkeypatch: pytest.MonkeyPatch, look: Any) -> Any:
    """Take the lab down; return what ``look()`` saw when the first namespace went."""
    seen: list[Any] = []
    terminate = NetnsHost.terminate

    def spy(host: NetnsHost) -> None:
        if not seen:
            seen.append(look())
        terminate(host)

    monkeypatch.setattr(NetnsHost, "terminate", spy)
    c.down()
    assert seen, "no namespace was removed"
    return seen[0]


def test_down_releases_host_local_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    c = Cluster.load(write_topology(tmp_path, LAB.format(name="down-hl", dataplane="host-gw")))
    try:
        c.up()
        dirs = [n.dir / "ipam" for n in c.k8s_nodes()]
        assert host_local_ips(dirs) == {p.ip for p in c.pods.values()}
    except BaseException:
        c.down()
        raise
    assert down_seen(c, monkeypatch, lambda: host_local_ips(dirs)) == set()


def test_down_releases_calico_allocations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    topo = LAB.format(name="down-ca", dataplane="calico-bgp") + "bgp:\n  mode: mesh\n"
    c = Cluster.load(write_topology(tmp_path, topo))
    try:
        c.up()
        assert c.store is not None
        store = c.store
        pods = {p.container_id for p in c.pods.values()}
        # Calico's handles: k8s-pod-network.<container ID>
        assert {h.partition(".")[2] for h in calico_handles(store)} == pods
    except BaseException:
        c.down()
        raise
    assert down_seen(c, monkeypatch, lambda: calico_handles(store)) == set()
