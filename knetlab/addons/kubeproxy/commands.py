"""``knetlab proxy rules NODE`` and ``knetlab conntrack NODE``: a node's Service plumbing, live.

    knetlab proxy rules node-1        # the kube-proxy's ruleset (iptables-save / nft list)
    knetlab proxy status              # each node's proxy: mode, syncs, last sync, last error
    knetlab conntrack node-1          # the node's NATed connections (conntrack -L --dst-nat)
    knetlab conntrack node-1 --all    # every entry

Both read the kernel inside the node's namespace (``nsenter``), not a copy: what they print
is what the next packet meets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    proxy = sub.add_parser("proxy", help="kube-proxy: a node's Service rules, proxy status")
    what = proxy.add_subparsers(metavar="WHAT", dest="what", required=True)
    rules = what.add_parser("rules", help="the live ruleset of NODE's kube-proxy")
    rules.add_argument("node")
    cluster_arg(rules)
    cluster_arg(what.add_parser("status", help="every node's kube-proxy: mode, syncs, "
                                "last error"))
    proxy.set_defaults(func=cmd_proxy)
    ct = sub.add_parser("conntrack", help="a node's NATed connections (conntrack -L)")
    cluster_arg(ct)
    ct.add_argument("node")
    ct.add_argument("--all", action="store_true", help="every entry, not only DNATed ones")
    ct.add_argument("-p", "--proto", choices=["tcp", "udp", "icmp", "sctp"])
    ct.set_defaults(func=cmd_conntrack)


def node_netns(cluster: str | None, node: str) -> tuple[Path, str]:
    """The lab's run dir and the network namespace path of ``node``."""
    from knetlab.rundir import running_lab
    rd, state = running_lab(cluster)
    nodes = [n["name"] for n in state.get("nodes", [])]
    if node not in nodes:
        raise KnetlabError(f"lab {rd.cluster} has no node {node!r}; nodes: {', '.join(nodes)}")
    pid = (state.get("hosts") or {}).get(node, {}).get("pid")
    if not pid:
        raise KnetlabError(f"node {node} of lab {rd.cluster} is not running")
    return rd.path, f"/proc/{pid}/ns/net"


def proxy_status(rundir: Path, node: str) -> dict[str, Any]:
    path = rundir / "daemons" / node / "kube-proxy" / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise KnetlabError(f"node {node} runs no kube-proxy (or it has not synced yet): "
                           f"no {path}") from None


def cmd_proxy(args: argparse.Namespace) -> int:
    from knetlab import shell
    if args.what == "status":
        from knetlab.rundir import running_lab
        rd, state = running_lab(args.cluster)
        print(f"{'NODE':<12} {'MODE':<10} {'SERVICES':>8} {'SYNCS':>6} {'FAILED':>6} "
              f"{'LAST SYNC':>10}  LAST ERROR")
        for n in state.get("nodes", []):
            try:
                st = proxy_status(rd.path, n["name"])
            except KnetlabError:
                print(f"{n['name']:<12} (no kube-proxy)")
                continue
            last = f"{st.get('lastSyncMs', 0):.1f} ms"
            err = (st.get("lastError") or "").splitlines()[-1:] or [""]
            print(f"{n['name']:<12} {st['mode']:<10} {st.get('services', 0):>8} "
                  f"{st.get('syncs', 0):>6} {st.get('failures', 0):>6} {last:>10}  {err[0]}")
        return 0
    rundir, netns = node_netns(args.cluster, args.node)
    status = proxy_status(rundir, args.node)
    backend = [status["iptablesBackend"]] if status.get("iptablesBackend") else []
    out = shell.run([sys.executable, "-m", "knetlab.addons.kubeproxy", "rules",
                     status["mode"], args.node, *backend], netns=netns,
                    context=f"kube-proxy rules of {args.node}")
    sys.stdout.write(out.stdout)
    return 0


def cmd_conntrack(args: argparse.Namespace) -> int:
    from knetlab import shell
    _, netns = node_netns(args.cluster, args.node)
    argv = ["conntrack", "-L"]
    if args.proto:
        argv += ["-p", args.proto]
    if not args.all:
        argv.append("--dst-nat")
    out = shell.run(argv, netns=netns, check=False)
    if out.returncode:
        raise KnetlabError(f"conntrack on {args.node} failed: {out.stderr.strip()}")
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return 0
