"""``knetlab bgp status [NODE]`` and ``knetlab bgp routes NODE`` for a running lab.

Reads the speakers' state files in the lab's run dir (see ``knetlab.bgp.status``), so it
needs no supervisor call and works for labs started by ``up -d`` or from Python.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    bgp = sub.add_parser("bgp", help="BGP sessions and learned routes (Calico data planes)")
    verbs = bgp.add_subparsers(metavar="VERB")
    st = verbs.add_parser("status", help="sessions, like `calicoctl node status`")
    cluster_arg(st)
    st.add_argument("node", nargs="?", help="a node, reflector, ToR or spine")
    st.set_defaults(func=cmd_status)
    rt = verbs.add_parser("routes", help="routes learned, from whom, originator-id, cluster-list")
    cluster_arg(rt)
    rt.add_argument("node")
    rt.set_defaults(func=cmd_routes)


def cmd_status(args: argparse.Namespace) -> int:
    from knetlab.bgp.status import status_text
    from knetlab.rundir import running_lab
    rd, _ = running_lab(args.cluster)
    print(status_text(rd, args.node))
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from knetlab.bgp.status import routes_text
    from knetlab.rundir import running_lab
    rd, _ = running_lab(args.cluster)
    print(routes_text(rd, args.node))
    return 0
