"""The NetworkPolicy add-on: one policy agent (``agent.py``) per node, like calico-node.

Takes no topology settings: every lab with Kubernetes enforces NetworkPolicy, and a lab
without policies carries an empty table (two empty maps, one base chain) per node. A
watchdog starts a dead agent again after a back-off (``knetlab.watchdog``), as a
DaemonSet's kubelet would; the rules stay in the kernel meanwhile (Felix's behaviour), and
the new agent re-applies the whole table once its informers have synced.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from knetlab.addons import Addon, register
from knetlab.addons.netpolicy.agent import PolicyAgentDaemon
from knetlab.daemon import status_rows
from knetlab.watchdog import Watchdog

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode


@register
class NetworkPolicyAddon(Addon):
    name = "netpolicy"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.agents: dict[str, PolicyAgentDaemon] = {}
        self.lock = threading.RLock()
        self.watchdog = Watchdog("policy-agents", self.lock, lambda: dict(self.agents),
                                 self._restart)

    def start(self) -> None:
        self.watchdog.start()

    def _new_agent(self, node_name: str, node_netns: str) -> PolicyAgentDaemon:
        control = self.cluster.control
        assert control is not None
        agent = PolicyAgentDaemon(self.cluster.rundir, node_name,
                                  kubeconfig=control.kubeconfig, node_netns=node_netns)
        # not waited for: 100 agents boot in parallel; each enforces once its informers sync
        agent.start(wait=False)
        return agent

    def start_node(self, node: K8sNode) -> None:
        with self.lock:
            self.agents[node.name] = self._new_agent(node.name, node.netns)

    def _restart(self, node_name: str) -> None:
        old = self.agents[node_name]
        old.stop()
        self.agents[node_name] = self._new_agent(node_name, old.node_netns)

    def stop_node(self, node: K8sNode) -> None:
        with self.lock:
            agent = self.agents.pop(node.name, None)
        if agent is not None:
            agent.stop()

    def stop(self) -> None:
        from knetlab.daemon import stop_pids
        self.watchdog.stop()  # first: it must not start what we stop
        with self.lock:
            agents, self.agents = list(self.agents.values()), {}
        stop_pids([(a.pid, a.match()) for a in agents if a.pid])
        for a in agents:
            a.stop()  # reaps and removes the pid file (the process is gone already)

    def daemons(self) -> list[dict[str, Any]]:
        return status_rows(list(self.agents.values()))

    def wait_ready(self) -> None:
        """Every agent has applied its node's table once (tests, benches)."""
        for agent in list(self.agents.values()):
            agent.wait_ready()
