"""OpenAPI v3 documents (``/openapi/v3`` and ``/openapi/v3/apis/<group>/<version>``).

Enough of upstream's shape for kubectl: ``apply`` needs, per group-version, ``patch``
operations carrying ``x-kubernetes-group-version-kind`` and a ``fieldValidation`` query
parameter (then it trusts server-side validation); ``explain`` needs the kind's schema
(found by its ``x-kubernetes-group-version-kind``) with typed properties and ``$ref`` to
nested schemas, named as upstream does (``io.k8s.api.apps.v1.Deployment``). Schemas carry
the list and patch markers (``x-kubernetes-patch-merge-key``, ``-patch-strategy``,
``-list-type``, ``-list-map-keys``). Doc strings are not vendored, so descriptions are short.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from knetlab.kube.schema.types import (
    DURATION,
    FIELDS_V1,
    INT_OR_STRING,
    MICRO_TIME,
    QUANTITY,
    RAW_EXTENSION,
    TIME,
    Field,
    openapi_name,
    registry,
)

REF = "#/components/schemas/"
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
SCALAR_SCHEMAS: dict[str, dict] = {
    "string": {"type": "string"}, "bool": {"type": "boolean"},
    "int32": {"type": "integer", "format": "int32"}, "int64": {"type": "integer",
                                                               "format": "int64"},
    "uint32": {"type": "integer", "format": "int32"}, "uint64": {"type": "integer",
                                                                 "format": "int64"},
    "double": {"type": "number", "format": "double"}, "float": {"type": "number",
                                                                "format": "float"},
    "bytes": {"type": "string", "format": "byte"},
}
SPECIAL_SCHEMAS: dict[str, dict] = {
    TIME: {"type": "string", "format": "date-time"},
    MICRO_TIME: {"type": "string", "format": "date-time"},
    DURATION: {"type": "string"},
    INT_OR_STRING: {"x-kubernetes-int-or-string": True, "format": "int-or-string",
                    "oneOf": [{"type": "integer"}, {"type": "string"}]},
    QUANTITY: {"x-kubernetes-int-or-string": True,
               "oneOf": [{"type": "string"}, {"type": "number"}]},
    RAW_EXTENSION: {"type": "object"},
    FIELDS_V1: {"type": "object"},
}
# Subresources whose body is a kind of its own: (apiVersion, kind).
SUBRESOURCE_KINDS = {"scale": ("autoscaling/v1", "Scale"), "binding": ("v1", "Binding"),
                     "eviction": ("policy/v1", "Eviction")}
PATCH_TYPES = ["application/apply-patch+yaml", "application/json-patch+json",
               "application/merge-patch+json", "application/strategic-merge-patch+json"]


def _gv_parts(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _gvk(api_version: str, kind: str) -> dict:
    group, version = _gv_parts(api_version)
    return {"group": group, "kind": kind, "version": version}


def _ref(name: str) -> dict:
    return {"allOf": [{"$ref": REF + name}]}


def _query(name: str, type_: str = "string") -> dict:
    return {"name": name, "in": "query", "schema": {"type": type_, "uniqueItems": True}}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "uniqueItems": True}}


class _Builder:
    """Collects component schemas while the paths are built."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict] = {}
        self.gvks: dict[str, list[dict]] = {}

    def add_message(self, message: str) -> str:
        name = openapi_name(message)
        if name in self.schemas:
            return name
        if message in SPECIAL_SCHEMAS or message == QUANTITY + "Value":
            self.schemas[name] = dict(SPECIAL_SCHEMAS.get(message, SPECIAL_SCHEMAS[QUANTITY]))
            return name
        msg = registry().message(message)
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        if registry().is_kind(message):        # Go's inline TypeMeta
            schema["properties"] = {"apiVersion": {"type": "string"},
                                    "kind": {"type": "string"}}
        self.schemas[name] = schema           # before recursing: types refer to themselves
        required = []
        for json_name, f in msg.by_json.items():
            schema["properties"][json_name] = self.property(f)
            if f.required:
                required.append(json_name)
        if required:
            schema["required"] = required
        if name in self.gvks:
            schema["x-kubernetes-group-version-kind"] = self.gvks[name]
        return name

    def property(self, f: Field) -> dict:
        item = self.type_schema(f.type)
        if f.pointer and not f.repeated:        # upstream defaults only non-pointer structs
            item.pop("default", None)
        if f.map_key:
            return {"type": "object", "additionalProperties": item}
        if not f.repeated:
            return item
        prop: dict[str, Any] = {"type": "array", "items": item}
        if f.list_type:
            prop["x-kubernetes-list-type"] = f.list_type
        if f.list_map_keys:
            prop["x-kubernetes-list-map-keys"] = list(f.list_map_keys)
        if f.patch_merge_key:
            prop["x-kubernetes-patch-merge-key"] = f.patch_merge_key
        if f.patch_strategy:
            prop["x-kubernetes-patch-strategy"] = f.patch_strategy
        return prop

    def type_schema(self, type_: str) -> dict:
        if type_ in SCALAR_SCHEMAS:
            return dict(SCALAR_SCHEMAS[type_])
        msg = registry().message(type_)
        if msg.nullable:                    # meta/v1 Verbs: a bare list
            return {"type": "array", "items": self.property(msg.by_json["items"])["items"]}
        out = _ref(self.add_message(type_))
        if type_ not in SPECIAL_SCHEMAS:
            out["default"] = {}
        return out

    def kind_ref(self, api_version: str, kind: str) -> str:
        message = registry().kind(api_version, kind)
        if message is None:
            raise ValueError(f"no type known for {kind} in {api_version}")
        name = openapi_name(message)
        gvk = _gvk(api_version, kind)
        self.gvks.setdefault(name, [])
        if gvk not in self.gvks[name]:
            self.gvks[name].append(gvk)
        if name in self.schemas:
            self.schemas[name]["x-kubernetes-group-version-kind"] = self.gvks[name]
        return self.add_message(message)


