"""Remove what a lab owns, by ownership only: recorded pids, recorded namespaces, and
root-namespace objects named with the lab's tag. Never by process name.

Order: recorded processes (daemons, then shells) -> any process still living in one of
the lab's namespaces (they would keep it alive) -> root-namespace links with the lab's tag
-> the run directory. Safe to run twice, and after a ``kill -9`` mid-bring-up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

from knetlab import shell
from knetlab.daemon import stop_pids
from knetlab.rundir import PREFIX, RunDir, labs, pid_alive

log = logging.getLogger("knetlab.clean")
TAG_RE = re.compile(rf"^{PREFIX}[0-9a-f]{{4}}")


def _processes_in(inodes: set[int]) -> list[int]:
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                out.append(int(entry))
        except OSError:
            continue
    return out


def _live_namespaces(owned: list[dict]) -> set[int]:
    """Inodes of recorded namespaces that are provably still this lab's: their recorded
    holder (the host's shell) is alive and still in that very namespace. A dead
    namespace's inode can be reused by another lab's, so unproven inodes are skipped."""
    holders = {e.get("name"): e for e in owned if e.get("kind") == "pid"}
    out = set()
    for e in owned:
        holder = holders.get(e.get("name"))
        if e.get("kind") != "netns" or not holder:
            continue
        if not pid_alive(holder["pid"], holder["match"]):
            continue
        try:
            if os.stat(f"/proc/{holder['pid']}/ns/net").st_ino == e["inode"]:
                out.add(e["inode"])
        except OSError:
            continue
    out.discard(os.stat("/proc/self/ns/net").st_ino)  # never our own namespace
    return out


def root_links(tag_re: re.Pattern[str]) -> list[str]:
    out = shell.run(["ip", "-j", "link", "show"]).stdout
    return [link["ifname"] for link in json.loads(out or "[]") if tag_re.match(link["ifname"])]


STORE = "control-plane/etcd"  # the lab's etcd, as Daemon.start records it


def clean_lab(rd: RunDir) -> list[str]:
    removed: list[str] = []
    owned = rd.owned()
    inodes = _live_namespaces(owned)
    # Daemons first (they may hold namespaces), shells last; each group signalled at once.
    pids = [e for e in owned if e.get("kind") == "pid" and e["pid"] != os.getpid()
            and pid_alive(e["pid"], e["match"])]  # (the supervisor cleaning its own lab)
    daemons = [(e["pid"], e["match"]) for e in pids if "mininet:" not in e["match"]
               and e.get("name") != STORE]
    shells = [(e["pid"], e["match"]) for e in pids if "mininet:" in e["match"]]
    stop_pids(daemons, signal.SIGTERM)
    # The lab's etcd last: kubelets stopping release their pods' state in it (CNI DEL).
    stop_pids([(e["pid"], e["match"]) for e in pids if e.get("name") == STORE], signal.SIGTERM)
    stop_pids(shells, signal.SIGHUP)  # interactive bash ignores SIGTERM; SIGHUP ends it
    removed += [f"process {e['pid']} ({e.get('name', '')})" for e in pids]
    strays = _processes_in(inodes)
    stop_pids([(pid, "") for pid in strays], signal.SIGTERM, timeout=1)
    removed += [f"process {pid} (inside a lab namespace)" for pid in strays]
    for name in root_links(re.compile(rf"^{rd.tag}")):
        shell.run(["ip", "link", "del", name], check=False)
        removed.append(f"link {name}")
    if rd.path.exists():
        shutil.rmtree(rd.path, ignore_errors=True)
        removed.append(f"run dir {rd.path}")
    return removed


def clean_all(cluster: str | None = None) -> list[str]:
    """Clean one lab, or every lab; then links whose lab's run dir is already gone."""
    removed: list[str] = []
    targets = [RunDir(cluster)] if cluster else labs()
    for rd in targets:
        removed += clean_lab(rd)
    if cluster is None:
        for name in root_links(TAG_RE):
            # Only knetlab's naming: tag + 's' + switch number (+ -ethN).
            if re.match(rf"^{PREFIX}[0-9a-f]{{4}}s\d+(-eth\d+)?$", name):
                shell.run(["ip", "link", "del", name], check=False)
                removed.append(f"link {name}")
        base = Path(os.environ.get("KNETLAB_RUN", "/run/knetlab"))
        if base.exists() and not any(base.iterdir()):
            base.rmdir()
    return removed
