"""Adopting a pod after a kubelet restart: its sandbox and its running containers.

A kubelet killed and started again (``kill -9``, an upgrade) finds its pods still running:
the pause and the containers were started in sessions of their own, so they outlived it
(re-parented to init). As upstream, the new kubelet adopts them instead of restarting
them: the sandbox through ``Sandbox.adopt`` (pause pid + pod dir + CNI cache), each
container through its ``pid`` file, accepted only while that pid is still a process in
the pod's mount namespace (a reused pid is not). Restart counts, start times and last
states come from the pod's status, which the earlier kubelet wrote; the log to append to
is the highest ``<n>.log``.

The new kubelet is not the parent of an adopted process, so it cannot learn its exit
code: it notices the exit through a pidfd and reports exit code 255 with a message
saying the code is unknown; the restart policy then applies as for any exit.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import time
from typing import TYPE_CHECKING, Any

from knetlab.kube import runtime

if TYPE_CHECKING:
    from knetlab.kube.podworker import Container, PodWorker

log = logging.getLogger("knetlab.kube.adoption")
UNKNOWN_EXIT = 255
UNKNOWN_MESSAGE = "exit code unknown: the container was started by an earlier kubelet"


class AdoptedProcess:
    """The part of ``subprocess.Popen`` a pod worker uses, for a process that is not our
    child: ``pid``, ``poll``, ``wait`` and ``returncode``, through a pidfd."""

    unknown_exit = True

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd: int | None = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._fd is not None:
            poller = select.poll()  # not select(): fds past 1,024 in a busy kubelet
            poller.register(self._fd, select.POLLIN)
            if poller.poll(0):
                os.close(self._fd)
                self._fd = None
                self.returncode = UNKNOWN_EXIT
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode


def _mnt_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def adopt_container(w: PodWorker, c: Container, statuses: dict[str, dict[str, Any]]) -> None:
    """Restore one container's state; take over its process if it still runs."""
    st = statuses.get(c.name) or {}
    cdir = runtime.container_dir(w.dir, c.name)
    numbers = runtime.log_numbers(cdir)
    if not numbers and not st:
        return  # never started: the worker starts it as usual
    c.restart_count = max(int(st.get("restartCount") or 0), numbers[-1] if numbers else 0)
    c.started_once = True
    c.last_state = st.get("lastState") or {}
    state = st.get("state") or {}
    try:
        pid = int((cdir / "pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    pause = w.sandbox.pid
    if pid and pause and _mnt_ns(pid) is not None and _mnt_ns(pid) == _mnt_ns(pause):
        try:
            c.proc = AdoptedProcess(pid)  # type: ignore[assignment]
        except OSError:
            c.proc = None
    if c.proc is not None:
        c.state = state if "running" in state else {"running": {"startedAt": w.start_time}}
        c.started_mono = time.monotonic()
        w.k.watch_pid(pid, w.key)
        return
    term = state.get("terminated") or (c.last_state.get("terminated") if "waiting" in state
                                       else None)
    if term:
        c.state, c.exit_code = {"terminated": term}, int(term.get("exitCode", UNKNOWN_EXIT))
    else:  # it was running and is gone: it exited while no kubelet watched
        c.exit_code = UNKNOWN_EXIT
        c.state = {"terminated": {"exitCode": UNKNOWN_EXIT, "reason": "Error",
                                  "message": UNKNOWN_MESSAGE}}


def adopt(w: PodWorker, pod: dict[str, Any]) -> bool:
    """Adopt the pod's sandbox and containers from an earlier kubelet; False if none."""
    if not w.sandbox.adopt(pod):
        return False
    status = pod.get("status") or {}
    w.start_time = status.get("startTime") or w.start_time
    for cond in status.get("conditions") or []:
        if cond.get("lastTransitionTime"):
            w.conditions[cond["type"]] = (cond.get("status", ""), cond["lastTransitionTime"])
    statuses = {s["name"]: s for s in (status.get("containerStatuses") or [])
                + (status.get("initContainerStatuses") or []) if "name" in s}
    try:  # its volumes are mounted already; keep configMap files fresh from now on
        w.volumes.write_files(pod)
    except Exception as exc:  # noqa: BLE001 - refreshed again at the next sync
        log.warning("pod %s: volumes: %s", w.key, exc)
    for c in w.inits + w.containers:
        w.volumes.mounted.update(vm.get("mountPath", "") for vm in
                                 c.spec.get("volumeMounts") or [])
        adopt_container(w, c, statuses)
        if c.running:
            w.start_probes(c, pod)
    log.info("pod %s: adopted (sandbox %s, ip %s)", w.key, w.sandbox.pid, w.sandbox.ip)
    return True
