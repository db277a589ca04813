"""The Mininet CLI with cluster commands: pods and nodes are hosts (``pod-1-0 ping pod-2-0``),
plus ``pods``, ``nodes``, ``routes NODE``, ``check``, ``kubectl``, ``status`` and the data
plane's own; ``help`` lists them all beside Mininet's."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from typing import TYPE_CHECKING, Any

from mininet.cli import CLI
from mininet.log import output

from knetlab.check import format_report
from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.cluster import Cluster


class KnetCLI(CLI):
    prompt = "knetlab> "
    # Kubernetes names have dashes (pod-1-0, node-2); Cmd would split the word at them.
    identchars = CLI.identchars + "-"

    def __init__(self, cluster: Cluster, **kw: Any) -> None:
        self.cluster = cluster
        assert cluster.backend
        # The data plane's commands (``bgp``, ``leases``, ``flows``...) exist only on this
        # instance: set before Mininet's __init__, which runs the command loop.
        self.plane_commands: dict[str, str] = {}
        for name, fn in cluster.backend.cli_commands().items():
            doc = ((fn.__doc__ or "").strip()
                   or f"{name}: a command of the {cluster.backend.name} data plane")
            setattr(self, f"do_{name}", self._wrap(fn, doc))
            self.plane_commands[name] = doc
        super().__init__(cluster.net, **kw)

    @staticmethod
    def _wrap(fn: Any, doc: str) -> Any:
        def do(line: str) -> None:
            try:
                output(fn(line) + "\n")
            except KnetlabError as exc:
                output(f"error: {exc}\n")
        do.__doc__ = doc  # what ``help NAME`` prints
        return do

    def get_names(self) -> list[str]:
        # Cmd's help lists dir(class); the data plane's commands are the instance's own.
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
        docs.update(self.plane_commands)
        rows = [f"  {name:<10} {doc.strip().splitlines()[0] if doc.strip() else ''}"
                for name, doc in sorted(docs.items())]
        return ("\nknetlab's commands (pods and nodes are hosts too: pod-1-0 ping pod-2-0):\n"
                + "\n".join(rows) + "\n")

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

    def do_check(self, line: str) -> None:
        """check [K]: prove the Kubernetes network model (K random peers per pod)."""
        args = line.split()
        sample = int(args[0]) if args and args[0].isdigit() else None
        output(format_report(self.cluster.check(sample)) + "\n")
        backend = self.cluster.backend  # its caveats (macvlan), not the whole lab's state
        for note in (backend.describe() if backend else {}).get("check_notes", []):
            output(f"note: {note}\n")

    def do_kubectl(self, line: str) -> None:
        """kubectl ARGS: kubectl against the lab's API server (its kubeconfig)."""
        if self.cluster.control is None:
            output("error: this lab runs without Kubernetes\n")
            return
        from knetlab.kube.commands import kubectl_binary
        env = {**os.environ, "KUBECONFIG": str(self.cluster.control.kubeconfig)}
        subprocess.run([kubectl_binary(), *shlex.split(line)], env=env, check=False)

    def do_status(self, _line: str) -> None:
        """The lab's state as JSON (as ``knetlab status -o json``)."""
        state = self.cluster.state()
        state.pop("hosts", None)
        output(json.dumps(state, indent=2) + "\n")

    def do_trace(self, line: str) -> None:
        """trace SRC DST [icmp|tcp PORT|udp PORT]: every hop of one marked probe."""
        from knetlab.trace import format_trace, trace
        args = line.split()
        if len(args) not in (2, 4) or (len(args) == 4 and not args[3].isdigit()):
            output("usage: trace SRC DST [icmp|tcp PORT|udp PORT]\n")
            return
        proto, port = (args[2], int(args[3])) if len(args) == 4 else (None, None)
        try:
            output(format_trace(trace(self.cluster.state(), args[0], args[1], proto, port))
                   + "\n")
        except KnetlabError as exc:
            output(f"error: {exc}\n")

    def do_graph(self, line: str) -> None:
        """graph FILE: draw the lab (FILE .png, .svg or .dot)."""
        from knetlab.graph import render, to_dot
        if len(line.split()) != 1:
            output("usage: graph FILE.png|FILE.svg|FILE.dot\n")
            return
        try:
            output(f"drawn: {render(to_dot(self.cluster.state()), line.strip())}\n")
        except KnetlabError as exc:
            output(f"error: {exc}\n")


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
