"""A lab's run directory: every path a lab uses, and the record of what it owns.

``/run/knetlab/<cluster>/`` holds the state file, the supervisor socket, one folder per
node (CNI results, IPAM, daemons' config/pid/log) and ``owned.jsonl``: one line per
process or namespace created, appended *before or right after* creation so that a lab
killed mid-bring-up can still be cleaned by ``knetlab clean``.

Also how a command finds a running lab (``running_lab``: the run dir whose owner still
lives) and its live state (``live_state``), so that feature commands look down to here,
not up to the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from knetlab.errors import KnetlabError

BASE = Path(os.environ.get("KNETLAB_RUN", "/run/knetlab"))
PREFIX = "kl"  # every object knetlab makes in the root namespace starts with this


def lab_tag(cluster: str) -> str:
    """Short, stable id of a lab used in kernel object names (15-char interface limit)."""
    return PREFIX + hashlib.sha1(cluster.encode()).hexdigest()[:4]


class RunDir:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.path = BASE / cluster
        self.tag = lab_tag(cluster)

    # -- paths -----------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def owned_file(self) -> Path:
        return self.path / "owned.jsonl"

    @property
    def socket(self) -> Path:
        return self.path / "supervisor.sock"

    def node_dir(self, node: str) -> Path:
        return self.path / "nodes" / node

    def daemon_dir(self, owner: str, daemon: str) -> Path:
        """Run dir of one daemon: config, pid file and log live together."""
        d = self.path / "daemons" / owner / daemon
        d.mkdir(parents=True, exist_ok=True)
        return d

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "tag").write_text(self.tag + "\n")

    # -- ownership record --------------------------------------------------------
    def record(self, **entry: Any) -> None:
        # One write(2) per line, no fsync: a killed supervisor's writes are already in the
        # kernel, and after a power loss there are no namespaces left to clean.
        with self.owned_file.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def record_process(self, pid: int, match: str, name: str = "") -> None:
        """Own a process: clean kills it only if its command line still contains ``match``."""
        self.record(kind="pid", pid=pid, match=match, name=name)

    def record_netns(self, path: str, name: str) -> None:
        try:
            inode = os.stat(path).st_ino
        except OSError:
            return
        self.record(kind="netns", inode=inode, name=name)

    def owned(self) -> list[dict[str, Any]]:
        if not self.owned_file.exists():
            return []
        out = []
        for line in self.owned_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
        return out

    # -- state -------------------------------------------------------------------
    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None


def labs() -> list[RunDir]:
    if not BASE.exists():
        return []
    return [RunDir(p.name) for p in sorted(BASE.iterdir()) if p.is_dir()]


def pid_alive(pid: int, match: str = "") -> bool:
    """True if pid runs and its command line contains ``match``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return match in cmdline


# -- finding a running lab ---------------------------------------------------------

def running_lab(name: str | None) -> tuple[RunDir, dict[str, Any]]:
    """The run dir and state file of the lab ``name`` (else ``$KNETLAB_CLUSTER``, else the
    only one running) whose owner (supervisor or Python program) is still alive."""
    name = name or os.environ.get("KNETLAB_CLUSTER") or None
    candidates = [RunDir(name)] if name else labs()
    live = []
    for rd in candidates:
        state = rd.read_state()
        if state and pid_alive(state.get("owner_pid", 0), state.get("owner_match", "\0")):
            live.append((rd, state))
    if not live:
        which = f"lab {name!r} is not" if name else "no lab is"
        raise KnetlabError(f"{which} running; start one with `knetlab up -d TOPOLOGY`")
    if len(live) > 1:
        names = ", ".join(rd.cluster for rd, _ in live)
        raise KnetlabError(f"several labs are running ({names}); choose one with --cluster")
    return live[0]


def live_state(cluster: str | None) -> tuple[RunDir, dict[str, Any]]:
    """A lab's state, live from its supervisor (controller state, leases, the API's pods);
    else the last state file (a lab run from Python has no supervisor)."""
    rd, state = running_lab(cluster)
    from knetlab.supervisor import request  # it imports this module
    try:
        state = {**state, **request(rd, "state", timeout=10)}
    except KnetlabError:
        pass
    return rd, state
