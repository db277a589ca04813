"""The interface every kube-proxy mode implements, and the registry of modes.

A ``Proxier`` owns one node's Service rules in one mode (iptables, nftables, userspace).
``sync`` is declarative and level-triggered: given the whole desired ``ProxyState`` (and,
as a hint, the keys of the ServicePorts that changed since the last successful sync) it
makes the kernel match, in one transaction, or raises leaving the previous rules in place.
A proxier knows nothing of the API: the agent builds the state, and the benchmark can feed
one made by hand to a proxier in a bare namespace.

Mode modules register their class with ``@register``; ``proxiers()`` imports them lazily so
a lab that runs iptables mode never imports the userspace proxy's socket machinery.
"""

from __future__ import annotations

import importlib
import logging
from typing import ClassVar

from knetlab.addons.kubeproxy.model import ProxyState

#: the mode modules; each registers one Proxier subclass on import
MODE_MODULES = (
    "knetlab.addons.kubeproxy.iptables",
    "knetlab.addons.kubeproxy.nftables",
    "knetlab.addons.kubeproxy.userspace",
)

_REGISTRY: dict[str, type[Proxier]] = {}


class Proxier:
    mode: ClassVar[str]                 # "iptables" | "nftables" | "userspace"

    def __init__(self, node: str, log: logging.Logger) -> None:
        self.node = node
        self.log = log

    def sync(self, state: ProxyState, changed: set[str] | None) -> None:
        """Make the kernel match ``state``. ``changed`` = keys of ServicePorts changed since
        the last successful sync (None = full sync). Applies in ONE transaction; on failure
        raises and leaves the previous ruleset in place."""
        raise NotImplementedError

    def rules(self) -> str:
        """The live ruleset text (``knetlab proxy rules NODE``)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove everything this mode installed."""
        raise NotImplementedError


def register(cls: type[Proxier]) -> type[Proxier]:
    _REGISTRY[cls.mode] = cls
    return cls


def proxier_class(mode: str) -> type[Proxier]:
    """One mode's class, importing that mode's module only: an agent runs one mode, and
    importing all of them cost each node's proxy ~9 ms of start-up CPU (asyncio, for the
    userspace mode). KeyError for a mode that is not registered."""
    module = f"knetlab.addons.kubeproxy.{mode}"
    if mode not in _REGISTRY and module in MODE_MODULES:
        importlib.import_module(module)
    return _REGISTRY[mode]


def proxiers() -> dict[str, type[Proxier]]:
    """Every importable mode by name (a mode module not written yet is simply absent)."""
    for module in MODE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it imports does not
                raise
    return dict(_REGISTRY)