def _operation(action: str, op_id: str, tag: str, gvk: dict | None, body: str | None,
               response: str | None, params: list[dict]) -> dict:
    op: dict[str, Any] = {"tags": [tag], "description": f"{action} {gvk['kind'] if gvk else ''}",
                          "operationId": op_id, "parameters": params,
                          "x-kubernetes-action": action}
    if gvk:
        op["x-kubernetes-group-version-kind"] = gvk
    if body:
        types = PATCH_TYPES if action == "patch" else ["*/*"]
        op["requestBody"] = {"content": {t: {"schema": {"$ref": REF + body}} for t in types},
                             "required": True}
    content = {"schema": {"$ref": REF + response}} if response else {"schema": {
        "type": "string"}}
    media = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
    op["responses"] = {"200": {"description": "OK", "content": {m: content for m in media}},
                       "401": {"description": "Unauthorized"}}
    if action in ("post", "put", "patch"):
        op["responses"]["201"] = {"description": "Created", "content": {m: content
                                                                         for m in media}}
    return op


def _write_params(action: str) -> list[dict]:
    params = [_query("dryRun"), _query("fieldManager"), _query("fieldValidation")]
    if action == "patch":
        params.append(_query("force", "boolean"))
    return params


def openapi_v3(group: str, version: str, resources: list[dict]) -> dict:
    """The OpenAPI v3 document of one group-version serving ``resources``.

    Each resource: ``{"name": "deployments", "kind": "Deployment", "namespaced": True,
    "subresources": ["status", "scale"]}``.
    """
    api_version = f"{group}/{version}" if group else version
    root = f"/apis/{group}/{version}" if group else f"/api/{version}"
    tag = f"{(group.split('.')[0] if group else 'core')}_{version}"
    b = _Builder()
    status = b.add_message("k8s.io.apimachinery.pkg.apis.meta.v1.Status")
    delete_options = b.add_message("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions")
    b.schemas[META + "Patch"] = {"type": "object", "description": "Patch body: any of the "
                                 "patch content types."}
    paths: dict[str, dict] = {}
    for res in resources:
        kind, name = res["kind"], res["name"]
        gvk = _gvk(api_version, kind)
        obj = b.kind_ref(api_version, kind)
        lst = b.kind_ref(api_version, kind + "List") if registry().kind(
            api_version, kind + "List") else obj
        ns = "/namespaces/{namespace}" if res.get("namespaced") else ""
        scope = [_path_param("namespace")] if ns else []
        op = f"{version.capitalize()}{'Namespaced' if ns else ''}{kind}"
        list_params = [_query(p) for p in ("labelSelector", "fieldSelector",
                                           "resourceVersion", "continue")]
        list_params += [_query("watch", "boolean"), _query("limit", "integer")]
        paths[f"{root}{ns}/{name}"] = {
            "get": _operation("list", "list" + op, tag, gvk, None, lst, list_params),
            "post": _operation("post", "create" + op, tag, gvk, obj, obj,
                               _write_params("post")),
            "delete": _operation("deletecollection", "deletecollection" + op, tag, gvk,
                                 delete_options, status, list_params),
            "parameters": scope + [_query("pretty")],
        }
        item = [_path_param("name")] + scope + [_query("pretty")]
        paths[f"{root}{ns}/{name}/{{name}}"] = {
            "get": _operation("get", "read" + op, tag, gvk, None, obj, []),
            "put": _operation("put", "replace" + op, tag, gvk, obj, obj, _write_params("put")),
            "patch": _operation("patch", "patch" + op, tag, gvk, META + "Patch", obj,
                                _write_params("patch")),
            "delete": _operation("delete", "delete" + op, tag, gvk, delete_options, status,
                                 [_query("gracePeriodSeconds", "integer"),
                                  _query("propagationPolicy")]),
            "parameters": item,
        }
        if ns:
            paths[f"{root}/{name}"] = {"get": _operation(
                "list", f"list{kind}ForAllNamespaces", tag, gvk, None, lst, list_params)}
        for sub in res.get("subresources", []):
            paths[f"{root}{ns}/{name}/{{name}}/{sub}"] = _subresource(
                b, sub, api_version, kind, op, tag, item)
    schemas = {k: b.schemas[k] for k in sorted(b.schemas)}
    return {"openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": schemas}}


