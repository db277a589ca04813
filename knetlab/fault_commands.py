"""``knetlab fault ...``: inject faults into a running lab through its supervisor.

    knetlab fault link-down NODE|SWITCH [PEER]    knetlab fault link-up NODE|SWITCH [PEER]
    knetlab fault kill NODE DAEMON                knetlab fault loss IFACE PERCENT
    knetlab fault rate IFACE RATE                 knetlab fault clear | list

IFACE is a link end (``tor-1-eth2``) or ``HOST:IFACE`` (``pod-1-0:eth0``). What a fault
does, and how ``clear`` undoes it, is ``knetlab.faults``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    fault = sub.add_parser("fault", help="inject a fault (link down, kill, loss, rate)")
    cluster_arg(fault)
    kinds = fault.add_subparsers(metavar="FAULT", dest="action", required=True)
    for action, helptext in (("link-down", "set one end of a link down"),
                             ("link-up", "set one end of a link up again")):
        sp = kinds.add_parser(action, help=helptext)
        sp.add_argument("name", help="the node, router or switch whose end it is")
        sp.add_argument("peer", nargs="?", help="the host at the other end (if several)")
    kill = kinds.add_parser("kill", help="SIGKILL a daemon (its watchdog should heal it)")
    kill.add_argument("node", help="its owner: a node, or control-plane")
    kill.add_argument("daemon", help="e.g. flanneld, kubelet")
    loss = kinds.add_parser("loss", help="drop PERCENT of the packets arriving on IFACE")
    loss.add_argument("iface")
    loss.add_argument("percent", type=int)
    rate = kinds.add_parser("rate", help="limit IFACE's sending rate (tbf)")
    rate.add_argument("iface")
    rate.add_argument("rate", help="e.g. 10mbit")
    kinds.add_parser("clear", help="undo every fault injected with knetlab")
    kinds.add_parser("list", help="the faults in place")
    fault.set_defaults(func=cmd_fault)


def cmd_fault(args: argparse.Namespace) -> int:
    from knetlab.rundir import running_lab
    from knetlab.supervisor import request
    rd, _ = running_lab(args.cluster)
    fields = {k: v for k, v in vars(args).items()
              if k in ("name", "peer", "node", "daemon", "iface", "percent", "rate")}
    result = request(rd, "fault", timeout=60, action=args.action, args=fields)
    print(json.dumps(result, indent=2) if isinstance(result, list) else result)
    return 0
