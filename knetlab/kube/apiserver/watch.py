"""Watches: one etcd watch on ``/registry/`` fanned out to every client watch in-process.

Design notes
- The ``Cacher`` follows etcd from the revision the server started at and keeps a ring
  buffer of recent events. ``floor`` is the revision after which every event is in the
  buffer. A client watch from RV N >= floor replays the buffered events after N, then
  live ones (replay and registration happen with no ``await`` between, so nothing falls
  in a gap); a watch from an older N (e.g. a client resuming across an API server restart)
  gets its own etcd watch from N+1; if etcd compacted N away the client gets an ERROR
  event with a 410 Expired Status and relists.
- Each ``Watcher`` has a bounded queue; when it is full (a slow client) the watcher is
  dropped and its stream ends, so one slow client never stalls the others.
- Events are filtered per watcher by key prefix and selectors, with kube's semantics for
  selector transitions: an object that stops matching is sent as DELETED, one that starts
  matching as ADDED.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..etcd import Compacted, EtcdClient, EtcdError, WatchEvent

log = logging.getLogger("knetlab.kube.apiserver.watch")
Obj = dict[str, Any]
BUFFER = 20000
QUEUE = 2000


@dataclass
class Event:
    rev: int
    key: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    prev: Obj | None


def convert(e: WatchEvent) -> Event | None:
    """An etcd event as an API event; the object carries its resourceVersion."""
    prev = None
    if e.prev_kv is not None and e.prev_kv.value:
        prev = json.loads(e.prev_kv.value)
        prev.setdefault("metadata", {})["resourceVersion"] = str(e.prev_kv.mod_revision)
    if e.type == "DELETE":
        if prev is None:
            return None
        obj = json.loads(json.dumps(prev))
        obj["metadata"]["resourceVersion"] = str(e.kv.mod_revision)
        return Event(e.kv.mod_revision, e.kv.key, "DELETED", obj, None)
    obj = json.loads(e.kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(e.kv.mod_revision)
    typ = "ADDED" if e.kv.create_revision == e.kv.mod_revision else "MODIFIED"
    return Event(e.kv.mod_revision, e.kv.key, typ, obj, prev)


class Watcher:
    """One client watch: a key prefix, an optional predicate, a bounded queue."""

    def __init__(self, prefix: str, match: Callable[[Obj], bool] | None,
                 min_rev: int = 0) -> None:
        self.prefix, self.match, self.min_rev = prefix, match, min_rev
        self.queue: asyncio.Queue[tuple[str, Obj, int] | None] = asyncio.Queue(QUEUE)
        self.dropped = False

    def filter(self, ev: Event) -> tuple[str, Obj] | None:
        if ev.rev <= self.min_rev or not ev.key.startswith(self.prefix):
            return None
        if self.match is None:
            return ev.type, ev.obj
        if ev.type == "DELETED":
            return (ev.type, ev.obj) if self.match(ev.obj) else None
        now = self.match(ev.obj)
        before = ev.prev is not None and self.match(ev.prev)
        if now:
            return ("MODIFIED" if before else "ADDED"), ev.obj
        if before:
            return "DELETED", ev.obj
        return None

    def offer(self, ev: Event) -> bool:
        out = self.filter(ev)
        if out is None:
            return True
        try:
            self.queue.put_nowait((out[0], out[1], ev.rev))
        except asyncio.QueueFull:
            return False
        return True


class Cacher:
    def __init__(self, etcd: EtcdClient, start_rev: int, buffer: int = BUFFER) -> None:
        self.etcd = etcd
        self.rev = self.floor = start_rev
        self.buffer: collections.deque[Event] = collections.deque(maxlen=buffer)
        self.watchers: set[Watcher] = set()
        self.task: asyncio.Task[None] | None = None
        self.progress = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        for w in list(self.watchers):
            self._drop(w)

    async def _run(self) -> None:
        while True:
            try:
                async for batch in self.etcd.watch("/registry/", self.rev + 1):
                    for e in batch:
                        self._dispatch(e)
            except asyncio.CancelledError:
                raise
            except Compacted as exc:
                # We fell behind a compaction: every watcher may miss events; end them all
                # so their clients relist, and restart from the current revision.
                log.warning("cacher fell behind compaction (%s); dropping watchers", exc)
                for w in list(self.watchers):
                    self._drop(w)
                self.buffer.clear()
                self.rev = self.floor = await self.etcd.revision()
            except (EtcdError, OSError, ValueError) as exc:  # etcd restarting: retry
                log.warning("etcd watch failed (%s); retrying", exc)
                await asyncio.sleep(0.2)

    def _dispatch(self, e: WatchEvent) -> None:
        ev = convert(e)
        self.rev = max(self.rev, e.kv.mod_revision)
        if ev is None:
            return
        if len(self.buffer) == self.buffer.maxlen:
            self.floor = self.buffer[0].rev
        self.buffer.append(ev)
        for w in list(self.watchers):
            if not w.offer(ev):
                log.info("watch on %s too slow, ended so it relists", w.prefix)
                self._drop(w)
        self.progress.set()
        self.progress = asyncio.Event()

    def _drop(self, w: Watcher) -> None:
        self.watchers.discard(w)
        w.dropped = True
        try:
            w.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the consumer sees ``dropped`` when it drains

    def add(self, w: Watcher, replay_after: int | None = None) -> bool:
        """Register; with ``replay_after`` first queue the buffered events after it.
        False when the buffer does not reach back that far."""
        if replay_after is not None:
            if replay_after < self.floor:
                return False
            for ev in self.buffer:
                if ev.rev > replay_after and not w.offer(ev):
                    return False
        self.watchers.add(w)
        return True

    def remove(self, w: Watcher) -> None:
        self.watchers.discard(w)

    async def wait_for(self, rev: int, timeout: float = 5.0) -> None:
        """Wait until the cacher has seen revision ``rev`` (a consistent read point)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.rev < rev and loop.time() < deadline:
            try:
                await asyncio.wait_for(self.progress.wait(), deadline - loop.time())
            except TimeoutError:
                break


async def etcd_events(etcd: EtcdClient, w: Watcher, from_rev: int) -> AsyncIterator[
        tuple[str, Obj, int]]:
    """A watcher fed by its own etcd watch (resume points older than the cacher's buffer);
    raises Compacted when ``from_rev`` is gone."""
    async for batch in etcd.watch(w.prefix, from_rev + 1):
        for e in batch:
            ev = convert(e)
            if ev is None:
                continue
            out = w.filter(ev)
            if out is not None:
                yield out[0], out[1], ev.rev
