"""The kubelet's v1 Events about its pods (Pulled, Created, Started, Killing, BackOff, Failed,
Unhealthy), as ``kubectl describe pod`` shows them.

A pod worker never waits on the API for an event: ``PodEvents.emit`` puts it on a bounded
queue and returns; one background thread per kubelet writes it. A repeat of the same
event (same pod, container, reason and message: a crash loop's BackOff, a failing probe's
Unhealthy) is not a new object but one merge patch raising ``count`` and
``lastTimestamp``, as upstream's event correlator does, so a crash-looping pod costs one
small write per back-off, never a growing list. When the API is slow, events are dropped
(the queue is bounded): they are best effort, as upstream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knetlab.kube.client import KubeClient

log = logging.getLogger("knetlab.kube.events")
Obj = dict[str, Any]
SEEN_MAX = 4096  # correlation entries kept (oldest forgotten first)


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def field_path(container: str, init: bool = False) -> str:
    return f"spec.{'initContainers' if init else 'containers'}{{{container}}}"


class PodEvents:
    """Events of one kubelet (``source.host`` = its node), written from one thread."""

    def __init__(self, client: KubeClient, node: str) -> None:
        self.client, self.node = client, node
        self._q: queue.Queue[tuple[Obj, str, str, str, str] | None] = queue.Queue(maxsize=1000)
        # (uid, fieldPath, reason, message) -> [event name, count]
        self._seen: dict[tuple[str, str, str, str], list[Any]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, involved: Obj, etype: str, reason: str, message: str,
             path: str = "") -> None:
        """Queue one event about ``involved`` ({kind, name, namespace, uid}); never blocks."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events", daemon=True)
                self._thread.start()
        try:
            self._q.put_nowait((involved, etype, reason, message, path))
        except queue.Full:
            log.debug("event %s dropped: queue full", reason)

    def stop(self) -> None:
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            try:
                self._write(*item)
            except Exception as exc:  # noqa: BLE001 - events are best effort
                log.debug("event %s not written: %s", item[2], exc)

    def _write(self, involved: Obj, etype: str, reason: str, message: str, path: str) -> None:
        ns = involved.get("namespace") or "default"
        key = (involved.get("uid", ""), path, reason, message)
        ts = _ts()
        seen = self._seen.get(key)
        if seen is not None:
            seen[1] += 1
            try:
                self.client.patch("events", seen[0], {"count": seen[1], "lastTimestamp": ts},
                                  ns)
                return
            except Exception:  # noqa: BLE001 - gone (TTL, namespace): write a new one
                self._seen.pop(key, None)
        obj_ref = {"apiVersion": "v1", "kind": involved.get("kind", "Pod"),
                   "name": involved.get("name"), "namespace": ns,
                   "uid": involved.get("uid", "")}
        if path:
            obj_ref["fieldPath"] = path
        name = f"{str(involved.get('name', 'x'))[:200]}.{time.time_ns():x}"
        ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
              "involvedObject": obj_ref, "reason": reason, "message": message, "type": etype,
              "count": 1, "firstTimestamp": ts, "lastTimestamp": ts,
              "source": {"component": "kubelet", "host": self.node},
              "reportingComponent": "kubelet", "reportingInstance": self.node}
        created = self.client.create("events", ev, ns)
        if len(self._seen) >= SEEN_MAX:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = [created["metadata"]["name"], 1]
