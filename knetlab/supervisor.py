"""The supervisor of a detached lab (``knetlab up -d``): owns the Cluster, answers requests.

It is started by the CLI as ``python -m knetlab.supervisor TOPOLOGY``, prints ``READY`` (or
``ERROR: ...``) on stdout once the lab is up, then serves one JSON request per connection
on ``<run dir>/supervisor.sock``: ``{"op": NAME, "args": {...}}`` -> ``{"ok": ..., ...}``.
Only the operations in ``Cluster.RPC`` (and the data plane's) can be called. SIGTERM or
the ``down`` operation tears the lab down.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
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
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cluster.rundir.socket.unlink(missing_ok=True)
    server.bind(str(cluster.rundir.socket))
    server.listen(16)
    server.settimeout(0.5)
    print("READY", flush=True)
    # From now on the CLI that started us is gone: stdout/stderr (fd level, so logging and
    # child processes follow) go to the lab's log, not to a pipe nobody reads.
    logfd = os.open(cluster.rundir.path / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(logfd)
    try:
        while not stop:
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


def _handle(cluster: Any, conn: socket.socket) -> bool:
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
        if op == "down":
            conn.sendall(json.dumps({"ok": True, "result": "stopping"}).encode())
            return True
        result = cluster.rpc(op, args)
        reply = {"ok": True, "result": result}
    except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
        log.exception("request failed")
        reply = {"ok": False, "error": str(exc)}
    conn.sendall(json.dumps(reply, default=str).encode())
    return False


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(serve(sys.argv[1]))
