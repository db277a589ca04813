"""CLI of the OVS data planes: ``knetlab flows NODE``, ``knetlab ofctl NODE ...`` and
``knetlab ovs-status``.

They talk to the running lab's daemons directly through their sockets in the run dir
(``br-int.mgmt`` of the node's OVS, the controller's ``status.json``), so they work for a
detached lab and for one held open by ``knetlab up`` in another terminal alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from knetlab import shell
from knetlab.errors import KnetlabError
from knetlab.rundir import RunDir, pid_alive


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    fl = sub.add_parser("flows", help="a node's br-int flows by pipeline table (OVS planes)")
    cluster_arg(fl)
    fl.add_argument("node")
    fl.set_defaults(func=cmd_flows)
    of = sub.add_parser("ofctl", help="ovs-ofctl -O OpenFlow13 CMD <node's br-int> ARGS")
    cluster_arg(of)
    of.add_argument("node")
    of.add_argument("command", nargs=argparse.REMAINDER)
    of.set_defaults(func=cmd_ofctl)
    oc = sub.add_parser("ovs-controller", help="stop, start or restart the os-ken controller "
                        "of a detached OVS lab (switches keep forwarding while it is down)")
    cluster_arg(oc)
    oc.add_argument("action", choices=["stop", "start", "restart"])
    oc.set_defaults(func=cmd_controller)
    st = sub.add_parser("ovs-status", help="the OVS controller and each switch's connection")
    cluster_arg(st)
    st.set_defaults(func=cmd_status)


def _lab(args: argparse.Namespace) -> tuple[RunDir, dict[str, Any]]:
    from knetlab.rundir import running_lab
    rd, state = running_lab(args.cluster)
    if not str(state.get("dataplane", "")).startswith("ovs-"):
        raise KnetlabError(f"lab {rd.cluster} runs {state.get('dataplane')}, not an OVS "
                           "data plane (ovs-vxlan, ovs-gre)")
    return rd, state


def _ofctl(rd: RunDir, state: dict[str, Any], node: str, argv: list[str]) -> str:
    host = state["hosts"].get(node)
    if not host or host.get("kind") != "k8snode":
        nodes = ", ".join(n["name"] for n in state["nodes"])
        raise KnetlabError(f"no node {node!r} in lab {rd.cluster}; nodes: {nodes}")
    if not argv:
        raise KnetlabError("usage: knetlab ofctl NODE COMMAND [ARGS...] (dump-flows, show, ...)")
    mgmt = f"unix:{rd.daemon_dir(node, 'ovs') / 'br-int.mgmt'}"
    return shell.run(["ovs-ofctl", "-O", "OpenFlow13", argv[0], mgmt, *argv[1:]],
                     netns=f"/proc/{host['pid']}/ns/net", context=f"ovs-ofctl on {node}").stdout


def cmd_flows(args: argparse.Namespace) -> int:
    from knetlab.overlays.ovs.backend import format_flows
    rd, state = _lab(args)
    print(format_flows(_ofctl(rd, state, args.node, ["dump-flows", "--no-stats"])))
    return 0


def cmd_ofctl(args: argparse.Namespace) -> int:
    rd, state = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    print(_ofctl(rd, state, args.node, command), end="")
    return 0


def controller_report(rd: RunDir) -> dict[str, Any]:
    d = rd.path / "daemons" / "cluster" / "os-ken"
    try:
        pid = int((d / "os-ken.pid").read_text().split()[0])
    except (OSError, ValueError):
        pid = 0
    running = bool(pid) and pid_alive(pid, str(d))
    try:
        report = json.loads((d / "status.json").read_text()) if running else {}
    except (OSError, ValueError):
        report = {}
    return {"running": running, "pid": pid if running else None,
            "switches": report.get("switches", {})}


def cmd_status(args: argparse.Namespace) -> int:
    rd, state = _lab(args)
    rep = controller_report(rd)
    print(f"controller os-ken: {'running, pid ' + str(rep['pid']) if rep['running'] else 'DOWN'}"
          f" (unix socket {rd.path / 'daemons/cluster/os-ken/ofp.sock'})")
    print(f"{'NODE':10} {'BR-INT':12} {'DPID':18} {'FLOWS':>6} {'SYNCED-REV':>10} {'SINCE':>8}")
    for n in state["nodes"]:
        sw = rep["switches"].get(n["name"])
        if sw:
            since = f"{time.time() - sw['since']:.0f}s"
            print(f"{n['name']:10} {'connected':12} {sw['dpid']:18} {sw['flows']:>6} "
                  f"{sw['synced_rev']:>10} {since:>8}")
        elif rep["running"]:
            print(f"{n['name']:10} {'not connected':12}")
        else:  # fail_mode=secure: the switch keeps the flows it holds
            print(f"{n['name']:10} {'no controller (forwarding with the flows it holds)'}")
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from knetlab.supervisor import call_in_lab
    rd, _ = _lab(args)
    call_in_lab(rd, lab_controller, action=args.action)
    return cmd_status(args)


def lab_controller(cluster: Any, action: str) -> dict[str, Any]:
    """In the lab's process: stop, start or restart its os-ken controller."""
    return cluster.backend.controller_action(action)
