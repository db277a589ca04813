"""The one place knetlab runs programs: argv lists, optional network namespace, logged, raising.

A namespace is named by a path (``/proc/PID/ns/net`` or ``/var/run/netns/X``); commands
for it run under ``nsenter --net=PATH`` so that no process of ours changes namespace.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from knetlab.errors import CommandError

log = logging.getLogger("knetlab.shell")


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """Prefix argv so it runs inside the network namespace at path ``netns``."""
    if not netns:
        return list(argv)
    return ["nsenter", f"--net={netns}", "--", *argv]


def run(argv: Sequence[str], *, netns: str | None = None, check: bool = True,
        input: str | None = None, timeout: float | None = 60, context: str = "",
        env: dict[str, str] | None = None) -> Result:
    """Run argv (inside ``netns`` if given); raise CommandError on failure when ``check``."""
    full = in_netns(argv, netns)
    log.debug("run: %s", " ".join(full))
    try:
        proc = subprocess.run(full, input=input, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except FileNotFoundError as exc:
        raise CommandError(full, 127, f"{full[0]}: not installed", context) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(full, -1, f"timed out after {timeout}s", context) from exc
    res = Result(full, proc.returncode, proc.stdout, proc.stderr)
    if check and not res.ok:
        raise CommandError(full, proc.returncode, proc.stderr or proc.stdout, context)
    return res


def ip_batch(lines: Sequence[str], *, netns: str | None = None, force: bool = False,
             context: str = "") -> Result:
    """Apply many ``ip`` commands in one process (``ip -batch -``); one exec instead of many."""
    argv = ["ip", "-batch", "-"]
    if force:
        argv.insert(1, "-force")
    return run(argv, netns=netns, input="\n".join(lines) + "\n", context=context)
