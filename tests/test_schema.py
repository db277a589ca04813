"""Topology validation: every error names file, line, field and fix; nothing is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TOPOLOGIES, write_topology

from knetlab.errors import ConfigError
from knetlab.rundir import RunDir
from knetlab.topologies.fields import NODE_NAME_MAX, name_problem
from knetlab.topologies.schema import load_topology


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write_topology(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert str(path) in str(info.value)
    assert info.value.fix, "every error says how to fix it"
    return info.value


def test_shipped_topologies_load() -> None:
    for path in sorted(TOPOLOGIES.glob("*.yaml")):
        spec = load_topology(path)
        assert spec.nodes, path


def test_default_topology_shape() -> None:
    spec = load_topology(TOPOLOGIES / "default.yaml")
    assert (len(spec.nodes), len(spec.pods), spec.dataplane) == (3, 6, "host-gw")
    assert [n.pod_cidr for n in spec.nodes] == ["10.244.1.0/24", "10.244.2.0/24",
                                                "10.244.3.0/24"]
    assert spec.nodes[0].ip == "192.168.0.11/24"


def test_leaf_spine_addresses() -> None:
    spec = load_topology(TOPOLOGIES / "leaf-spine.yaml")
    assert [(n.name, n.rack, n.ip) for n in spec.nodes] == [
        ("node-1", 1, "192.168.1.11/24"), ("node-2", 1, "192.168.1.12/24"),
        ("node-3", 2, "192.168.2.13/24"), ("node-4", 2, "192.168.2.14/24")]


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\npodCidr: 10.244.0.0/16\n")
    assert (err.line, err.field) == (2, "podCidr")
    assert "podCIDR" in err.fix


def test_wrong_type(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\nnodes:\n  count: three\n")
    assert (err.line, err.field) == (3, "nodes.count")


def test_overlapping_cidrs(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\npodCIDR: 10.0.0.0/8\nserviceCIDR: 10.96.0.0/12\n")
    assert err.field == "serviceCIDR" and err.line == 3
    assert "overlaps" in str(err)


def test_too_many_nodes_for_pod_cidr(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\npodCIDR: 10.244.0.0/22\nnodes:\n  count: 5\n")
    assert err.field == "nodes" and "fit" in str(err)


def test_unknown_dataplane_lists_known_ones(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\ndataplane: warp-drive\n")
    assert err.line == 2 and "host-gw" in err.fix


def test_host_gw_refuses_leaf_spine(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\ndataplane: host-gw\nunderlay:\n  type: leaf-spine\n")
    assert err.field == "dataplane" and "L2" in str(err)


def test_pod_on_unknown_node(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\nnodes:\n  - name: a\npods:\n  - name: web\n    node: b\n")
    assert err.field == "pods[0].node" and err.line == 6


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\nnodes: [\n")
    assert err.line is not None


def test_duplicate_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\nname: y\n")
    assert err.line == 2


def test_bad_cidr(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\npodCIDR: 10.244.1.0/16\n")
    assert err.field == "podCIDR"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology("/nonexistent/topo.yaml")


# -- bad input: one short error naming file, line and field; nothing built ------------

def test_node_name_too_long_for_an_interface(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\nnodes:\n  - name: averyveryverylongnode\n")
    assert (err.line, err.field) == (3, "nodes[0].name") and "15-character" in str(err)
    assert load_topology(write_topology(tmp_path, "name: x\nnodes:\n  - name: abcdefghij\n"))


def test_names_knetlab_uses_itself_or_malformed(tmp_path: Path) -> None:
    for bad in ("tor-1", "spine-2", "rr-1", "vpc-router", "node-", "Node1", "1node"):
        err = error_of(tmp_path, f"name: x\nnodes:\n  - name: a\npods:\n  - name: {bad}\n"
                       "    node: a\n")
        assert err.field == "pods[0].name", bad


def test_live_names_follow_the_same_rules() -> None:
    assert name_problem("node-4", NODE_NAME_MAX, host=True) is None
    assert "15-character" in (name_problem("node-12345678", NODE_NAME_MAX, host=True) or "")
    assert name_problem("tor-1", host=True) and name_problem("web_1", host=True)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "topo.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00\x89PNG\n")
    with pytest.raises(ConfigError, match="not a text file") as info:
        load_topology(path)
    assert info.value.line == 2 and str(path) in str(info.value)


def test_control_character_and_odd_keys(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\npods: \x07\n")
    assert err.line == 2 and "\n" not in str(err)
    err = error_of(tmp_path, "name: x\n? [a, b]\n: 1\n")
    assert err.line == 2


def test_calico_pool_overlapping_the_underlay(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\ndataplane: calico-bgp\nbgp:\n  pool: 192.168.0.0/16\n")
    assert err.field == "bgp.pool" and "underlay.cidr" in str(err) and err.line == 4
    err = error_of(tmp_path, "name: x\ndataplane: calico-vxlan\nvxlan:\n  pool: 10.96.0.0/16\n")
    assert err.field == "vxlan.pool" and "serviceCIDR" in str(err)


def test_calico_needs_knetlab_cni_plugins(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: x\ndataplane: calico-bgp\ncni: reference\n")
    assert (err.field, err.line) == ("cni", 3) and "calico" in str(err)
    assert load_topology(write_topology(tmp_path, "name: x\ncni: reference\n")).cni == "reference"


def test_cni_default_follows_the_data_plane(tmp_path: Path) -> None:
    # reference plugins where bridge + host-local do (when installed); knetlab's for calico
    ref = "reference" if Path("/usr/lib/cni/bridge").is_file() else "knetlab"
    assert load_topology(write_topology(tmp_path, "name: x\n")).cni == ref
    assert load_topology(write_topology(tmp_path, "name: x\ncni: knetlab\n")).cni == "knetlab"
    calico = load_topology(write_topology(tmp_path, "name: x\ndataplane: calico-bgp\n"))
    assert calico.cni == "knetlab"


def test_bgp_mode_tor_needs_racks(tmp_path: Path) -> None:
    # refused for what the file says, whether or not this kernel has IPIP
    for plane in ("calico-bgp", "calico-ipip"):
        err = error_of(tmp_path, f"name: x\ndataplane: {plane}\nbgp:\n  mode: tor\n")
        assert err.field == "bgp.mode" and "segment" in str(err), plane
    err = error_of(tmp_path, "name: x\ndataplane: calico-bgp\nbgp:\n  mode: mesh\n"
                   "underlay:\n  type: leaf-spine\n")
    assert err.field == "bgp.mode"


def _knetlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "knetlab.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("case", ["binary", "long-node", "pool", "sample"])
def test_cli_misuse_is_one_line_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    path = tmp_path / "topo.yaml"
    if case == "binary":
        path.write_bytes(bytes(range(256)))
    elif case == "long-node":
        path.write_text("name: hard-cli\nnodes:\n  - name: averyveryverylongnode\n")
    elif case == "pool":
        path.write_text("name: hard-cli\ndataplane: calico-bgp\nbgp:\n  pool: 192.168.0.0/20\n")
    res = (_knetlab("check", "--sample", "-1") if case == "sample"
           else _knetlab("up", "--batch", str(path)))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr  # argparse: usage + error
    if case != "sample":
        assert str(path) in res.stderr
        assert not RunDir("hard-cli").exists(), "nothing is built for a refused topology"
