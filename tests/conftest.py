"""Shared fixtures: every lab a test builds is torn down; helpers to compare the machine
before and after (interfaces)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from knetlab.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


def write_topology(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def running_lab(topology: str | Path, tmp: Path | None = None) -> Iterator[Cluster]:
    """A lab up for the ``with`` block (a module fixture's life) and down after it,
    whatever happened: from a topology file, or from topology text written into ``tmp``."""
    if isinstance(topology, str):
        assert tmp is not None, "topology text needs a directory to be written to"
        topology = write_topology(tmp, topology)
    c = Cluster.load(topology)
    c.up()
    try:
        yield c
    finally:
        c.down()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[object]:
    """Factory: ``lab(path)`` brings a Cluster up; all are torn down after the test."""
    made: list[Cluster] = []

    def up(path: str | Path) -> Cluster:
        c = Cluster.load(path)
        c.up()
        made.append(c)
        return c

    yield up
    for c in made:
        c.down()


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def poll(cond: Callable[[], object], timeout: float, what: str) -> float:
    """Wait until cond() holds; return the seconds it took (fail at the deadline).

    The data planes reconcile asynchronously (agents, installers, controllers), so a
    test states what must become true and by when, never a fixed sleep."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.02)
    pytest.fail(f"not within {timeout}s: {what}")


@pytest.fixture(scope="session")
def _test_etcd() -> Iterator[object]:
    """One real etcd (TLS, as a lab's) for the tests of the store and its users."""
    import shutil

    from knetlab import clean
    from knetlab.labstore import etcd_store, start_lab_etcd
    from knetlab.rundir import RunDir
    if os.geteuid() != 0 or not shutil.which("etcd"):
        pytest.skip("needs root and etcd (a lab's store)")
    rd = RunDir(f"storetest-{os.getpid()}")
    rd.create()
    try:
        yield etcd_store(start_lab_etcd(rd))
    finally:
        clean.clean_lab(rd)


@pytest.fixture
def etcd_store(_test_etcd: object) -> object:
    """The test etcd's ``knetlab.store.Store``, emptied first."""
    import base64
    empty = base64.b64encode(b"\0").decode()
    _test_etcd.call("/v3/kv/deleterange", {"key": empty, "range_end": empty})  # type: ignore[attr-defined]
    return _test_etcd
