"""Without a lab: ``bgp status`` believes a speaker's state only while its processes live
and hides a reflector's spares; the shared watchdog restarts a killed daemon after a
doubling back-off and reaps it. Real processes (a sleeping Python) stand in for daemons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knetlab import rundir as rundir_mod
from knetlab import watchdog
from knetlab.bgp import status
from knetlab.bgp.exabgp import MEMBERS_FILE, STATE_FILE, Neighbor, SpeakerConfig, render
from knetlab.daemon import Daemon
from knetlab.rundir import RunDir, pid_alive
from tests.conftest import poll

SLEEP = "import time; time.sleep(60)"


class Sleeper(Daemon):
    name = "sleeper"

    def command(self) -> list[str]:
        return [sys.executable, "-c", SLEEP, str(self.dir)]  # its dir in its command line


@pytest.fixture
def rd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunDir:
    monkeypatch.setattr(rundir_mod, "BASE", tmp_path)
    r = RunDir("bgp-unit")
    r.create()
    return r


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for p in made:
        p.kill()
        p.wait()


def test_watchdog_restarts_with_doubling_backoff_and_reaps(rd: RunDir,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(watchdog, "RESTART_BACKOFF", (0.3, 0.6, 1.0))
    monkeypatch.setattr(watchdog, "INTERVAL", 0.05)
    daemon = Sleeper(rd, "node-1")
    daemon.start()
    dog = watchdog.Watchdog("test", threading.RLock(), lambda: {"d": daemon},
                            lambda _key: daemon.start(wait=False))
    dog.start()
    try:
        waits = []
        for _ in range(2):
            old = daemon.pid
            assert old
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            poll(lambda: daemon.pid != old and daemon.alive(), 5.0,  # noqa: B023
                 "the daemon started again")
            waits.append(time.monotonic() - t0)
            assert not Path(f"/proc/{old}").exists()  # reaped, no zombie left
        assert 0.3 <= waits[0] < 1.0 and 0.6 <= waits[1] < 1.5, waits
        assert dog.crashes == {"d": 2}
    finally:
        dog.stop()
        daemon.stop()


def test_status_believes_only_a_live_speaker_and_hides_spares(
        rd: RunDir, procs: list[subprocess.Popen[bytes]]) -> None:
    d = rd.daemon_dir("rr-1", "exabgp")
    me, rr2 = "192.168.0.254", "192.168.0.253"
    clients = ["192.168.0.11", "192.168.0.12"]
    spares = ["192.168.0.13", "192.168.0.14", "192.168.0.15"]
    cfg = SpeakerConfig(me, 64512, 3, [Neighbor(rr2, me, "route reflector"),
                                       *(Neighbor(a, me, status.CLIENT)
                                         for a in clients + spares)])
    (d / "exabgp.conf").write_text(render(cfg))
    (d / MEMBERS_FILE).write_text("".join(f"{a}\n" for a in clients))
    exabgp = subprocess.Popen([sys.executable, "-c", SLEEP, str(d / "exabgp.conf")])
    api = subprocess.Popen([sys.executable, "-c", SLEEP, "-m", "knetlab.bgp.reflector"])
    procs += [exabgp, api]
    # /proc/PID/cmdline can read empty for a moment after exec
    poll(lambda: pid_alive(exabgp.pid, str(d)) and pid_alive(api.pid, "knetlab.bgp"), 5.0,
         "the stand-ins' command lines readable")
    (d / "exabgp.pid").write_text(f"{exabgp.pid}\n")
    up = {"state": "up", "since": time.time(), "info": ""}
    peers = {a: up for a in [rr2, *clients]}
    route = {"next_hop": "192.168.0.11", "originator_id": "", "cluster_list": []}
    (d / STATE_FILE).write_text(json.dumps({"pid": api.pid, "peers": peers, "routes": {
        "192.168.0.11": {"10.244.0.0/26": route}}}))
    rows = status.peers(rd, "rr-1")
    assert [r[0] for r in rows] == [*clients, rr2]
    assert all(r[2] == "up" and r[4] == "Established" for r in rows), rows
    text = status.status_text(rd, "rr-1")
    assert "Calico process is running on rr-1." in text
    assert "3 spare slots for joining nodes" in text
    assert len(status.routes(rd, "rr-1")) == 1
    exabgp.kill()
    exabgp.wait()  # (a zombie would not count either: its command line is gone)
    text = status.status_text(rd, "rr-1")
    assert "is not running on rr-1" in text and "Established" not in text, text
    assert all(r[2] == "down" for r in status.peers(rd, "rr-1"))
    assert status.routes(rd, "rr-1") == []
