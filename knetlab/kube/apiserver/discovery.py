"""Discovery documents, all computed from the resource table.

``/version``, legacy discovery (``/api`` APIVersions, ``/apis`` APIGroupList,
``/api/v1`` and ``/apis/<g>/<v>`` APIResourceList) and aggregated discovery
(``APIGroupDiscoveryList``, apidiscovery.k8s.io v2 and v2beta1), which client-go picks
when the response Content-Type says so. Subresources are listed as ``deployments/scale``
(group autoscaling, kind Scale) etc. so ``kubectl scale`` finds them.
"""

from __future__ import annotations

import platform
from typing import Any

from .resources import GROUPS, SUB_VERBS, VERBS, Resource, in_group, sub_kind

Obj = dict[str, Any]
MINOR = "33"
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"


def version() -> Obj:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"major": "1", "minor": MINOR, "emulationMajor": "1", "emulationMinor": MINOR,
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
            "gitVersion": f"v1.{MINOR}.0-knetlab", "gitCommit": "knetlab",
            "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2", "compiler": "gc", "platform": f"linux/{machine}"}


def api_versions() -> Obj:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def _gv(group: str, version: str) -> Obj:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_groups() -> Obj:
    groups = []
    for g, v in GROUPS:
        if g:
            groups.append({"name": g, "versions": [_gv(g, v)], "preferredVersion": _gv(g, v)})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> Obj | None:
    for g, v in GROUPS:
        if g == group and g:
            return {"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [_gv(g, v)],
                    "preferredVersion": _gv(g, v)}
    return None


def _verbs(r: Resource) -> list[str]:
    return ["create"] if r.kind == "Binding" else VERBS


def resource_list(group: str, version: str) -> Obj | None:
    if (group, version) not in GROUPS:
        return None
    out = []
    for r in in_group(group, version):
        item: Obj = {"name": r.plural, "singularName": r.name, "namespaced": r.namespaced,
                     "kind": r.kind, "verbs": _verbs(r)}
        if r.short_names:
            item["shortNames"] = list(r.short_names)
        if r.categories:
            item["categories"] = list(r.categories)
        out.append(item)
        for sub in r.subresources:
            g, v, k = sub_kind(r, sub)
            s: Obj = {"name": f"{r.plural}/{sub}", "singularName": "",
                      "namespaced": r.namespaced, "kind": k, "verbs": SUB_VERBS[sub]}
            if (g, v) != (r.group, r.version):
                s["group"], s["version"] = g, v
            out.append(s)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": out}


def _agg_resource(r: Resource) -> Obj:
    item: Obj = {"resource": r.plural,
                 "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                 "scope": "Namespaced" if r.namespaced else "Cluster",
                 "singularResource": r.name, "verbs": _verbs(r)}
    if r.short_names:
        item["shortNames"] = list(r.short_names)
    if r.categories:
        item["categories"] = list(r.categories)
    subs = []
    for sub in r.subresources:
        g, v, k = sub_kind(r, sub)
        subs.append({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": k},
                     "verbs": SUB_VERBS[sub]})
    if subs:
        item["subresources"] = subs
    return item


def aggregated(core: bool, version: str = "v2") -> Obj:
    """APIGroupDiscoveryList of the core group (``/api``) or of the named groups
    (``/apis``)."""
    items = []
    for g, v in GROUPS:
        if bool(g) == core:
            continue
        items.append({"metadata": {"name": g, "creationTimestamp": None},
                      "versions": [{"version": v, "freshness": "Current",
                                    "resources": [_agg_resource(r) for r in in_group(g, v)]}]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def openapi_resources(group: str, version: str) -> list[Obj]:
    """The resource list the schema package's ``openapi_v3`` takes."""
    return [{"name": r.plural, "kind": r.kind, "namespaced": r.namespaced,
             "subresources": [s for s in r.subresources
                              if s in ("status", "scale")]} for r in in_group(group, version)]


def gv_paths() -> list[str]:
    return [f"apis/{g}/{v}" if g else f"api/{v}" for g, v in GROUPS]
