"""calico-ipam blocks: claims in a real etcd (unit), and a whole lab where a node
with more pods than a block claims a second one, announces both (aggregated), blackholes
them, and every pod is reachable."""

from __future__ import annotations

import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knetlab.bgp.blocks import aggregate
from knetlab.cni.plugins.calico_ipam import BlockStore, allocate, node_blocks, release
from knetlab.errors import ConfigError
from knetlab.store import Store
from knetlab.topologies.schema import load_topology
from tests.conftest import needs_root, poll, write_topology

POOL = "10.244.0.0/16"


def test_blocks_claimed_per_node_and_more_when_full(etcd_store: Store) -> None:
    s = BlockStore(etcd_store)
    ips = [allocate(s, POOL, 30, "node-1", f"net.c{i}") for i in range(5)]
    other = allocate(s, POOL, 30, "node-2", "net.x")
    assert allocate(s, POOL, 30, "node-1", "net.c0") == ips[0]  # idempotent
    mine = sorted(b["cidr"] for b in node_blocks(s, "node-1"))
    # .0 is the pool's network address: the first /30 gives 3, the next one 4
    assert ips[0] == "10.244.0.1" and mine == ["10.244.0.0/30", "10.244.0.4/30"]
    assert other == "10.244.0.8"  # node-2 got a block of its own
    assert aggregate(mine) == ["10.244.0.0/29"]
    assert release(s, "node-1", "net.c4") == ips[4]
    assert allocate(s, POOL, 30, "node-1", "net.c9") == ips[4]  # reused, no new block
    assert etcd_store.get("/calico/ipam/v2/handle/net.c9") == {
        "handleID": "net.c9", "block": {"10.244.0.4/30": 1}, "deleted": False}
    assert etcd_store.get("/calico/ipam/v2/handle/net.c4") is None


def test_claims_are_atomic_across_racing_nodes(etcd_store: Store) -> None:
    def one(node: str) -> str:  # each its own connection, as separate plugins
        return allocate(BlockStore(Store.from_conf(etcd_store.conf())), POOL, 26, node,
                        "net.p")

    with ThreadPoolExecutor(8) as pool:
        ips = list(pool.map(one, [f"node-{i}" for i in range(16)]))
    blocks = BlockStore(etcd_store).blocks()
    assert len(ips) == len(set(ips)) == 16
    assert len({b["cidr"] for b in blocks}) == len(blocks) == 16


def test_block_size_range_is_validated(tmp_path: Path) -> None:
    topo = write_topology(tmp_path, "name: cb-bad\ndataplane: calico-bgp\n"
                          "bgp: {blockSize: 33}\nnodes: {count: 1}\n")
    with pytest.raises(ConfigError, match="blockSize"):
        load_topology(topo)


TOPO = """name: {name}
dataplane: {plane}
{section}: {{blockSize: 29}}
underlay: {{type: segment, cidr: 192.168.0.0/24}}
nodes: {{count: 2}}
pods: {{perNode: 1}}
"""


def crowded_lab(lab, tmp_path: Path, name: str, plane: str, section: str):  # noqa: ANN001, ANN201
    """2 nodes, /29 blocks, 9 pods on node-1: more than a /29 holds, so it claims more."""
    c = lab(write_topology(tmp_path, TOPO.format(name=name, plane=plane, section=section)))
    for i in range(1, 9):
        c.add_pod(f"extra-{i}", "node-1")
    blocks = [b["cidr"] for b in node_blocks(c.backend.block_store(), "node-1")]
    assert len(blocks) >= 2, blocks
    return c, aggregate(blocks)


@pytest.mark.e2e
@needs_root
def test_second_block_announced_blackholed_and_reachable(tmp_path: Path, lab) -> None:  # noqa: ANN001
    c, blocks = crowded_lab(lab, tmp_path, "cb-ipam", "calico-bgp", "bgp")
    announced = c.backend.blocks("node-1")
    assert announced == blocks
    node1 = c.node("node-1")

    def blackholes() -> set[str]:
        out = node1.run(["ip", "-j", "route", "show", "type", "blackhole"]).stdout
        return {r["dst"] for r in json.loads(out or "[]")}

    # the installer's block watcher follows the store (level-triggered, not synchronous)
    poll(lambda: blackholes() == set(announced), 5.0, f"blackholes {announced} on node-1")
    assert c.backend.wait_converged(5.0)
    node2 = c.node("node-2")
    learned = json.loads(node2.run(["ip", "-j", "route", "show", "proto", "bird"]).stdout)
    assert set(announced) <= {r["dst"] for r in learned if r.get("type") != "blackhole"}
    far = c.pod("extra-8")
    assert c.pod("pod-2-0").run(["ping", "-c1", "-W2", far.ip], check=False).returncode == 0
    assert c.check().ok


@pytest.mark.e2e
@needs_root
def test_vxlan_mode_routes_every_block_through_the_tunnel(tmp_path: Path, lab) -> None:  # noqa: ANN001
    c, blocks = crowded_lab(lab, tmp_path, "cv-ipam", "calico-vxlan", "vxlan")
    node2 = c.node("node-2")

    def routes() -> dict[str, str]:
        out = node2.run(["ip", "-j", "route", "show", "dev", "vxlan.calico"]).stdout
        return {r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")}

    # the store watcher (Felix's part) programs node-2 for node-1's new block
    poll(lambda: set(blocks) <= set(routes()), 5.0, f"{blocks} via vxlan.calico on node-2")
    vtep = routes()[blocks[0]]
    assert any(ipaddress.ip_address(vtep) in ipaddress.ip_network(b) for b in blocks)
    own = node2.run(["ip", "-j", "route", "show", "type", "blackhole"]).stdout
    assert {r["dst"] for r in json.loads(own)} == set(c.backend.all_blocks()["node-2"])
    far = c.pod("extra-8")
    assert c.pod("pod-2-0").run(["ping", "-c1", "-W2", far.ip], check=False).returncode == 0
    assert c.check().ok


@pytest.mark.parametrize(("section", "field", "match"), [
    ("vxlan: {pool: 10.244.0.0/33}", "pool", "not an IPv4 network"),
    ("vxlan: {blockSize: 12}", "blockSize", "blockSize"),
    ("bgp: {ipipMode: Sometimes}", "ipipMode", "ipipMode"),  # calico-bgp has no IPIP
])
def test_calico_options_are_validated(tmp_path: Path, section: str, field: str,
                                      match: str) -> None:
    plane = "calico-vxlan" if section.startswith("vxlan") else "calico-bgp"
    topo = write_topology(tmp_path, f"name: cb-bad\ndataplane: {plane}\n{section}\n"
                          "nodes: {count: 1}\n")
    with pytest.raises(ConfigError, match=match) as err:
        load_topology(topo)
    assert field in str(err.value) and "topo.yaml" in str(err.value)
