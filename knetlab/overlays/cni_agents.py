"""The CNI agents of a lab: one daemon per node, in the node's namespace, that serves a
plugin's invocations (knetlab/cni/agent.py says why): ``calico-cni`` on the Calico planes,
``ovs-cni`` on the OVS planes (weave's router serves its plugin itself).

An agent is an accelerator, not a dependency: a plugin that finds none wires the pod
itself. So agents are started without waiting (the node's first pods may still be wired
the slow way) and nothing restarts one that dies.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from knetlab import pyagent

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir


class CniAgent(pyagent.PyAgent):
    """The agent of node ``owner`` for CNI type ``plugin``; ready once it listens."""

    def __init__(self, rundir: RunDir, owner: str, netns: str, plugin: str) -> None:
        self.plugin, self.name = plugin, f"{plugin}-cni"
        super().__init__(rundir, owner, netns)
        self.ready_file = self.dir / "ready"

    def command(self) -> list[str]:
        self.ready_file.unlink(missing_ok=True)
        # site-less (knetlab/pyagent.py): site tripled the agent's start-up CPU; the agent
        # needs nothing but the standard library and knetlab
        return [*pyagent.argv("knetlab.cni.agent"), self.plugin,
                "--ready-file", str(self.ready_file)]

    def match(self) -> str:
        return str(self.ready_file)

    def is_ready(self) -> bool:
        return self.ready_file.exists()


class CniAgents:
    """The lab's agents of one CNI type, by node name."""

    def __init__(self, rundir: RunDir, plugin: str) -> None:
        self.rundir, self.plugin = rundir, plugin
        self.agents: dict[str, CniAgent] = {}
        self.lock = threading.Lock()

    def ensure(self, node: K8sNode) -> None:
        """Start the node's agent unless it runs (``setup_node`` may run again)."""
        with self.lock:
            agent = self.agents.get(node.name)
            if agent is not None and agent.alive():
                return
            if agent is not None:
                agent.stop()
            agent = self.agents[node.name] = CniAgent(self.rundir, node.name, node.netns,
                                                      self.plugin)
            agent.start(wait=False)

    def stop(self, node_name: str) -> None:
        with self.lock:
            agent = self.agents.pop(node_name, None)
        if agent is not None:
            agent.stop()

    def stop_all(self) -> None:
        with self.lock:
            agents, self.agents = list(self.agents.values()), {}
        for agent in agents:
            agent.stop()

    def pids(self) -> dict[str, int | None]:
        return {name: agent.pid for name, agent in self.agents.items()}
