"""``knetlab leases``: flannel's subnet leases of a running lab, read from its etcd."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("leases", help="flannel subnet leases (node, public IP, VTEP MAC, TTL)")
    cluster_arg(p)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_leases)


def cmd_leases(args: argparse.Namespace) -> int:
    from knetlab.labstore import lab_store
    from knetlab.overlays.flannel import subnet
    from knetlab.overlays.flannel.backend import format_leases
    from knetlab.rundir import running_lab
    rundir, state = running_lab(args.cluster)
    store = lab_store(rundir)
    config = store.get(subnet.CONFIG_KEY)
    if config is None:
        raise KnetlabError(f"lab {rundir.cluster} does not run a flannel data plane")
    leases = subnet.leases(store, with_ttl=True)
    names = {n["ip"]: n["name"] for n in state.get("nodes", [])}
    if args.output == "json":
        print(json.dumps({"config": config, "leases": leases}, indent=2))
    else:
        print(format_leases(leases, config, names))
    return 0
