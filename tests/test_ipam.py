"""host-local IPAM as an executable: allocation order, persistence, release, exhaustion,
idempotent DEL, CHECK and GC (no namespaces needed: IPAM only touches its store)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from knetlab.cni.runtime import KNETLAB_PLUGINS

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
