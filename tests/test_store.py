"""The lab's store is its etcd (knetlab/store.py): atomic claims raced by real processes,
lease expiry as release, prefix watches, and the keys flanneld and Calico use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from knetlab.cni.plugins.calico_ipam import BlockStore, allocate
from knetlab.cni.runtime import KNETLAB_PLUGINS
from knetlab.overlays.flannel import subnet
from knetlab.store import Store
from tests.conftest import poll

ROOT = Path(__file__).resolve().parent.parent
RACERS = 8

CLAIM = """
import json, sys
from knetlab.store import Store
s = Store.from_conf(json.loads(sys.argv[1]))
sys.stdin.read()  # the start gun: every racer is connected and waiting
print("won" if s.create("/race/key", {"by": sys.argv[2]}) else "lost")
"""


def racers(store: Store, code: str, n: int) -> list[str]:
    """Run ``n`` processes of ``code`` that start together; their outputs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-S", "-c", code, json.dumps(store.conf()),
                               str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for i in range(n)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    out = []
    for p in procs:
        assert p.stdout is not None
        out.append(p.stdout.read().strip())
        assert p.wait(timeout=60) == 0
    return out


def test_a_claim_has_exactly_one_winner_among_racing_processes(etcd_store: Store) -> None:
    results = racers(etcd_store, CLAIM, RACERS)
    assert sorted(results) == ["lost"] * (RACERS - 1) + ["won"], results
    winner = results.index("won")
    assert etcd_store.get("/race/key") == {"by": str(winner)}


