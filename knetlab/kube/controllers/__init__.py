"""Controllers and the scheduler of the lab's Kubernetes (kube-controller-manager and
kube-scheduler in one process): API clients that list + watch and write differences."""

from knetlab.kube.controllers.manager import (
    CONTROLLERS,
    ControllerManager,
    ControllerManagerDaemon,
)

__all__ = ["CONTROLLERS", "ControllerManager", "ControllerManagerDaemon"]
