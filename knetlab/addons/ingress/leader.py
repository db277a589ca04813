"""Leader election on a coordination.k8s.io Lease, as ingress-nginx's ``--election-id``.

Every controller pod serves traffic; only the leader writes to the API (Ingress status,
Events, the exposure EndpointSlice), so two pods never fight over a status or double an
Event. client-go's leaderelection, reduced: the holder renews ``renewTime`` every
``RENEW`` seconds; another candidate takes the Lease once it is ``leaseDurationSeconds``
old. Writes carry the Lease's resourceVersion, so two candidates cannot both win a round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from knetlab.kube.client import ApiError, KubeClient

log = logging.getLogger("knetlab.addons.ingress.leader")
DURATION = 15   # seconds a silent leader keeps the Lease
RENEW = 2.0     # seconds between renewals (and between tries of a candidate)


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str) -> datetime | None:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except (TypeError, ValueError):
            continue
    return None


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str,
                 on_change: Callable[[bool], None]) -> None:
        self.client, self.ns, self.name, self.identity = client, namespace, name, identity
        self.on_change = on_change
        self.leader = False
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="leader", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                won = self.try_acquire()
            except Exception as exc:  # noqa: BLE001 - API away: not leader until it is back
                log.debug("lease %s: %s", self.name, exc)
                won = False
            if won != self.leader:
                self.leader = won
                log.info("%s leadership of %s/%s", "took" if won else "lost", self.ns,
                         self.name)
                self.on_change(won)
            self._stop.wait(RENEW)

    def try_acquire(self) -> bool:
        now = _now()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": DURATION,
                "renewTime": _fmt(now)}
        try:
            lease: dict[str, Any] = self.client.get("leases", self.name, self.ns)
        except ApiError as exc:
            if exc.code != 404:
                raise
            try:
                self.client.create("leases", {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.ns},
                    "spec": {**spec, "acquireTime": _fmt(now)}}, self.ns)
                return True
            except ApiError as exc2:
                if exc2.code == 409:
                    return False
                raise
        cur = lease.get("spec") or {}
        renewed = _parse(cur.get("renewTime") or "")
        expired = renewed is None or (now - renewed).total_seconds() > int(
            cur.get("leaseDurationSeconds") or DURATION)
        if cur.get("holderIdentity") != self.identity and not expired:
            return False
        if cur.get("holderIdentity") != self.identity:
            spec["acquireTime"] = _fmt(now)
            spec["leaseTransitions"] = int(cur.get("leaseTransitions") or 0) + 1
        lease["spec"] = {**cur, **spec}
        try:
            self.client.update("leases", lease, self.ns)  # carries its resourceVersion
        except ApiError as exc:
            if exc.code == 409:
                return False
            raise
        return True
