"""Namespaces: the ones every cluster has, the ``kubernetes`` Service, and namespace deletion.

At start the server ensures ``default``, ``kube-system``, ``kube-public``,
``kube-node-lease`` and the ``kubernetes`` Service in ``default`` (first address of the
service CIDR, port 443) exist. Deleting a namespace marks it Terminating (registry); the
``NamespaceDeleter`` then deletes everything in it (pods gracefully, as the namespace
controller does) and removes the namespace once it is empty. Terminating namespaces found
at start are resumed.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import StatusError
from .registry import SYSTEM_NAMESPACES, Registry
from .resources import BY_PLURAL, RESOURCES

log = logging.getLogger("knetlab.kube.apiserver.namespaces")
NAMESPACES = BY_PLURAL["namespaces"]


async def bootstrap(reg: Registry, api_port: int) -> None:
    for ns in SYSTEM_NAMESPACES:
        try:
            await reg.create(NAMESPACES, None, {"metadata": {"name": ns}})
        except StatusError as exc:
            if exc.code != 409:
                raise
    svc = {"metadata": {"name": "kubernetes", "namespace": "default",
                        "labels": {"component": "apiserver", "provider": "kubernetes"}},
           "spec": {"type": "ClusterIP", "clusterIP": reg.alloc.first_ip,
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                               "targetPort": api_port}]}}
    try:
        await reg.get(BY_PLURAL["services"], "default", "kubernetes")
    except StatusError as exc:
        if exc.code != 404:
            raise
        await reg.create(BY_PLURAL["services"], "default", svc)


class NamespaceDeleter:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str) -> None:
        if name not in self.tasks or self.tasks[name].done():
            self.tasks[name] = asyncio.create_task(self._finalize(name))

    async def resume(self) -> None:
        for ns in (await self.reg.list(NAMESPACES, None))["items"]:
            if ns["metadata"].get("deletionTimestamp"):
                self.start(ns["metadata"]["name"])

    async def stop(self) -> None:
        for t in self.tasks.values():
            t.cancel()

    async def _finalize(self, name: str) -> None:
        delay = 0.05
        while True:
            try:
                if await self._delete_content(name):
                    await self.reg.remove(NAMESPACES, None, name)
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep trying: a namespace must not stick
                log.exception("deleting the content of namespace %s", name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _delete_content(self, name: str) -> bool:
        """Delete what is left; True once nothing is left."""
        empty = True
        for res in RESOURCES:
            if not res.namespaced:
                continue
            items = (await self.reg.list(res, name))["items"]
            for obj in items:
                empty = False
                meta = obj["metadata"]
                if meta.get("deletionTimestamp") and res.kind != "Pod":
                    continue
                try:
                    await self.reg.delete(res, name, meta["name"],
                                          {"propagationPolicy": "Background"})
                except StatusError as exc:
                    if exc.code not in (404, 409):
                        raise
        return empty
