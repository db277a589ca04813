"""The Mininet CLI with cluster commands, driven by a script as a user would type it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from conftest import needs_root, write_topology
from mininet.log import lg

from knetlab.mncli import KnetCLI

pytestmark = [needs_root, pytest.mark.e2e]


def test_cluster_commands_and_pods_as_hosts(lab, tmp_path: Path) -> None:
    c = lab(write_topology(tmp_path, "name: lab-mncli\nnodes: {count: 2}\npods: {perNode: 1}\n"))
    script = tmp_path / "cmds"
    script.write_text("pods\nnodes\nroutes node-1\npod-1-0 ping -c1 -W2 pod-2-0\n"
                      "check\nroutes\nroutes nowhere\n")
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    lg.addHandler(handler)  # Mininet's CLI prints through its logger
    try:
        with open("/dev/null") as devnull:  # Mininet's CLI polls a real stdin
            KnetCLI(c, stdin=devnull, script=str(script))
    finally:
        lg.removeHandler(handler)
    out = seen.getvalue()
    assert "pod-2-0  node-2  10.244.2.2" in out
    assert "node-1  192.168.0.11  10.244.1.0/24" in out
    assert "10.244.2.0/24 via 192.168.0.12" in out
    assert "1 received" in out, out  # the name pod-2-0 was replaced by its IP, as in Mininet
    assert "6/6 probes passed" in out
    assert "usage: routes NODE" in out
    assert "no pod, node or router 'nowhere'" in out
