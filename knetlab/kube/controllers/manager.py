"""The controller manager: one process running every controller and the scheduler
(kube-controller-manager and kube-scheduler in one), sharing one informer per resource.

``ControllerManager`` builds the chosen controllers (they register their informer
handlers), starts the informers, waits until every cache has synced, then starts the
workers, so no controller acts on a half-listed world. ``ControllerManagerDaemon`` runs it
as ``python -m knetlab.kube.controllers`` under the lab's run dir and is ready when the
process has written its ``ready`` file (caches synced).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from knetlab.daemon import Daemon
from knetlab.errors import KnetlabError
from knetlab.kube.client import KubeClient
from knetlab.kube.controllers.base import Context, Controller
from knetlab.kube.controllers.daemonset import DaemonSetController
from knetlab.kube.controllers.deployment import DeploymentController
from knetlab.kube.controllers.endpointslice import EndpointSliceController
from knetlab.kube.controllers.gc import GarbageCollector, PodGC
from knetlab.kube.controllers.job import JobController
from knetlab.kube.controllers.loadbalancer import LoadBalancerController
from knetlab.kube.controllers.nodelifecycle import NodeLifecycleController
from knetlab.kube.controllers.replicaset import ReplicaSetController
from knetlab.kube.controllers.scheduler import Scheduler
from knetlab.kube.controllers.statefulset import StatefulSetController
from knetlab.rundir import RunDir

log = logging.getLogger("knetlab.kube.controllers")

CONTROLLERS: dict[str, type[Controller]] = {
    c.name: c for c in (ReplicaSetController, DeploymentController, DaemonSetController,
                        StatefulSetController, JobController, EndpointSliceController,
                        GarbageCollector, PodGC, NodeLifecycleController, Scheduler,
                        LoadBalancerController)}


class ControllerManager:
    def __init__(self, client: KubeClient, only: list[str] | None = None,
                 options: dict[str, str] | None = None) -> None:
        unknown = set(only or ()) - set(CONTROLLERS)
        if unknown:
            raise KnetlabError(f"unknown controller(s) {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(CONTROLLERS)}")
        self.ctx = Context(client, options=options)
        self.controllers = [cls(self.ctx) for name, cls in CONTROLLERS.items()
                            if not only or name in only]

    def start(self, timeout: float = 60) -> None:
        self.ctx.informers.start()
        if not self.ctx.informers.wait_synced(timeout):
            raise KnetlabError(f"informer caches not synced after {timeout}s")
        for c in self.controllers:
            c.start()
        log.info("started %s", ", ".join(c.name for c in self.controllers))

    def stop(self) -> None:
        for c in self.controllers:
            c.stop()
            log.info("%s: %d syncs, %.2fs CPU", c.name, c.syncs, c.sync_cpu)
        self.ctx.informers.stop()
        self.ctx.recorder.stop()


class ControllerManagerDaemon(Daemon):
    name = "kube-controller-manager"
    ready_timeout = 60.0

    def __init__(self, rundir: RunDir, owner: str = "control-plane",
                 kubeconfig: str | Path | None = None, only: list[str] | None = None,
                 netns: str | None = None, load_balancer_cidr: str = "") -> None:
        super().__init__(rundir, owner, netns)
        self.load_balancer_cidr = load_balancer_cidr
        self.kubeconfig = Path(kubeconfig or rundir.path / "kube" / "kubeconfig")
        self.only = only
        self.ready_file = self.dir / "ready"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "knetlab.kube.controllers",
                "--kubeconfig", str(self.kubeconfig), "--ready-file", str(self.ready_file)]
        if self.only:
            argv += ["--only", ",".join(self.only)]
        if self.load_balancer_cidr:
            argv += ["--load-balancer-cidr", self.load_balancer_cidr]
        return argv

    def start(self, wait: bool = True) -> None:
        self.ready_file.unlink(missing_ok=True)
        super().start(wait)

    def is_ready(self) -> bool:
        return self.ready_file.exists()
