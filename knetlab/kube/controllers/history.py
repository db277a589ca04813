"""ControllerRevisions: the revision history of StatefulSets and DaemonSets.

As kube-controller-manager does, each distinct pod template a StatefulSet or DaemonSet has
had is one ControllerRevision owned by it (controller reference), named
``<owner>-<template hash>`` and labelled with the template's labels (so ``kubectl rollout
history`` finds it through the owner's selector). Its ``data`` is the strategic merge
patch that restores that template (``{"spec": {"template": {..., "$patch": "replace"}}}``),
which is what ``kubectl rollout undo`` sends back as a PATCH; its ``revision`` is one more
than any other of the owner's when the template becomes current, so going back to an old
template (an undo) renumbers that revision as the newest, as upstream. Revisions beyond
``spec.revisionHistoryLimit`` (default 10) are deleted oldest first, never the current one.
``sync_history`` is idempotent: it reads the shared informer's cache and writes only what
differs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from knetlab.kube.client import ApiError
from knetlab.kube.controllers.util import Obj, meta, owned_by, owner_ref

if TYPE_CHECKING:
    from knetlab.kube.controllers.base import Controller

log = logging.getLogger("knetlab.kube.controllers.history")
RESOURCE = "controllerrevisions"
HASH = "controller-revision-hash"


def revision_object(owner: Obj, kind: str, name: str, hash_label: str, revision: int) -> Obj:
    m = meta(owner)
    template = (owner.get("spec") or {}).get("template") or {}
    lbls = dict((template.get("metadata") or {}).get("labels") or {})
    lbls[HASH] = hash_label
    return {"apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": name, "namespace": m["namespace"], "labels": lbls,
                         "ownerReferences": [owner_ref(owner, kind, "apps/v1")]},
            "data": {"spec": {"template": {**template, "$patch": "replace"}}},
            "revision": revision}


def revision_of(cr: Obj) -> int:
    try:
        return int(cr.get("revision") or 0)
    except (TypeError, ValueError):
        return 0


def sync_history(ctl: Controller, owner: Obj, kind: str, name: str, hash_label: str) -> None:
    """Make ControllerRevision ``name`` (the owner's current template) the newest one."""
    m = meta(owner)
    ns = m["namespace"]
    owned = [cr for cr in ctl.informer(RESOURCE).items()
             if meta(cr).get("namespace") == ns and owned_by(cr, owner)]
    newest = max((revision_of(cr) for cr in owned), default=0)
    cur = next((cr for cr in owned if meta(cr)["name"] == name), None)
    try:
        if cur is None:
            ctl.client.create(RESOURCE, revision_object(owner, kind, name, hash_label,
                                                        newest + 1), ns)
        elif revision_of(cur) < newest or (revision_of(cur) == newest and sum(
                1 for cr in owned if revision_of(cr) == newest) > 1):
            ctl.client.patch(RESOURCE, name, {"revision": newest + 1}, ns)
    except ApiError as exc:
        if exc.code not in (404, 409):  # 409: the cache was behind; the next sync sees it
            raise
    limit = int((owner.get("spec") or {}).get("revisionHistoryLimit", 10))
    old = sorted((cr for cr in owned if meta(cr)["name"] != name), key=revision_of)
    for cr in old[:max(0, len(old) - limit)]:
        try:
            ctl.client.delete(RESOURCE, meta(cr)["name"], ns)
        except ApiError as exc:
            if exc.code != 404:
                raise
