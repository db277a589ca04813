"""``knetlab policy explain FROM TO PORT [--proto tcp|udp|sctp]`` for a running lab.

FROM and TO are pods (``ns/name``, or ``name`` in default) or IPv4 addresses. The answer
comes from the live nftables tables of the nodes involved (``explain.py``); the command
runs as root on the lab's machine and reads them from the nodes' namespaces directly, so
it works for detached labs and for labs run from Python alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    pol = sub.add_parser("policy", help="NetworkPolicy: explain a verdict from the live rules")
    verbs = pol.add_subparsers(metavar="VERB", dest="verb", required=True)
    ex = verbs.add_parser("explain", help="would a new connection FROM -> TO:PORT be allowed?")
    cluster_arg(ex)
    ex.add_argument("src", metavar="FROM", help="pod (ns/name or name) or IPv4 address")
    ex.add_argument("dst", metavar="TO", help="pod (ns/name or name) or IPv4 address")
    ex.add_argument("port", metavar="PORT", type=int)
    ex.add_argument("--proto", default="tcp", choices=["tcp", "udp", "sctp"])
    ex.add_argument("--exit-code", action="store_true",
                    help="exit 1 when the connection would be denied")
    pol.set_defaults(func=cmd_policy)


def cmd_policy(args: argparse.Namespace) -> int:
    from knetlab.addons.netpolicy.explain import explain
    from knetlab.kube.client import KubeClient
    from knetlab.kube.runtime import sandbox_netns
    from knetlab.rundir import running_lab

    rd, state = running_lab(args.cluster)
    kube = state.get("kubernetes")
    if not kube:
        raise KnetlabError("this lab runs without Kubernetes: there are no NetworkPolicies")
    hosts = state.get("hosts", {})

    def netns_of(node: str) -> str:
        if node not in hosts:
            raise KnetlabError(f"node {node} is not in the lab's state")
        return f"/proc/{hosts[node]['pid']}/ns/net"

    def pod_netns_of(pod: dict[str, Any]) -> str:
        return sandbox_netns(rd.path, pod)

    pods = KubeClient.from_kubeconfig(kube["kubeconfig"]).list("pods")["items"]
    result = explain(pods, netns_of, args.src, args.dst, args.port, args.proto, pod_netns_of)
    print(result.text())
    return 1 if args.exit_code and not result.allowed else 0
