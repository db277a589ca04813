"""Real nginx (Debian's) for the ingress: its main configuration, the check, the reload.

Each controller pod runs one nginx master in the node's namespace (``hostNetwork``) from its
own dir, ``<rundir>/ingress-nginx/<node>/``: ``nginx.conf`` (the main file, written once),
``nginx.pid``, ``error.log``, ``access.log`` and nginx's temp dirs. The ``http`` body is the
controller's ``routes.conf``, included by the main file.

The controller changes ``routes.conf`` only after ``nginx -t`` accepted the new text, and
then sends SIGHUP to the master by pid: nginx's graceful reload (new workers, old ones finish
their requests). A failed check keeps the last good file, so nginx never fails a reload.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from knetlab import shell
from knetlab.rundir import pid_alive

TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def main_conf(state_dir: Path, routes: Path, label: str, workers: int = 1) -> str:
    """nginx.conf of one instance (or of a config check): its own pid, logs and temp dirs
    under ``state_dir``, the routes included."""
    temps = "".join(f"    {t}_temp_path {state_dir}/tmp/{t};\n" for t in TEMPS)
    for t in TEMPS:
        (state_dir / "tmp" / t).mkdir(parents=True, exist_ok=True)
    return f"""# knetlab ingress-nginx: {label}
user root;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {state_dir}/nginx.pid;
error_log {state_dir}/error.log notice;

events {{
    worker_connections 16384;
    multi_accept on;
}}

http {{
    default_type application/octet-stream;
    access_log {state_dir}/access.log combined buffer=64k flush=1s;
    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 10000;
{temps}
    include "{routes}";
}}
"""


def check(conf: Path) -> tuple[bool, str]:
    """``nginx -t`` on a main config file: (accepted, nginx's complaint)."""
    res = shell.run(["nginx", "-t", "-q", "-c", str(conf)], check=False, timeout=60)
    return res.ok, (res.stderr or res.stdout).strip()


def reload(pid_file: Path, match: str) -> bool:
    """Graceful reload: SIGHUP to the master, only while the pid is still that nginx."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if not pid_alive(pid, match):
        return False
    os.kill(pid, signal.SIGHUP)
    return True

