"""The CNI protocol, end to end with real namespaces: ADD/CHECK/DEL/VERSION through the
runtime, every spec error code path, chaining with prevResult, the reference plugins."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root

from knetlab.cni.runtime import KNETLAB_PLUGINS, REFERENCE_PLUGINS, CNIRuntime
from knetlab.cni.types import CNIError

pytestmark = needs_root


@pytest.fixture
def netns() -> Iterator[object]:
    """Factory of throwaway named namespaces (kl-prefixed), always removed."""
    made: list[str] = []

    def make() -> str:
        name = f"klt{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return f"/var/run/netns/{name}"

    yield make
    for path in made:
        subprocess.run(["ip", "netns", "del", os.path.basename(path)], check=False)


def conf_list(tmp_path: Path, plugins: list[dict] | None = None, version: str = "1.0.0") -> dict:
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
                       "dataDir": str(tmp_path / "ipam")}}
    return {"cniVersion": version, "name": "t", "plugins": [bridge, *(plugins or [])]}


def in_ns(path: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", "--", *argv], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.parametrize("plugins", ["knetlab", "reference"])
def test_add_check_del(tmp_path: Path, netns: object, plugins: str) -> None:
    if plugins == "reference" and not Path(REFERENCE_PLUGINS, "bridge").exists():
        pytest.skip("containernetworking-plugins not installed")
    node, pod = netns(), netns()
    path = KNETLAB_PLUGINS if plugins == "knetlab" else REFERENCE_PLUGINS
    rt = CNIRuntime(conf_list(tmp_path), [path], tmp_path / "cache", plugin_netns=node)
    result = rt.add("c1", pod, "eth0")
    assert result["ips"][0]["address"] == "10.77.0.2/24"
    assert result["interfaces"][result["ips"][0]["interface"]]["sandbox"] == pod
    assert "inet 10.77.0.2/24" in in_ns(pod, "ip", "-4", "addr", "show", "eth0")
    assert "default via 10.77.0.1" in in_ns(pod, "ip", "route")
    # a real packet: the pod pings its gateway on the node's bridge
    in_ns(pod, "ping", "-c1", "-W2", "10.77.0.1")
    rt.check("c1", pod, "eth0")
    rt.delete("c1", pod, "eth0")
    assert "eth0" not in in_ns(pod, "ip", "link")
    rt.delete("c1", pod, "eth0")  # DEL twice is fine
    with pytest.raises(CNIError):
        rt.check("c1", pod, "eth0")  # nothing cached any more


def test_check_detects_missing_address(tmp_path: Path, netns: object) -> None:
    node, pod = netns(), netns()
    rt = CNIRuntime(conf_list(tmp_path), [KNETLAB_PLUGINS], tmp_path / "cache", node)
    rt.add("c1", pod)
    in_ns(pod, "ip", "addr", "flush", "dev", "eth0")
    with pytest.raises(CNIError, match="lacks 10.77.0.2/24"):
        rt.check("c1", pod)


def test_version() -> None:
    rt = CNIRuntime(conf_list(Path("/tmp")), [KNETLAB_PLUGINS], Path("/tmp/unused"))
    out = rt.version("bridge")
    assert "1.0.0" in out["supportedVersions"] and out["cniVersion"] == "1.1.0"


def raw(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, dict]:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": KNETLAB_PLUGINS}
    p = subprocess.run([str(Path(KNETLAB_PLUGINS) / plugin)], input=stdin, capture_output=True,
                       text=True, env={**base, **env})
    return p.returncode, json.loads(p.stdout)


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0"}


@pytest.mark.parametrize("env,stdin,code", [
    (ADD_ENV, '{"cniVersion": "9.9.9", "name": "n", "ipam": {"type": "host-local"}}', 1),
    ({"CNI_COMMAND": "ADD"}, '{"cniVersion": "1.0.0", "name": "n"}', 4),
    ({**ADD_ENV, "CNI_COMMAND": "FROB"}, "{}", 4),
    (ADD_ENV, "not json", 6),
    (ADD_ENV, '{"cniVersion": "1.0.0", "name": "n"}', 7),
    (ADD_ENV, '{"name": "n", "ipam": {"type": "host-local"}}', 7),
])
def test_error_codes(env: dict[str, str], stdin: str, code: int) -> None:
    rc, err = raw("bridge", env, stdin)
    assert rc == 1 and err["code"] == code and err["msg"]


def test_missing_plugin_is_reported(tmp_path: Path) -> None:
    conf = conf_list(tmp_path, [{"type": "no-such-plugin"}])
    rt = CNIRuntime(conf, [KNETLAB_PLUGINS], tmp_path / "cache")
    with pytest.raises(CNIError, match="failed to find plugin"):
        rt.version("no-such-plugin")


def test_chain_passes_prev_result_and_dels_in_reverse(tmp_path: Path, netns: object) -> None:
    """A second plugin in the list gets the bridge's result as prevResult and must return it
    (here with DNS added); DEL runs the list backwards."""
    log = tmp_path / "order.log"
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    chained = plugdir / "stamp"
    chained.write_text(f"""#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
