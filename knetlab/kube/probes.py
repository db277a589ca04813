"""Container probes (readiness, liveness, startup) run by the kubelet, as upstream does.

httpGet and tcpSocket probes connect from the *node's* network namespace to the pod's IP,
like a real kubelet: the probe threads each ``setns`` into the node's namespace once (a
thread's namespace is its own on Linux), so the kubelet process itself stays in the root
namespace where the API server is. exec probes run the command inside the pod.

One scheduler thread keeps a heap of due probes and hands them to a small pool; a result
that flips a probe's state calls ``on_change`` (the kubelet then re-syncs the pod).
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("knetlab.kube.probes")
CLONE_NEWNET = 0x40000000


def enter_netns(path: str | None) -> None:
    """Move the calling thread (only) into the network namespace at ``path``."""
    if not path:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def resolve_port(port: Any, container: dict[str, Any]) -> int:
    """An int port, or a named one looked up in the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container.get('name')}")


class Probe:
    """One probe of one container: its spec, schedule and consecutive counts."""

    def __init__(self, kind: str, spec: dict[str, Any], container: dict[str, Any],
                 pod_ip: str, exec_argv: Callable[[list[str]], tuple[list[str], dict[str, str]]],
                 on_change: Callable[[], None]) -> None:
        self.kind, self.spec, self.container = kind, spec, container
        self.pod_ip, self.exec_argv, self.on_change = pod_ip, exec_argv, on_change
        self.period = max(1, int(spec.get("periodSeconds", 10)))
        self.timeout = max(1, int(spec.get("timeoutSeconds", 1)))
        self.success_threshold = max(1, int(spec.get("successThreshold", 1)))
        self.failure_threshold = max(1, int(spec.get("failureThreshold", 3)))
        # liveness starts as passing, readiness and startup as failing (upstream's initial)
        self.ok = kind == "liveness"
        self.successes = self.failures = 0
        self.message = ""
        self.stopped = False
        self.enabled = kind == "startup"  # others wait for startup (see enable())
        # called with the message of every failed run (the kubelet's Unhealthy event)
        self.on_failure: Callable[[str], None] | None = None
        # the Prober's schedule: when the next run is due (None while one runs; a heap entry
        # for another time is stale), and whether to run again at once after the current one
        self.due: float | None = None
        self.rerun = False

    def run_once(self) -> tuple[bool, str]:
        spec = self.spec
        try:
            if "httpGet" in spec:
                return self._http(spec["httpGet"])
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                host = t.get("host") or self.pod_ip
                with socket.create_connection((host, resolve_port(t.get("port"),
                                                                  self.container)),
                                              timeout=self.timeout):
                    return True, ""
            if "exec" in spec:
                argv, env = self.exec_argv(list(spec["exec"].get("command") or []))
                res = subprocess.run(argv, env=env, capture_output=True, text=True,
                                     timeout=self.timeout)
                return res.returncode == 0, (res.stdout + res.stderr).strip()[-200:]
            return True, ""  # grpc and others: not supported here, count as passing
        except subprocess.TimeoutExpired:
            return False, f"command timed out after {self.timeout}s"
        except (OSError, ValueError) as exc:
            return False, str(exc)

    def _http(self, h: dict[str, Any]) -> tuple[bool, str]:
        # Imported here: only httpGet probes need it, and with ``email`` it cost every
        # kubelet ~6 ms of start-up CPU.
        import http.client
        host = h.get("host") or self.pod_ip
        port = resolve_port(h.get("port", 80), self.container)
        cls = (http.client.HTTPSConnection if h.get("scheme", "HTTP").upper() == "HTTPS"
               else http.client.HTTPConnection)
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if cls is http.client.HTTPSConnection:
            import ssl
            kwargs["context"] = ssl._create_unverified_context()  # noqa: S323 - as kubelet
        conn = cls(host, port, **kwargs)
        try:
            headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
            headers.setdefault("User-Agent", "kube-probe/1.33")
            conn.request("GET", h.get("path") or "/", headers=headers)
            status = conn.getresponse().status
        except http.client.HTTPException as exc:
            return False, str(exc)
        finally:
            conn.close()
        if 200 <= status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {status}"

    def record(self, ok: bool, message: str) -> bool:
        """Count one result; True when the probe's state flipped."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            flip = not self.ok and self.successes >= self.success_threshold
        else:
            self.failures, self.successes = self.failures + 1, 0
            flip = self.ok and self.failures >= self.failure_threshold
            if self.kind == "startup" and self.failures >= self.failure_threshold:
                flip = True  # a startup probe that gave up: the container is killed
        self.message = message
        if flip:
            self.ok = ok
        return flip


class Prober:
    """Schedules every probe of one kubelet: one timer thread plus a small pool."""

    def __init__(self, node_netns: str | None, workers: int = 3) -> None:
        self.node_netns = node_netns
        self._heap: list[tuple[float, int, Probe]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers
        self._thread: threading.Thread | None = None
        self._stop = False

    def add(self, probe: Probe, delay: float) -> None:
        with self._cond:
            if self._thread is None:  # lazily: most pods have no probes
                self._pool = ThreadPoolExecutor(self._workers, "prober",
                                                initializer=enter_netns,
                                                initargs=(self.node_netns,))
                self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
                self._thread.start()
            self._seq += 1
            probe.due = time.monotonic() + delay
            heapq.heappush(self._heap, (probe.due, self._seq, probe))
            self._cond.notify()

    def run_now(self, probe: Probe) -> None:
        """Run ``probe`` at once instead of at its next period (upstream's manual trigger of
        readiness once a container has started); its schedule goes on from that run."""
        with self._cond:
            if probe.due is None:  # running: once more right after
                probe.rerun = True
                return
        self.add(probe, 0.0)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap
                                          or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stop:
                    return
                due, _, probe = heapq.heappop(self._heap)
                if due != probe.due:
                    continue  # rescheduled by run_now: a later entry is the live one
                probe.due = None
            if probe.stopped:
                continue
            assert self._pool is not None
            self._pool.submit(self._probe, probe)

    def _probe(self, probe: Probe) -> None:
        if probe.stopped:
            return
        if probe.enabled:
            ok, message = probe.run_once()
            if not ok and not probe.stopped and probe.on_failure is not None:
                probe.on_failure(message)
            if not probe.stopped and probe.record(ok, message):
                probe.on_change()
        if probe.kind == "startup" and probe.ok:
            return  # upstream: a startup probe that succeeded is not run again
        if not probe.stopped:
            with self._cond:
                rerun, probe.rerun = probe.rerun, False
            self.add(probe, 0.0 if rerun else probe.period)
