"""Topology validation: every error names file, line, field and fix; nothing is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TOPOLOGIES, write_topology

from knetlab.errors import ConfigError
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
