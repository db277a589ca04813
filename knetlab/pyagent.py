"""How knetlab starts its own Python agents (kubelet, flanneld, kube-proxy, policy agent):
``python -S -m MODULE`` with ``PYTHONPATH`` naming the directory that holds knetlab.

Why: a lab runs several agents on every node (400 processes in a 100-node lab), each paying
Python's start-up. ``site`` costs a bare interpreter ~27 ms of CPU here (it scans
site-packages and runs every ``.pth`` file there: the editable-install finder, setuptools'
distutils shim, whatever else the machine installed); an agent needs much of what those
import anyway, so dropping it saves ~6-10 ms per agent, measured. Without ``site`` an agent
sees only the standard library and knetlab, which is all these agents import (no yaml,
cryptography, aiohttp or mininet on their paths; ``tests/test_pyagent.py`` holds them to
that). ``knetlab/overlays/cni_agents.py`` starts the CNI agents the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

from knetlab.daemon import Daemon

#: the directory that holds the ``knetlab`` package (the checkout, or site-packages)
SOURCE_ROOT = str(Path(__file__).resolve().parents[1])


def argv(module: str) -> list[str]:
    """The argv head that runs ``module`` (``python -m``) as a site-less agent."""
    return [sys.executable, "-S", "-m", module]


def env() -> dict[str, str]:
    """What the agent's environment must add: where knetlab is (``-S`` drops the
    install's own way of finding it), and leave to write bytecode. With
    ``PYTHONDONTWRITEBYTECODE`` inherited (this machine's environment sets it), every agent
    of every node compiled each module edited since its ``.pyc`` was written (~5 ms for
    kube/client.py alone); now the first agent writes it (atomically; ``__pycache__`` is
    git-ignored) and the rest load it. An empty value is "unset" to Python."""
    return {"PYTHONPATH": SOURCE_ROOT, "PYTHONDONTWRITEBYTECODE": ""}


class PyAgent(Daemon):
    """A ``Daemon`` that is one of knetlab's own Python agents: its ``command`` starts with
    ``argv(MODULE)``, and it runs with ``env()``."""

    def env(self) -> dict[str, str]:
        return env()
