"""The supervisor of a detached lab (``knetlab up -d``): owns the Cluster, answers requests.

It is started by the CLI as ``python -m knetlab.supervisor TOPOLOGY``, prints ``READY`` (or
``ERROR: ...``) on stdout once the lab is up, then serves one JSON request per connection
on ``<run dir>/supervisor.sock``: ``{"op": NAME, "args": {...}}`` -> ``{"ok": ..., ...}``.
Only the operations in ``Cluster.RPC`` and the ``lab_*`` functions of the command modules
(``call_in_lab``) can be called. SIGTERM or the ``down`` operation tears the lab down.

A lab held open by ``knetlab up`` (or a Python program) in its Mininet CLI serves the same
socket from a thread (``RequestServer``), so every command works against it too.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError
from knetlab.rundir import RunDir

log = logging.getLogger("knetlab.supervisor")


def request(rd: RunDir, op: str, timeout: float = 300, **args: Any) -> Any:
    """Send one request to a lab's supervisor; raise KnetlabError with its error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(rd.socket))
        except OSError as exc:
            raise KnetlabError(f"cannot reach the supervisor of {rd.cluster} ({exc.strerror}); "
                               f"is it running? `knetlab clean --cluster {rd.cluster}` removes "
                               "a dead lab") from None
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise KnetlabError(reply.get("error", "supervisor gave no answer"))
    return reply.get("result")


def call_in_lab(rd: RunDir, fn: Callable[..., Any], timeout: float = 300, **args: Any) -> Any:
    """Run a command's in-lab half ``fn(cluster, **args)`` in the process owning the lab:
    how a command that must act on live objects (the OVS controller) reaches them."""
    return request(rd, f"{fn.__module__}:{fn.__name__}", timeout, **args)


def dispatch(cluster: Any, op: str, args: dict[str, Any]) -> Any:
    """One request: a ``Cluster.RPC`` operation, or ``MODULE:lab_NAME`` of a command module
    (``knetlab.cli.EXTENSIONS``; nothing else is importable this way)."""
    module, sep, name = op.partition(":")
    if not sep:
        return cluster.rpc(op, args)
    from knetlab.cli import EXTENSIONS
    if module not in EXTENSIONS or not name.startswith("lab_"):
        raise KnetlabError(f"unknown operation {op!r}")
    return getattr(importlib.import_module(module), name)(cluster, **args)


class RequestServer:
    """Answers requests for a lab held open in a Mininet CLI, from a thread beside it.

    ``lock`` keeps a request and a Mininet CLI command from driving the lab at once (the
    CLI takes it for its in-process commands, not for the ``knetlab`` ones it runs as
    processes, which may themselves be requests)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = _listen(cluster.rundir)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)  # close() wakes the thread
        self._thread = threading.Thread(target=self._serve, name="knetlab-requests",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not _wait_readable(self._sock, self._wake_r):
                continue
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn, self.lock:
                _handle(self.cluster, conn, down_refusal=(
                    "this lab is held open by a Mininet CLI: leave it (exit) to tear it down"))

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.cluster.rundir.socket.unlink(missing_ok=True)


def serve(topology: str) -> int:
    from knetlab.cluster import Cluster

    try:
        cluster = Cluster.load(topology)
        from knetlab.progress import PhasePrinter
        cluster.on_phase = PhasePrinter(sys.stdout)  # the CLI shows these lines as they come
        cluster.up()
    except (KnetlabError, Exception) as exc:  # noqa: BLE001 - reported to the waiting CLI
        print(f"ERROR: {exc}", flush=True)
        return 1
    # Owned like any daemon: `knetlab clean` stops a supervisor whose lab it removes.
    cluster.rundir.record_process(os.getpid(), "knetlab.supervisor", "supervisor")
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server = _listen(cluster.rundir)
    # A signal writes to this pipe (set_wakeup_fd), so the loop below sleeps until a request
    # or SIGTERM comes: an idle lab's supervisor does not wake every 0.5 s to look at `stop`.
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    print("READY", flush=True)
    # From now on the CLI that started us is gone: stdout/stderr (fd level, so logging and
    # child processes follow) go to the lab's log, not to a pipe nobody reads.
    logfd = os.open(cluster.rundir.path / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(logfd)
    try:
        while not stop:
            if not _wait_readable(server, wake_r):
                continue
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                stop = _handle(cluster, conn)
    finally:
        server.close()
        cluster.down()
    return 0


def _listen(rd: RunDir) -> socket.socket:
    """The lab's request socket, listening (a stale one of a dead owner is replaced)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rd.socket.unlink(missing_ok=True)
    server.bind(str(rd.socket))
    server.listen(16)
    server.settimeout(0.5)
    return server


def _wait_readable(server: socket.socket, wake: int) -> bool:
    """Sleep until a client connects (True) or ``wake`` is written to (False: drained)."""
    waiter = select.poll()
    waiter.register(server, select.POLLIN)
    waiter.register(wake, select.POLLIN)
    ready = {fd for fd, _ in waiter.poll()}
    if wake in ready:
        try:
            os.read(wake, 512)
        except BlockingIOError:
            pass
    return server.fileno() in ready


def _handle(cluster: Any, conn: socket.socket, down_refusal: str = "") -> bool:
    conn.settimeout(30)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        req = json.loads(data)
        op, args = req["op"], req.get("args", {})
        if op == "down" and down_refusal:
            raise KnetlabError(down_refusal)
        if op == "down":
            conn.sendall(json.dumps({"ok": True, "result": "stopping"}).encode())
            return True
        result = dispatch(cluster, op, args)
        reply = {"ok": True, "result": result}
    except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
        log.exception("request failed")
        reply = {"ok": False, "error": str(exc)}
    conn.sendall(json.dumps(reply, default=str).encode())
    return False


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(serve(sys.argv[1]))
