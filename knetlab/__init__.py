"""knetlab: a Kubernetes-networking datacenter emulated on one Linux machine.

Imports are lazy so that CNI plugin executables (which import ``knetlab.cni``) start fast
and need nothing beyond the standard library.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0"
__all__ = ["Cluster"]


def __getattr__(name: str) -> Any:
    if name == "Cluster":
        from knetlab.cluster import Cluster
        return Cluster
    raise AttributeError(name)