with open({str(log)!r}, "a") as f:
    f.write(os.environ["CNI_COMMAND"] + " stamp " + str("prevResult" in conf) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    res = conf["prevResult"]; res["dns"] = {{"nameservers": ["10.96.0.10"]}}
    print(json.dumps(res))
""")
    chained.chmod(0o755)
    node, pod = netns(), netns()
    rt = CNIRuntime(conf_list(tmp_path, [{"type": "stamp"}]), [KNETLAB_PLUGINS, str(plugdir)],
                    tmp_path / "cache", node)
    result = rt.add("c1", pod)
    assert result["dns"] == {"nameservers": ["10.96.0.10"]}
    assert result["ips"][0]["address"] == "10.77.0.2/24"
    rt.delete("c1", pod)
    assert log.read_text().splitlines() == ["ADD stamp True", "DEL stamp True"]
    assert "eth0" not in in_ns(pod, "ip", "link")  # bridge DEL ran after stamp's


def test_plugin_json_matches_json() -> None:
    from knetlab.cni.types import dumps, loads
    doc = {"a": [1, -2.5, None, True, False, "é\n\"x\""], "b": {"c": {}}, "d": 1e300}
    assert loads(json.dumps(doc)) == doc and loads(" \n" + json.dumps(doc) + "\n") == doc
    assert dumps(doc) == json.dumps(doc)
    for bad in ("", "not json", '{"a": 1} x', "{", '{"a": }'):
        with pytest.raises(ValueError):
            loads(bad)


def test_ipam_in_process_answers_as_its_executable(tmp_path: Path) -> None:
    """bridge runs knetlab's host-local in its own process: same errors as exec'ing it."""
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-cidr"}]],
                     "dataDir": str(tmp_path / "ipam")}}
    rc_b, err_b = raw("bridge", ADD_ENV, json.dumps(conf))
    rc_h, err_h = raw("host-local", ADD_ENV, json.dumps(conf))
    assert rc_b == rc_h == 1 and err_b == err_h and err_b["code"] == 7


def reserved(tmp_path: Path) -> set[str]:
    """host-local's reservations of network "t": one file per address."""
    return {p.name for p in (tmp_path / "ipam" / "t").iterdir() if p.name[0].isdigit()}


def test_status_and_gc_through_the_runtime(tmp_path: Path, netns: object) -> None:
    """GCNetworkList: the cached attachment that is no longer valid is DEL'd (its veth goes),
    a reservation no cache knows (a leak) is released by the plugins' GC, the valid pod
    keeps its address and its connectivity."""
    node, pod1, pod2 = netns(), netns(), netns()
    rt = CNIRuntime(conf_list(tmp_path, version="1.1.0"), [KNETLAB_PLUGINS], tmp_path / "cache",
                    node)
    rt.status()
    rt.add("c1", pod1)
    rt.add("c2", pod2)
    leak = {**ADD_ENV, "CNI_CONTAINERID": "leaked", "CNI_PATH": KNETLAB_PLUGINS}
    ipam_conf = {"cniVersion": "1.1.0", "name": "t",
                 "ipam": conf_list(tmp_path)["plugins"][0]["ipam"]}
    rc, out = raw("host-local", leak, json.dumps(ipam_conf))
    assert rc == 0
    assert reserved(tmp_path) == {"10.77.0.2", "10.77.0.3", out["ips"][0]["address"][:-3]}
    assert [a["containerId"] for a in rt.attachments()] == ["c1", "c2"]
    rt.gc([("c1", "eth0")])
    assert reserved(tmp_path) == {"10.77.0.2"}
    assert [a["containerId"] for a in rt.attachments()] == ["c1"]
    assert "eth0" not in in_ns(pod2, "ip", "link")
    in_ns(pod1, "ping", "-c1", "-W2", "10.77.0.1")
    rt.check("c1", pod1)
    rt.gc([])
    assert reserved(tmp_path) == set() and rt.attachments() == []


def test_status_reports_a_bridge_name_taken(tmp_path: Path, netns: object) -> None:
    node = netns()
    in_ns(node, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p")
    rt = CNIRuntime(conf_list(tmp_path, version="1.1.0"), [KNETLAB_PLUGINS], tmp_path / "cache",
                    node)
    with pytest.raises(CNIError) as err:
        rt.status()
    assert err.value.code == 50 and "not a bridge" in err.value.msg


def test_status_is_ready_before_spec_1_1(tmp_path: Path, netns: object) -> None:
    """A 1.0.0 network has no STATUS: libcni takes it as ready without running a plugin."""
    node = netns()
    in_ns(node, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p")
    CNIRuntime(conf_list(tmp_path), [KNETLAB_PLUGINS], tmp_path / "cache", node).status()