def _subresource(b: _Builder, sub: str, api_version: str, kind: str, op: str, tag: str,
                 params: list[dict]) -> dict:
    if sub == "status":
        sub_av, sub_kind = api_version, kind
    elif sub in SUBRESOURCE_KINDS:
        sub_av, sub_kind = SUBRESOURCE_KINDS[sub]
    else:               # log, exec, portforward, proxy...: not typed objects
        return {"get": _operation("connect", f"connect{op}{sub.capitalize()}", tag, None,
                                  None, None, []),
                "parameters": params}
    ref = b.kind_ref(sub_av, sub_kind)
    gvk = _gvk(sub_av, sub_kind)
    name = sub.capitalize()
    if sub in ("binding", "eviction"):
        return {"post": _operation("post", f"create{op}{name}", tag, gvk, ref, ref,
                                   _write_params("post")),
                "parameters": params}
    return {
        "get": _operation("get", f"read{op}{name}", tag, gvk, None, ref, []),
        "put": _operation("put", f"replace{op}{name}", tag, gvk, ref, ref,
                          _write_params("put")),
        "patch": _operation("patch", f"patch{op}{name}", tag, gvk, META + "Patch", ref,
                            _write_params("patch")),
        "parameters": params,
    }


def document_hash(doc: dict) -> str:
    """The stable hash of a document that its index entry (and kubectl's cache) uses."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha512(text.encode()).hexdigest().upper()[:128]


def gv_path(gv: str) -> str:
    """``v1`` -> ``api/v1``; ``apps/v1`` -> ``apis/apps/v1`` (already-prefixed forms kept)."""
    if gv.startswith(("api/", "apis/")):
        return gv
    return f"apis/{gv}" if "/" in gv else f"api/{gv}"


def openapi_v3_index(gvs: list[str], docs: dict[str, dict] | None = None) -> dict:
    """The ``/openapi/v3`` index: ``{"paths": {"apis/apps/v1": {"serverRelativeURL":
    "/openapi/v3/apis/apps/v1?hash=H"}}}``.

    H hashes the document in ``docs`` (keyed by the gv as given) when there is one; else
    the gv and the vendored types' source, which is stable while neither changes.
    """
    paths = {}
    for gv in gvs:
        doc = (docs or {}).get(gv)
        if doc is None:
            doc = {"gv": gv_path(gv), "source": registry().source}
        path = gv_path(gv)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={document_hash(doc)}"}
    return {"paths": paths}
