"""A daemon knetlab starts: its own run dir, config, pid file and log; stopped by pid.

Subclasses say what to run (``command``), optionally render a config and a validate
command, and how to tell it is ready. The owner (a node or the cluster) starts daemons
in order and stops them SIGTERM-then-SIGKILL. Never by process name.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.errors import KnetlabError
from knetlab.rundir import RunDir, pid_alive

log = logging.getLogger("knetlab.daemon")


class DaemonError(KnetlabError):
    pass


class Daemon:
    name: str = "daemon"
    #: True if the program detaches itself and writes ``pid_file`` (ovsdb-server --detach)
    detaches: bool = False
    ready_timeout: float = 10.0

    def __init__(self, rundir: RunDir, owner: str, netns: str | None = None) -> None:
        self.rundir, self.owner, self.netns = rundir, owner, netns
        self.dir: Path = rundir.daemon_dir(owner, self.name)
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"
        self.config_file = self.dir / f"{self.name}.conf"
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # set while it is our child

    # -- to override -------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def render_config(self) -> str | None:
        return None

    def validate_command(self) -> list[str] | None:
        return None

    def env(self) -> dict[str, str]:
        return {}

    def match(self) -> str:
        """A string of the daemon's command line that proves a pid is still this daemon."""
        return str(self.dir)

    def is_ready(self) -> bool:
        return True

    # -- life cycle --------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Start it; with ``wait=False`` return at once (call ``wait_ready`` later), so an
        owner can boot many daemons in parallel."""
        config = self.render_config()
        if config is not None:
            self.config_file.write_text(config)
        check = self.validate_command()
        if check:
            shell.run(check, netns=self.netns, env=self._env(),
                      context=f"{self.name} on {self.owner}: config check failed")
        argv = shell.in_netns(self.command(), self.netns)
        log.debug("start %s on %s: %s", self.name, self.owner, " ".join(argv))
        with self.log_file.open("ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    env=self._env(), start_new_session=True, cwd=self.dir)
        if self.detaches:
            proc.wait(timeout=30)
            if proc.returncode != 0:
                raise DaemonError(f"{self.name} on {self.owner} failed to start "
                                  f"(exit {proc.returncode}); log tail:\n{self.log_tail()}")
            self.pid = int(self.pid_file.read_text().split()[0])
        else:
            self.pid, self.proc = proc.pid, proc
            self.pid_file.write_text(f"{proc.pid}\n")
        self.rundir.record_process(self.pid, self.match(), f"{self.owner}/{self.name}")
        if wait:
            self.wait_ready()

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env()}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise DaemonError(f"{self.name} on {self.owner} exited during start; log tail:\n"
                                  f"{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.02)
        raise DaemonError(f"{self.name} on {self.owner} not ready after {self.ready_timeout}s; "
                          f"log tail:\n{self.log_tail()}")

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.proc is not None and self.proc.pid == self.pid:
            # Our child: poll() is exact, even between fork and exec, when its command
            # line is still ours and would not match.
            return self.proc.poll() is None
        return pid_alive(self.pid, self.match())

    def stop(self, timeout: float = 3.0) -> None:
        if self.pid is None and self.pid_file.exists():
            self.pid = int(self.pid_file.read_text().split()[0])
        if self.pid is not None:
            stop_pid(self.pid, self.match(), timeout)
        if self.proc is not None:
            self.proc.poll()  # reap
        self.pid, self.proc = None, None
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def status_rows(daemons: Iterable[Daemon | None]) -> list[dict[str, Any]]:
    """The running ones as ``knetlab status`` lists daemons (name, owner, pid)."""
    return [{"name": d.name, "owner": d.owner, "pid": d.pid}
            for d in daemons if d is not None and d.pid]


def stop_pid(pid: int, match: str, timeout: float = 3.0) -> None:
    """SIGTERM, wait, then SIGKILL; only while the pid still carries ``match``."""
    stop_pids([(pid, match)], signal.SIGTERM, timeout)


def stop_pids(pids: list[tuple[int, str]], first: signal.Signals = signal.SIGTERM,
              timeout: float = 3.0) -> None:
    """Signal every (pid, match) at once with ``first``, wait up to ``timeout`` for all,
    then SIGKILL the rest; a pid is touched only while it still carries its ``match``."""
    for sig in (first, signal.SIGKILL):
        live = [(p, m) for p, m in pids if _alive(p, m)]
        for pid, _ in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            time.sleep(0.01)
            live = [(p, m) for p, m in live if _alive(p, m)]
        if not live:
            return


def _alive(pid: int, match: str) -> bool:
    try:  # reap it if it is our child
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return pid_alive(pid, match)
