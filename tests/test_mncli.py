"""The Mininet CLI with cluster commands, driven by a script as a user would type it."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from conftest import needs_root, write_topology
from mininet.log import lg

from knetlab.mncli import KnetCLI

pytestmark = [needs_root, pytest.mark.e2e]


def run_cli(c, tmp_path: Path, script_text: str) -> str:  # noqa: ANN001
    """Run the CLI on ``c`` with a script as a user would type it; what Mininet printed
    through its logger (knetlab's own commands print on the terminal: capfd)."""
    script = tmp_path / "cmds"
    script.write_text(script_text)
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    lg.addHandler(handler)  # Mininet's CLI prints through its logger
    try:
        with open("/dev/null") as devnull:  # Mininet's CLI polls a real stdin
            KnetCLI(c, stdin=devnull, script=str(script))
    finally:
        lg.removeHandler(handler)
    return seen.getvalue()


def test_cluster_commands_and_pods_as_hosts(lab, tmp_path: Path, capfd) -> None:
    """The CLI's own commands (pods, nodes, routes), Mininet's host commands, and knetlab's
    commands as the shell has them (``check``, ``leases``, ``fault list``), the latter
    answered through the request socket the CLI serves for its lab."""
    c = lab(write_topology(tmp_path, "name: lab-mncli\nnodes: {count: 2}\npods: {perNode: 1}\n"))
    out = run_cli(c, tmp_path, "pods\nnodes\nroutes node-1\npod-1-0 ping -c1 -W2 pod-2-0\n"
                      "check\nroutes\nroutes nowhere\nleases\nfault list\n"
                      "bgp status\nstatus -o json\nhelp\nhelp leases\n")
    # (column widths follow the longest name: the add-ons' pods, coredns-..., are listed too)
    assert re.search(r"pod-2-0 +node-2 +10\.244\.2\.2", out), out
    assert re.search(r"node-1 +192\.168\.0\.11 +10\.244\.1\.0/24", out), out
    assert "10.244.2.0/24 via 192.168.0.12" in out
    assert "1 received" in out, out  # the name pod-2-0 was replaced by its IP, as in Mininet
    assert "usage: routes NODE" in out
    assert "no pod, node or router 'nowhere'" in out
    # knetlab's commands print as the `knetlab` processes they are (on the terminal)
    captured = capfd.readouterr()
    shown, errors = captured.out, captured.err
    assert re.search(r"(\d+)/\1 probes passed", shown), shown
    assert re.search(r"10\.244\.1\.0/24 +node-1 +192\.168\.0\.11", shown), shown  # leases
    assert "no faults in place" in shown or "[]" in shown, shown  # a request, answered
    assert '"dataplane": "host-gw"' in shown, shown
    assert "runs no BGP speaker" in errors, errors  # one clear error, no traceback
    # help: Cmd's list (on stdout) and knetlab's section (through Mininet's logger) name
    # the CLI's commands and knetlab's, each described; lab-ending ones are not offered
    for name in ("kubectl", "pods", "routes", "check", "leases", "bgp", "flows", "proxy",
                 "trace", "fault"):
        assert name in shown.split(), (name, shown)
        assert f"\n  {name} " in out, (name, out)
    for name in ("down", "clean", "up"):
        assert f"\n  {name} " not in out, (name, out)
    assert "Undocumented" not in shown
    assert "flannel subnet leases" in shown  # help leases: the command's description


def test_api_pods_are_hosts_and_kubectl_runs(lab, tmp_path: Path, capfd) -> None:
    """Pods made through the API (here by a StatefulSet) are Mininet hosts like the topology's:
    ``web-0 ping web-1``; ``kubectl`` runs with the lab's kubeconfig."""
    from conftest import poll

    c = lab(write_topology(tmp_path, "name: lab-mncli-k\nnodes: {count: 2}\npods: {perNode: 0}\n"))
    c.apply("""
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox, command: [sleep, infinity]}]
""")
    poll(lambda: {p["name"] for p in c.control.running_pods()} >= {"web-0", "web-1"}, 60,
         "web-0 and web-1 running")
    out = run_cli(c, tmp_path, "pods\nweb-0 ping -c1 -W2 web-1\nweb-1 hostname\nkubectl get pods\n")
    web1 = next(p for p in c.control.running_pods() if p["name"] == "web-1")
    assert re.search(rf"web-1 +{web1['node']} +{re.escape(web1['ip'])}\n", out), out
    assert "1 received" in out, out
    assert "\nweb-1" in out  # its own UTS namespace: hostname = pod name
    kubectl_out = capfd.readouterr().out  # kubectl writes to the terminal, not the logger
    assert "web-0" in kubectl_out and "Running" in kubectl_out


def test_plane_commands_reach_the_live_lab(lab, tmp_path: Path, capfd) -> None:
    """A data plane's commands are the shell's: ``ovs-controller stop`` acts on the lab's own
    controller (the command's in-lab half, through the CLI's request socket), ``ovs-status``
    and ``flows`` read the switches; the switches forward while the controller is down."""
    c = lab(write_topology(tmp_path, "name: lab-mncli-o\ndataplane: ovs-vxlan\n"
                           "nodes: {count: 2}\npods: {perNode: 1}\nkubernetes: false\n"))
    out = run_cli(c, tmp_path, "ovs-controller stop\npod-1-0 ping -c1 -W2 pod-2-0\n"
                  "ovs-controller start\nflows node-1\n")
    shown = capfd.readouterr().out
    stopped, started = shown.split("controller os-ken:")[1:3]
    assert stopped.startswith(" DOWN") and "forwarding with the flows it holds" in stopped, shown
    assert started.startswith(" running, pid") and "connected" in started, shown
    assert "1 received" in out
    assert c.backend.controller.alive()
    assert "table=" in shown or "TABLE" in shown.upper(), shown  # flows node-1
