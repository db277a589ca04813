"""host-local IPAM as an executable: allocation order, persistence, release, exhaustion,
idempotent DEL, CHECK and GC (no namespaces needed: IPAM only touches its store)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from knetlab.cni.runtime import KNETLAB_PLUGINS
from knetlab.store import Store

PLUGIN = str(Path(KNETLAB_PLUGINS) / "host-local")


def ipam(tmp_path: Path, command: str, cid: str, subnet: str = "10.9.0.0/29",
         extra: dict | None = None) -> tuple[int, dict]:
    conf = {"cniVersion": "1.0.0", "name": "testnet",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "dataDir": str(tmp_path)}, **(extra or {})}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": KNETLAB_PLUGINS, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([PLUGIN], input=json.dumps(conf), env=env, capture_output=True,
                       text=True)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def test_allocates_in_order_skipping_gateway(tmp_path: Path) -> None:
    ips = [ipam(tmp_path, "ADD", f"c{i}")[1]["ips"][0] for i in range(3)]
    assert [ip["address"] for ip in ips] == ["10.9.0.2/29", "10.9.0.3/29", "10.9.0.4/29"]
    assert ips[0]["gateway"] == "10.9.0.1"


def test_add_is_idempotent_and_persistent(tmp_path: Path) -> None:
    first = ipam(tmp_path, "ADD", "c1")[1]
    again = ipam(tmp_path, "ADD", "c1")[1]
    assert first["ips"] == again["ips"]
    assert (tmp_path / "testnet" / "10.9.0.2").read_text() == "c1\neth0"


def test_release_then_no_immediate_reuse(tmp_path: Path) -> None:
    ipam(tmp_path, "ADD", "c1")
    ipam(tmp_path, "ADD", "c2")
    assert ipam(tmp_path, "DEL", "c1")[0] == 0
    assert ipam(tmp_path, "DEL", "c1")[0] == 0  # DEL of what is gone succeeds
    third = ipam(tmp_path, "ADD", "c3")[1]["ips"][0]["address"]
    assert third == "10.9.0.4/29"  # continues after the last reserved, as host-local does


def test_exhaustion_is_a_plugin_error(tmp_path: Path) -> None:
    for i in range(5):  # /29: .2-.6 usable (.1 gateway, .7 broadcast)
        assert ipam(tmp_path, "ADD", f"c{i}")[0] == 0
    code, err = ipam(tmp_path, "ADD", "c-last")
    assert code == 1 and err["code"] == 100 and "no IP addresses" in err["msg"]


def test_check_and_gc(tmp_path: Path) -> None:
    ipam(tmp_path, "ADD", "keep")
    ipam(tmp_path, "ADD", "drop")
    assert ipam(tmp_path, "CHECK", "keep")[0] == 0
    code, err = ipam(tmp_path, "CHECK", "never")
    assert code == 1 and err["code"] == 7
    gc = {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    conf_version = {"cniVersion": "1.1.0"}
    assert ipam(tmp_path, "GC", "", extra={**gc, **conf_version})[0] == 0
    assert sorted(p.name for p in (tmp_path / "testnet").iterdir()
                  if p.name[0].isdigit()) == ["10.9.0.2"]


def test_old_result_versions_carry_ip_version(tmp_path: Path) -> None:
    _, res = ipam(tmp_path, "ADD", "c1", extra={"cniVersion": "0.3.1"})
    assert res["cniVersion"] == "0.3.1" and res["ips"][0]["version"] == "4"


def test_status_ready_then_exhausted(tmp_path: Path) -> None:
    v11 = {"cniVersion": "1.1.0"}
    assert ipam(tmp_path, "STATUS", "", extra=v11) == (0, {})
    for i in range(5):
        ipam(tmp_path, "ADD", f"c{i}")
    code, err = ipam(tmp_path, "STATUS", "", extra=v11)
    assert code == 1 and err["code"] == 50 and "no free address" in err["msg"]
    ipam(tmp_path, "DEL", "c0")
    assert ipam(tmp_path, "STATUS", "", extra=v11)[0] == 0


def test_status_and_gc_need_spec_1_1(tmp_path: Path) -> None:
    for command in ("STATUS", "GC"):
        code, err = ipam(tmp_path, command, "")  # the config says 1.0.0
        assert code == 1 and err["code"] == 1


def test_gc_reads_the_spec_text_key_too(tmp_path: Path) -> None:
    """Spec 1.1.0's text calls the list cni.dev/attachments (libcni sends both names)."""
    ipam(tmp_path, "ADD", "keep")
    ipam(tmp_path, "ADD", "leak")
    gc = {"cniVersion": "1.1.0",
          "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert ipam(tmp_path, "GC", "", extra=gc)[0] == 0
    assert ipam(tmp_path, "CHECK", "keep")[0] == 0
    assert ipam(tmp_path, "CHECK", "leak")[0] == 1


CALICO_IPAM = str(Path(KNETLAB_PLUGINS) / "calico-ipam")


def calico_ipam(store: Store, command: str, cid: str, pool: str = "10.8.0.0/28",
                extra: dict | None = None) -> tuple[int, dict]:
    conf = {"cniVersion": "1.1.0", "name": "calico", **store.conf(), "nodename": "node-1",
            "ipam": {"type": "calico-ipam", "ipv4_pools": [pool], "blockSize": 30},
            **(extra or {})}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": KNETLAB_PLUGINS, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([CALICO_IPAM], input=json.dumps(conf), env=env, capture_output=True,
                       text=True)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def test_calico_ipam_gc_releases_leaks_keeps_valid_and_tunnels(etcd_store: Store) -> None:
    from knetlab.cni.plugins.calico_ipam import BlockStore, allocate, node_blocks
    keep = calico_ipam(etcd_store, "ADD", "keep")[1]["ips"][0]["address"]
    calico_ipam(etcd_store, "ADD", "leak1")
    calico_ipam(etcd_store, "ADD", "leak2")  # a second block: /30 blocks hold 4 addresses
    store = BlockStore(etcd_store)
    tunnel = allocate(store, "10.8.0.0/28", 30, "node-1", "vxlan-tunnel-addr-node-1")
    gc = {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert calico_ipam(etcd_store, "GC", "", extra=gc) == (0, {})
    left = {ip: h for b in node_blocks(store, "node-1") for ip, h in b["allocations"].items()}
    assert left == {keep.split("/")[0]: "calico.keep", tunnel: "vxlan-tunnel-addr-node-1"}


def test_calico_ipam_status_says_when_the_pool_is_full(etcd_store: Store) -> None:
    assert calico_ipam(etcd_store, "STATUS", "", pool="10.8.0.0/29") == (0, {})
    # a /29 pool of /30 blocks: 6 usable (the pool's network and broadcast excluded)
    assert all(calico_ipam(etcd_store, "ADD", f"c{i}", pool="10.8.0.0/29")[0] == 0
               for i in range(6))
    code, err = calico_ipam(etcd_store, "STATUS", "", pool="10.8.0.0/29")
    assert code == 1 and err["code"] == 50 and "no free address" in err["msg"]


def test_calico_plugin_delegates_status_and_gc(etcd_store: Store) -> None:
    """STATUS and GC to the calico plugin reach its IPAM (spec: delegates get both)."""
    calico_ipam(etcd_store, "ADD", "leak", pool="10.8.0.0/30")
    conf = {"cniVersion": "1.1.0", "name": "calico", "type": "calico", **etcd_store.conf(),
            "nodename": "node-1",
            "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.8.0.0/30"], "blockSize": 30}}
    env = {"CNI_PATH": KNETLAB_PLUGINS, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}

    def run(command: str) -> tuple[int, str]:
        p = subprocess.run([str(Path(KNETLAB_PLUGINS) / "calico")], input=json.dumps(conf),
                           env={**env, "CNI_COMMAND": command}, capture_output=True, text=True)
        return p.returncode, p.stdout
    calico_ipam(etcd_store, "ADD", "other", pool="10.8.0.0/30")  # the /30's 2nd and last
    code, out = run("STATUS")
    assert code == 1 and json.loads(out)["code"] == 50
    assert run("GC") == (0, "")
    assert run("STATUS") == (0, "")
