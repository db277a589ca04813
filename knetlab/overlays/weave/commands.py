"""``knetlab weave status [-o json]``: every node's weave router, as ``weave status``.

Read from each router's ``status.json`` in the run dir (rewritten every second), so it
works for a detached lab and for one held open by ``knetlab up`` in another terminal.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError

STALE = 5.0  # seconds: an older status.json means its router is not running


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("weave", help="the weave data plane: `weave status` (peers, "
                       "connections, mode, IPAM)")
    p.add_argument("action", choices=["status"])
    cluster_arg(p)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_weave)


def cmd_weave(args: argparse.Namespace) -> int:
    from knetlab.overlays.weave.backend import router_dir
    from knetlab.rundir import running_lab
    rd, state = running_lab(args.cluster)
    if state.get("dataplane") != "weave":
        raise KnetlabError(f"lab {rd.cluster} runs {state.get('dataplane')}, not weave")
    statuses: dict[str, dict[str, Any] | None] = {}
    for node in state.get("nodes", []):
        try:
            st = json.loads((router_dir(rd, node["name"]) / "status.json").read_text())
        except (OSError, ValueError):
            st = None
        statuses[node["name"]] = st
    if args.output == "json":
        print(json.dumps(statuses, indent=2))
    else:
        print(format_status(statuses))
    return 0


def format_status(statuses: dict[str, dict[str, Any] | None]) -> str:
    from knetlab.overlays.weave.backend import fastdp_note
    out = [fastdp_note()]
    now = time.time()
    for node, st in statuses.items():
        if st is None:
            out.append(f"{node}: no router status (not started yet?)")
            continue
        age = now - st.get("time", 0)
        stale = f"  STALE: last written {age:.0f}s ago (router down?)" if age > STALE else ""
        c = st["counters"]
        out.append(f"{node}: router {st['name']} ({st['addr']}), uid {st['uid']}{stale}\n"
                   f"  mode: {st['mode']}, encryption: "
                   f"{'on (NaCl secretbox)' if st['encryption'] else 'off'}, MTU {st['mtu']}, "
                   f"TSO offload {'on' if st.get('offload') else 'off'}, "
                   f"bridge {st['bridge']['name']} {st['bridge']['ip']}")
        out.append(f"  peers ({len(st['peers'])}): " + ", ".join(
            f"{p['name']} ({p['addr']}) -> {','.join(p['conns']) or '-'}" for p in st["peers"]))
        out.append(f"  connections ({len(st['connections'])}):")
        out += [f"    -> {cn['peer']:<12} {cn['addr']:<15} {cn['direction']:<8} {cn['state']}"
                f"{' encrypted' if cn['encrypted'] else ''}" for cn in st["connections"]]
        ipam = st["ipam"]
        out.append(f"  ipam: range {ipam['range']}, owns {', '.join(ipam['owned']) or '-'}, "
                   f"{ipam['allocations']} allocated, {ipam['free']} free; ring: " + ", ".join(
                       f"{o}={n}" for o, n in ipam["ring"].items()))
        out.append(f"  sleeve: {c['to_peers']} frames out ({c['flooded']} flooded), "
                   f"{c['from_peers']} in, {c['dropped']} dropped; {len(st['macs'])} MACs known")
    return "\n".join(out)
