"""The restart policy of a lab's per-node daemons: what a DaemonSet's pods get from the
kubelet (and the calico-node container from its supervisor) when a process dies.

One ``Watchdog`` thread per owner (a data plane backend) looks at its daemons when one of
them exits (it sleeps on their pidfds, so an idle lab's supervisor does not wake twice a
second per owner for nothing), when a restart is due, and every ``INTERVAL`` seconds in any
case (daemons the owner replaced meanwhile get their pidfds then); one that exited is reaped
(``Daemon.alive`` polls our child, so no zombie stays)
and started again after a back-off that doubles per crash, 1 s to 10 s (kubelet's
CrashLoopBackOff, 10 s to 5 min, scaled down to a lab). A daemon that came back (or that
its owner restarted meanwhile) cancels its pending restart. The owner's lock is held
while looking and restarting, so the owner can remove or stop daemons under the same lock
without racing a restart.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from knetlab.daemon import Daemon

log = logging.getLogger("knetlab.watchdog")
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 10.0)  # seconds before the 1st, 2nd... restart
INTERVAL = 5.0  # seconds between looks when no daemon exits and no restart is due


class Watchdog:
    """Start again, after a doubling back-off, the daemons ``daemons()`` lists that exited.

    ``daemons`` returns key -> Daemon (read under ``lock``); ``restart(key)`` replaces the
    dead daemon (stop what is left, start a new one) and is called under ``lock``."""

    def __init__(self, what: str, lock: threading.RLock,
                 daemons: Callable[[], Mapping[Any, Daemon]],
                 restart: Callable[[Any], object]) -> None:
        self.what, self.lock = what, lock
        self.daemons, self.restart = daemons, restart
        self.crashes: dict[Hashable, int] = {}
        self.due: dict[Hashable, float] = {}  # dead daemon -> when to start it again
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True, name=self.what)
            self.thread.start()

    def stop(self) -> None:
        """No restart from now on (call before stopping the daemons)."""
        self.stopping.set()

    def pending(self, key: Hashable) -> float | None:
        """Seconds until a dead daemon's restart, or None if none is pending."""
        due = self.due.get(key)
        return None if due is None else max(0.0, due - time.monotonic())

    def _run(self) -> None:
        pidfds: dict[int, int] = {}  # pid -> pidfd, of the daemons seen at the last look
        try:
            while not self.stopping.is_set():
                with self.lock:
                    if not self.stopping.is_set():
                        self.check()
                    # the living ones: a dead daemon's pidfd stays readable (it would spin)
                    pids = {d.pid for d in self.daemons().values() if d.pid and d.alive()}
                for pid in [p for p in pidfds if p not in pids]:
                    os.close(pidfds.pop(pid))
                for pid in pids - set(pidfds):
                    try:
                        pidfds[pid] = os.pidfd_open(pid)
                    except OSError:
                        pass  # gone already: the next look (a restart is due) sees it
                self._sleep(pidfds)
        finally:
            for fd in pidfds.values():
                os.close(fd)

    def _sleep(self, pidfds: dict[int, int]) -> None:
        """Until a daemon exits (its pidfd turns readable), the next restart is due, or
        ``INTERVAL`` passed."""
        now = time.monotonic()
        timeout = min([INTERVAL, *(max(0.0, due - now) for due in self.due.values())])
        if timeout > 0:
            waiter = select.poll()  # not select(): a big lab's supervisor has fds > 1024
            for fd in pidfds.values():
                waiter.register(fd, select.POLLIN)
            waiter.poll(timeout * 1000)

    def check(self) -> None:
        """One pass: schedule the newly dead, restart the ones whose back-off is over."""
        daemons = self.daemons()
        for key in [k for k in self.due if k not in daemons]:
            del self.due[key]  # removed by its owner meanwhile
        for key, daemon in daemons.items():
            if daemon.alive():
                self.due.pop(key, None)
                continue
            crashes = self.crashes.get(key, 0)
            if key not in self.due:
                wait = RESTART_BACKOFF[min(crashes, len(RESTART_BACKOFF) - 1)]
                self.due[key] = time.monotonic() + wait
                log.warning("%s: %s on %s exited; starting it again in %.0f s", self.what,
                            daemon.name, daemon.owner, wait)
            elif time.monotonic() >= self.due[key]:
                del self.due[key]
                self.crashes[key] = crashes + 1
                try:
                    self.restart(key)
                except Exception:  # noqa: BLE001 - retried after the next back-off
                    log.exception("%s: restarting %s on %s failed", self.what, daemon.name,
                                  daemon.owner)
