"""``knetlab dns records [--cluster NAME] [FILTER]``: what the cluster DNS serves right now.

Asks the unbound of each ``coredns`` pod for its local data over the pod's control socket
(reached through ``/proc/<pause pid>/root``: the socket is a file of the pod's root), so
the answer is what clients get, not what knetlab thinks it sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError

SERVER_DIR = "/var/lib/knetlab-dns"  # server.py's --dir default


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("dns", help="cluster DNS: the records its pods serve")
    dsub = p.add_subparsers(dest="dns_cmd", required=True)
    rec = dsub.add_parser("records", help="list the records each cluster DNS pod serves")
    rec.add_argument("filter", nargs="?", default="",
                     help="only records whose line contains this text (e.g. a namespace)")
    cluster_arg(rec)
    rec.set_defaults(func=cmd_records)


def served_records(rundir: Any, pod: dict[str, Any]) -> list[str]:
    """The local data of one DNS pod's unbound, one record per line."""
    from knetlab.addons.dns.unbound import Control
    from knetlab.kube.runtime import sandbox_pid
    pid = sandbox_pid(rundir, pod)
    answer = Control(f"/proc/{pid}/root{SERVER_DIR}/control.sock").command("list_local_data")
    return sorted(" ".join(line.split()) for line in answer.splitlines() if line.strip())


def cmd_records(args: argparse.Namespace) -> int:
    from knetlab.addons.dns import NAMESPACE
    from knetlab.kube.client import KubeClient
    from knetlab.kube.commands import kube_state
    from knetlab.rundir import running_lab
    rd, _ = running_lab(args.cluster)
    client = KubeClient.from_kubeconfig(kube_state(args.cluster)["kubeconfig"])
    pods = client.list("pods", NAMESPACE, label_selector="k8s-app=kube-dns")["items"]
    running = [p for p in pods if (p.get("status") or {}).get("podIP")]
    if not running:
        raise KnetlabError(f"no cluster DNS pod runs in lab {rd.cluster} (kubectl -n "
                           f"{NAMESPACE} get pods -l k8s-app=kube-dns)")
    for pod in running:
        print(f"; {NAMESPACE}/{pod['metadata']['name']} ({pod['status']['podIP']} on "
              f"{pod['spec'].get('nodeName')})")
        for line in served_records(rd, pod):
            if args.filter in line:
                print(line)
    return 0
