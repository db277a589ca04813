"""The Mininet CLI of a lab: pods and nodes are hosts (``pod-1-0 ping pod-2-0``), and every
``knetlab`` command that acts on a running lab is a command here too, declared once in its
feature's ``commands.py``: ``check``, ``kubectl get pods``, ``bgp status node-1``,
``flows node-1``, ``proxy rules node-1``... Each runs as the ``knetlab`` process a user
would start in another terminal (``KNETLAB_CLUSTER`` names this lab), against the request
socket this CLI serves meanwhile. ``pods``, ``nodes`` and ``routes`` are the CLI's own."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from mininet.cli import CLI
from mininet.log import output

from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.cluster import Cluster

#: knetlab commands not offered here: they make, end or remove labs, not act on this one
NOT_IN_CLI = ("up", "down", "clean", "compare")


class KnetCLI(CLI):
    prompt = "knetlab> "
    # Kubernetes names have dashes (pod-1-0, node-2); Cmd would split the word at them.
    identchars = CLI.identchars + "-"

    def __init__(self, cluster: Cluster, **kw: Any) -> None:
        from knetlab.cli import subcommands
        from knetlab.supervisor import RequestServer
        self.cluster = cluster
        # Set on the instance before Mininet's __init__, which runs the command loop.
        self.lab_commands = {name: helptext for name, helptext in subcommands().items()
                             if name not in NOT_IN_CLI and not hasattr(CLI, f"do_{name}")}
        for name, helptext in self.lab_commands.items():
            setattr(self, f"do_{name}", self._knetlab_command(name, helptext))
        self.server = RequestServer(cluster)
        try:
            super().__init__(cluster.net, **kw)
        finally:
            self.server.close()

    def _knetlab_command(self, name: str, helptext: str) -> Any:
        def do(line: str) -> None:
            env = {**os.environ, "KNETLAB_CLUSTER": self.cluster.rundir.cluster}
            try:
                argv = shlex.split(line)
            except ValueError as exc:
                output(f"error: {exc}\n")
                return
            subprocess.run([sys.executable, "-m", "knetlab.cli", name, *argv], env=env,
                           check=False)
        do.__doc__ = f"{helptext}\n(`knetlab {name}` on this lab; `{name} -h` for its arguments)"
        return do

    def onecmd(self, line: str) -> Any:
        # The knetlab commands run as processes that may send requests to this lab: not
        # under the lock its request server takes; everything else (Mininet's commands
        # drive the hosts' shells from this thread) is.
        words = line.split()
        if words and words[0] in self.lab_commands:
            return super().onecmd(line)
        with self.server.lock:
            return super().onecmd(line)

    def get_names(self) -> list[str]:
        # Cmd's help lists dir(class); the knetlab commands are the instance's own.
        return dir(self)

    def do_help(self, line: str) -> None:
        """Describe available CLI commands (Mininet's, then knetlab's)."""
        super().do_help(line)
        if line == "":
            output(self.knetlab_help())

    def knetlab_help(self) -> str:
        """knetlab's commands, each with the first line of its description."""
        docs = {name[3:]: getattr(self, name).__doc__ or "" for name in vars(KnetCLI)
                if name.startswith("do_") and name != "do_help"}
        docs.update(self.lab_commands)
        rows = [f"  {name:<14} {doc.strip().splitlines()[0] if doc.strip() else ''}"
                for name, doc in sorted(docs.items())]
        return ("\nknetlab's commands (pods and nodes are hosts too: pod-1-0 ping pod-2-0; "
                "NAME -h for arguments):\n" + "\n".join(rows) + "\n")

    def default(self, line: str) -> None:
        """``NAME CMD``: as Mininet's, with the API's pods as hosts too (``web-0 ping web-1``)."""
        self.cluster.sync_api_hosts()
        super().default(line)

    def do_pods(self, _line: str) -> None:
        """List pods: name, node, IP."""
        output(summary_pods(self.cluster.state()) + "\n")

    def do_nodes(self, line: str) -> None:
        """List Kubernetes nodes: name, node IP, pod CIDR (``nodes mininet`` for Mininet's)."""
        if line.strip() == "mininet":
            return super().do_nodes(line)
        output(summary_nodes(self.cluster.state()) + "\n")

    def do_routes(self, line: str) -> None:
        """routes NODE: the node's IPv4 routing table."""
        args = line.split()
        if len(args) != 1:
            output("usage: routes NODE\n")
            return
        try:
            host = self.cluster.host(args[0])
        except KnetlabError as exc:
            output(f"error: {exc}\n")
            return
        output(host.run(["ip", "route", "show"]).stdout)
def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def summary_nodes(state: dict[str, Any]) -> str:
    blocks = any("blocks" in n for n in state["nodes"])  # Calico: IPAM blocks, no pod CIDR
    rows = [["NODE", "IP", "IPAM-BLOCKS" if blocks else "POD-CIDR", "RACK"]]
    rows += [[n["name"], n["ip"], ",".join(n.get("blocks", [])) if blocks else n["podCIDR"],
              str(n.get("rack", 1))] for n in state["nodes"]]
    return _table(rows)


def summary_pods(state: dict[str, Any]) -> str:
    rows = [["POD", "NODE", "IP"]]
    rows += [[p["name"], p["node"], p["ip"]] for p in state["pods"]]
    return _table(rows)


def summary(state: dict[str, Any]) -> str:
    head = (f"cluster {state['cluster']}: data plane {state['dataplane']}, underlay "
            f"{state['underlay']} ({state['switch']}), pods {state['podCIDR']}, services "
            f"{state['serviceCIDR']}")
    parts = [head, summary_nodes(state)]
    if state["pods"]:
        parts.append(summary_pods(state))
    if state.get("clients"):  # hosts outside the cluster (knetlab.topologies.clients)
        parts.append(_table([["CLIENT", "IP", "RACK", "GATEWAY"]]
                            + [[c["name"], c["ip"], str(c["rack"]), c.get("gateway") or "-"]
                               for c in state["clients"]]))
    if state.get("summary"):  # the data plane's own lines (controller state, ...)
        parts.append("\n".join(state["summary"]))
    daemons = state.get("daemons")
    if daemons:
        parts.append(_table([["DAEMON", "OWNER", "PID"]]
                            + [[d["name"], d["owner"], str(d["pid"])] for d in daemons]))
    kube = state.get("kubernetes")
    if kube:
        parts.append(f"kubernetes: API server {kube['server']}, etcd {kube['etcd']}\n"
                     f"  export KUBECONFIG={kube['kubeconfig']}   (or: knetlab kubectl ...)")
    return "\n\n".join(parts)
