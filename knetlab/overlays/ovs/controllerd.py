"""The os-ken controller process: a knetlab Daemon, and its entry point.

It runs in the root namespace and listens only on a unix socket in its own run dir
(``ofp.sock``); each node's OVS reaches it through a symlink in the OVS run dir. os-ken
sets TCP_NODELAY on every switch connection, which a unix socket refuses, so the
connection factory is wrapped to skip TCP options.

    python -m knetlab.overlays.ovs.controllerd --socket S --store ETCD_URL --status F --vni N
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from knetlab.daemon import Daemon
from knetlab.rundir import RunDir, pid_alive


class ControllerDaemon(Daemon):
    name = "os-ken"
    ready_timeout = 20.0  # importing os-ken takes ~1 s, more on a busy machine

    def __init__(self, rundir: RunDir, store: str, vni: int) -> None:
        super().__init__(rundir, "cluster", None)
        self.store, self.vni = store, vni  # store: Store.to_arg()
        self.socket = self.dir / "ofp.sock"
        self.status_file = self.dir / "status.json"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "knetlab.overlays.ovs.controllerd",
                "--socket", str(self.socket), "--store", self.store,
                "--status", str(self.status_file), "--vni", str(self.vni)]

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.status_file.unlink(missing_ok=True)
        super().start()

    def is_ready(self) -> bool:
        return self.socket.exists() and self.status_file.exists()

    def status(self) -> dict[str, Any]:
        """The controller's own report (switches, flows, synced revision), if running."""
        if self.pid is None and self.pid_file.exists():
            self.pid = int(self.pid_file.read_text().split()[0])
        running = self.pid is not None and pid_alive(self.pid, self.match())
        try:
            report = json.loads(self.status_file.read_text()) if running else {}
        except (OSError, ValueError):
            report = {}
        return {"running": running, "pid": self.pid if running else None,
                "switches": report.get("switches", {})}


class _UnixConnection:
    """A switch connection on a unix socket: ignores TCP-level socket options, and reports
    the switch hanging up (``on_eof``): os-ken's native hub cannot stop a datapath's send
    thread, so without this a disconnect is never noticed."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.on_eof: Callable[[], None] = lambda: None

    def setsockopt(self, level: int, *args: Any) -> None:
        if level != socket.IPPROTO_TCP:
            self._sock.setsockopt(level, *args)

    def recv(self, size: int) -> bytes:
        try:
            data = self._sock.recv(size)
        except OSError:
            self.on_eof()
            raise
        if not data:
            self.on_eof()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _serve_switch(sock: socket.socket, address: Any) -> None:
    """os-ken's datapath_connection_factory, on a unix socket."""
    from os_ken.controller.controller import Datapath
    from os_ken.controller.handler import DEAD_DISPATCHER
    conn = _UnixConnection(sock)
    with contextlib.closing(Datapath(conn, address or "unix")) as dp:
        def hung_up() -> None:
            dp.set_state(DEAD_DISPATCHER)  # the app forgets the switch now
            try:  # wake the send thread so that it ends
                if dp.send_q is not None:
                    dp.send_q.put_nowait((b"", True))
            except Exception:  # noqa: BLE001, S110 - a full queue: it is awake anyway
                pass
        conn.on_eof = hung_up
        try:
            dp.serve()
        except Exception:  # noqa: BLE001 - os-ken's threads swallow errors: log them
            logging.getLogger("knetlab.ovs.controller").exception("switch connection failed")


def _plain_logging() -> None:
    """Log INFO and up to stderr (the daemon's log). Importing knetlab's data planes may
    import Mininet, whose logger class gives every new logger its own level-25 handler."""
    logging.setLoggerClass(logging.Logger)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knetlab-ovs-controller")
    for opt in ("--socket", "--store", "--status"):
        p.add_argument(opt, required=True)
    p.add_argument("--vni", type=int, required=True)
    args = p.parse_args(argv)
    # Order matters (os-ken): app_manager first, then the configuration, then the apps.
    from os_ken import cfg
    from os_ken.base import app_manager
    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", args.socket)  # a path: a unix socket
    from os_ken.controller import controller as ofp_controller
    ofp_controller.datapath_connection_factory = _serve_switch
    from knetlab.overlays.ovs import controller
    _plain_logging()
    controller.CONFIG.update(store=args.store, status=args.status, vni=args.vni)
    logging.getLogger("knetlab.ovs.controller").info("starting at %s", time.ctime())
    # Not AppManager.run_apps: with the native hub it returns at once and stops the apps.
    manager = app_manager.AppManager.get_instance()
    manager.load_apps(["knetlab.overlays.ovs.controller"])
    manager.instantiate_apps(**manager.create_contexts())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    logging.getLogger("knetlab.ovs.controller").info("stopping (SIGTERM)")
    os._exit(0)  # os-ken's threads are not daemons and cannot be stopped one by one


if __name__ == "__main__":
    raise SystemExit(main())