def test_racing_calico_ipam_plugins_never_share_an_address_or_block(
        etcd_store: Store) -> None:
    """Real calico-ipam processes of 3 nodes, 8 ADDs each, all at once: /29 blocks fill up
    and get claimed while the others claim too."""
    plugin = str(Path(KNETLAB_PLUGINS) / "calico-ipam")

    def add(node: str, cid: str) -> subprocess.Popen[str]:
        conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", **etcd_store.conf(),
                "nodename": node, "ipam": {"type": "calico-ipam",
                                           "ipv4_pools": ["10.50.0.0/24"], "blockSize": 29}}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
               "CNI_IFNAME": "eth0", "CNI_PATH": KNETLAB_PLUGINS, "PATH": "/usr/bin:/bin"}
        p = subprocess.Popen([plugin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
        assert p.stdin is not None
        p.stdin.write(json.dumps(conf))
        p.stdin.close()
        return p

    procs = {(n, c): add(f"node-{n}", f"c{n}-{c}") for n in range(3) for c in range(8)}
    ips = {}
    for key, p in procs.items():
        assert p.stdout is not None
        out = p.stdout.read()
        assert p.wait(timeout=120) == 0, out
        ips[key] = json.loads(out)["ips"][0]["address"].split("/")[0]
    assert len(set(ips.values())) == len(ips) == 24
    blocks = BlockStore(etcd_store).blocks()
    owners = {b["cidr"]: b["node"] for b in blocks}
    assert len(owners) == len(blocks)  # one record per block
    for (n, _c), ip in ips.items():  # each address from a block of its own node
        block = next(b for b in blocks if ip in b["allocations"])
        assert block["node"] == f"node-{n}"
    affinities = BlockStore(etcd_store).affinities()
    assert affinities == owners  # /calico/ipam/v2/host/<node>/ipv4/block/<cidr>


def test_calico_keys_are_laid_out_as_calicos_etcd_datastore(etcd_store: Store) -> None:
    store = BlockStore(etcd_store)
    ip = allocate(store, "10.60.0.0/16", 26, "node-1", "k8s-pod-network.abc")
    block = etcd_store.get("/calico/ipam/v2/assignment/ipv4/block/10.60.0.0-26")
    assert block is not None and ip == "10.60.0.1"
    assert block["cidr"] == "10.60.0.0/26" and block["affinity"] == "host:node-1"
    assert block["allocations"][1] == 0 and block["allocations"][0] is None
    assert len(block["allocations"]) == 64 and 1 not in block["unallocated"]
    assert block["attributes"] == [{"handle_id": "k8s-pod-network.abc", "secondary": None}]
    assert etcd_store.get("/calico/ipam/v2/host/node-1/ipv4/block/10.60.0.0-26") == {
        "state": "confirmed", "deleted": False}
    assert etcd_store.get("/calico/ipam/v2/handle/k8s-pod-network.abc") == {
        "handleID": "k8s-pod-network.abc", "block": {"10.60.0.0/26": 1}, "deleted": False}


def test_a_lease_expires_unless_kept_alive_and_expiry_releases_the_key(
        etcd_store: Store) -> None:
    lease = etcd_store.grant(2)
    assert etcd_store.create("/leases/a", {"x": 1}, lease=lease)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:  # past the TTL, kept alive
        assert etcd_store.keepalive(lease) == 2
        assert etcd_store.get("/leases/a") == {"x": 1}
        time.sleep(0.5)
    gone = poll(lambda: etcd_store.get("/leases/a") is None, 5.0, "the expired key goes")
    assert gone > 0.5  # it lived on after the last keep-alive, for about its TTL
    assert etcd_store.time_to_live(lease) == -1
    assert etcd_store.keepalive(lease) == 0


def test_flannel_leases_claim_renew_take_over_and_refuse(etcd_store: Store) -> None:
    subnet.put_config(etcd_store, {"Network": "10.244.0.0/16", "SubnetLen": 24,
                                   "Backend": {"Type": "vxlan", "VNI": 1}})
    mac = {"VNI": 1, "VtepMAC": "66:c0:a8:00:0b:01"}
    mine = subnet.acquire(etcd_store, "10.244.1.0/24", "192.168.0.11", "vxlan", mac)
    assert etcd_store.get("/coreos.com/network/subnets/10.244.1.0-24") == {
        "PublicIP": "192.168.0.11", "PublicIPv6": None, "BackendType": "vxlan",
        "BackendData": mac}
    assert etcd_store.get("/coreos.com/network/config")["Network"] == "10.244.0.0/16"
    try:
        subnet.acquire(etcd_store, "10.244.1.0/24", "192.168.0.12", "vxlan", mac)
        raise AssertionError("another node took a leased subnet")
    except subnet.LeaseTakenError:
        pass
    again = subnet.acquire(etcd_store, "10.244.1.0/24", "192.168.0.11", "vxlan", mac)
    assert again["lease"] != mine["lease"]  # a restarted agent takes its lease over
    assert subnet.renew(etcd_store, again) == again
    [lease] = subnet.leases(etcd_store, with_ttl=True)
    assert lease["subnet"] == "10.244.1.0/24" and 0 < lease["ttl"] <= subnet.LEASE_TTL
    etcd_store.revoke(again["lease"])  # as if it expired: the subnet is free
    assert subnet.leases(etcd_store) == []
    assert subnet.renew(etcd_store, again)["lease"] != again["lease"]  # re-acquired
    subnet.release(etcd_store, "10.244.1.0/24")
    assert subnet.leases(etcd_store) == []


def test_wait_wakes_on_a_change_under_its_prefix_only(etcd_store: Store) -> None:
    rev = etcd_store.put("/watched/a", {"v": 0})
    other = Store.from_conf(etcd_store.conf())  # a writer with its own connection
    threading.Timer(0.3, lambda: other.put("/elsewhere/b", {"v": 1})).start()
    t0 = time.monotonic()
    assert etcd_store.wait("/watched/", rev, 1.0) == rev  # the other prefix: no wake
    assert time.monotonic() - t0 >= 0.9
    threading.Timer(0.3, lambda: other.put("/watched/c", {"v": 2})).start()
    t0 = time.monotonic()
    woke = etcd_store.wait("/watched/", rev, 10.0)
    assert woke > rev and time.monotonic() - t0 < 5.0
    # A change made before the wait began is not missed (the watch starts at since + 1).
    rev = etcd_store.revision()
    other.delete("/watched/a")
    assert etcd_store.wait("/watched/", rev, 5.0) > rev
