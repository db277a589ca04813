"""The lab's control-plane store: keys -> JSON values, with revisions and a watch.

What etcd is to flannel and Calico, in a folder: one JSON file per key under
``<run dir>/store/``, a global revision bumped on every write (under a lock), and
``wait(since)`` that returns when the revision moves. Separate processes (agents,
the supervisor) share it through the file system. Watchers are level-triggered: on a
change they re-read the whole prefix and reconcile, so a missed event cannot cause drift.
Values may carry an ``expires`` time (leases); ``list`` hides expired entries.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._rev = self.root / ".revision"
        self._watch: DirWatch | None = None

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad store key {key!r}")
        return self.root / (key + ".json")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _bump(self) -> int:
        rev = self.revision() + 1
        tmp = self._rev.with_suffix(".tmp")
        tmp.write_text(str(rev))
        tmp.replace(self._rev)
        return rev

    def revision(self) -> int:
        try:
            return int(self._rev.read_text())
        except (OSError, ValueError):
            return 0

    def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> int:
        path = self._path(key)
        with self._locked():
            return self._write(path, value, ttl)

    def _write(self, path: Path, value: dict[str, Any], ttl: float | None) -> int:
        """Replace the value at ``path`` and bump the revision; the caller holds the lock."""
        if ttl is not None:
            value = {**value, "expires": time.time() + ttl}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
        return self._bump()

    def refresh(self, key: str, ttl: float) -> bool:
        """Extend a key's TTL without a new revision (as etcd's lease keep-alive): renewals
        must not wake every watcher. False if the key is gone."""
        path = self._path(key)
        with self._locked():
            value = self._read(path)
            if value is None:
                return False
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**value, "expires": time.time() + ttl}))
            tmp.replace(path)
        return True

    def create(self, key: str, value: dict[str, Any], ttl: float | None = None) -> bool:
        """Put only if the key is absent (or expired): an atomic claim, as etcd's txn. The
        check and the write happen under one hold of the lock, so of any number of racing
        claims (threads or processes) exactly one wins."""
        path = self._path(key)
        with self._locked():
            current = self._read(path)
            if current is not None and not _expired(current):
                return False
            self._write(path, value, ttl)
            return True

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._read(self._path(key))
        return None if value is None or _expired(value) else value

    def delete(self, key: str) -> int:
        with self._locked():
            self._path(key).unlink(missing_ok=True)
            return self._bump()

    def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        base = self.root / prefix
        out: dict[str, dict[str, Any]] = {}
        if not base.exists():
            return out
        for path in sorted(base.rglob("*.json")):
            value = self._read(path)
            if value is not None and not _expired(value):
                out[str(path.relative_to(self.root))[:-len(".json")]] = value
        return out

    def wait(self, since: int, timeout: float) -> int:
        """Block until the revision is past ``since`` (or timeout); return the revision.
        Sleeps on inotify (the revision file is renamed into place on every write), so a
        hundred idle watchers cost nothing; polls every 50 ms where inotify is missing."""
        if self._watch is None:
            self._watch = DirWatch(self.root)  # before the first read: no lost wake-up
        deadline = time.monotonic() + timeout
        while True:
            rev = self.revision()
            left = deadline - time.monotonic()
            if rev != since or left <= 0:
                return rev
            self._watch.sleep(left)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


class DirWatch:
    """inotify on directories (files renamed into them by default), through libc: a
    watcher sleeps until something changes instead of polling."""

    IN_CLOSE_WRITE, IN_MOVED_TO, IN_NONBLOCK, IN_CLOEXEC = 0x8, 0x80, 0o4000, 0o2000000

    def __init__(self, root: Path | str, mask: int = IN_MOVED_TO) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        self.add(root, mask)

    def add(self, root: Path | str, mask: int = IN_MOVED_TO) -> None:
        if self.fd >= 0 and self.libc.inotify_add_watch(self.fd, os.fsencode(root), mask) < 0:
            os.close(self.fd)
            self.fd = -1

    def sleep(self, seconds: float) -> None:
        if self.fd < 0:
            time.sleep(min(seconds, 0.05))  # no inotify: poll
            return
        poller = select.poll()  # not select(): it fails on fds past 1,024 (a big lab's)
        poller.register(self.fd, select.POLLIN)
        if poller.poll(seconds * 1000):
            try:
                while os.read(self.fd, 4096):
                    pass
            except BlockingIOError:
                pass


def _expired(value: dict[str, Any]) -> bool:
    expires = value.get("expires")
    return expires is not None and expires < time.time()


def lab_store(run_path: Path) -> Store:
    return Store(Path(os.fspath(run_path)) / "store")
