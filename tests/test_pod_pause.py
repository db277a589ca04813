"""A topology pod's pause process: it holds the pod's own network namespace, ``clean`` can
recognise it, and Mininet's command shell exists only once something talks to the pod."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab import clean
from knetlab.nodes.pod import Pod
from knetlab.rundir import RunDir
from tests.conftest import needs_root, poll

pytestmark = needs_root


@pytest.fixture
def rundir() -> Iterator[RunDir]:
    rd = RunDir(f"pf-pause-{os.getpid()}")
    rd.create()
    try:
        yield rd
    finally:
        clean.clean_lab(rd)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_pause_holds_own_namespace_and_shell_is_lazy(rundir: RunDir) -> None:
    pod = Pod("pfpause1", rundir, node="n")
    try:
        cmdline = Path(f"/proc/{pod.pid}/cmdline").read_bytes().split(b"\0")
        assert b"mininet:pfpause1" in cmdline, cmdline  # what clean matches on
        assert os.readlink(pod.netns) != os.readlink("/proc/self/ns/net")
        # lo is up from the start; no Mininet shell yet
        assert "_mn_shell" not in pod.__dict__ or pod.__dict__["_mn_shell"] is None
        out = pod.cmd("ip -o link show; echo $$")
        shell_pid = int(out.split()[-1])
        assert os.readlink(f"/proc/{shell_pid}/ns/net") == os.readlink(pod.netns)
        assert "lo:" in out and "eth" not in out and "UP" in out, out
        assert pod.pid != shell_pid  # pod.pid stays the pause: the namespace's holder
        assert pod.cmd("echo again").strip() == "again"
        pids = [e["pid"] for e in rundir.owned() if e.get("kind") == "pid"]
        assert pod.pid in pids and shell_pid in pids  # both recorded for `clean`
    finally:
        pod.terminate()
    poll(lambda: _gone(pod.pid) and _gone(shell_pid), 10, "pause and shell to exit")


def test_clean_finds_a_pause_left_behind(rundir: RunDir) -> None:
    pod = Pod("pfpause2", rundir, node="n")
    pid = pod.pid
    removed = clean.clean_lab(rundir)  # as after a crash: nobody called terminate
    assert any(f"process {pid}" in r for r in removed), removed
    poll(lambda: _gone(pid), 10, "the pause to be killed by clean")
    rundir.create()  # for the fixture's clean


def test_a_missing_pause_is_one_clear_error(rundir: RunDir, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A tree where `make setup` never built the pause: the pod is refused, saying what to
    run, and nothing of it is left (no process recorded, nothing for clean to find)."""
    from knetlab.errors import KnetlabError
    from knetlab.nodes import pod as pod_module
    monkeypatch.setattr(pod_module, "PAUSE", str(tmp_path / "pause"))
    with pytest.raises(KnetlabError, match=r"pause .*make setup"):
        Pod("pfpause3", rundir, node="n")
    assert not [e for e in rundir.owned() if e.get("kind") == "pid"]
