"""Patches as kube-apiserver applies them: strategic merge, JSON merge (RFC 7386), JSON patch.

The strategic merge follows apimachinery's ``strategicpatch.StrategicMergePatch`` (options
MergeParallelList and IgnoreUnmatchedNulls, as the API server uses it): the patch metadata
(patchMergeKey, patchStrategy) of each field comes from the type registry, starting at the
kind named by the original's apiVersion/kind. Fields the registry does not know (custom
types, unknown keys, RawExtension contents) fall back to JSON merge semantics: maps merge
recursively, lists are replaced.

Order of work inside one map, as upstream: ``$patch`` (replace/delete the map), then
``$retainKeys``, then each ``$setElementOrder/<list>`` with its list, then every other key
(``$deleteFromPrimitiveList/<list>`` removes values from a primitive list). Merged lists keep
upstream's ordering rule: patch items in patch (or $setElementOrder) order, server-only items
interleaved by their position in the live list.
"""

from __future__ import annotations

import copy
from typing import Any

from knetlab.kube.schema.types import SPECIAL, registry

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder/"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"

# A schema node: a message name, ("map", value type) for map fields, or None (unknown).
Schema = Any


def strategic_merge(original: dict, patch: dict) -> dict:
    """Apply a strategic merge patch to ``original`` (not modified); ValueError if invalid."""
    if not isinstance(patch, dict):
        raise ValueError("strategic merge patch must be a JSON object")
    schema = None
    if isinstance(original, dict):
        schema = registry().kind(str(original.get("apiVersion", "")),
                                 str(original.get("kind", "")))
    return _merge_map(copy.deepcopy(original or {}), copy.deepcopy(patch), schema)


def _lookup(schema: Schema, key: str) -> tuple[Schema, str, str]:
    """(sub-schema, patch strategy, patch merge key) of ``key`` in ``schema``."""
    if schema is None:
        return None, "", ""
    if isinstance(schema, tuple):
        value_type = schema[1]
        return (value_type if _is_struct(value_type) else None), "", ""
    f = registry().message(schema).by_json.get(key)
    if f is None:
        return None, "", ""
    if f.map_key:
        sub: Schema = ("map", f.type)
    else:
        sub = f.type if _is_struct(f.type) else None
    # "merge,retainKeys" merges; "retainKeys" alone is only a hint for the client
    strategy = "merge" if "merge" in f.patch_strategy.split(",") else (
        "replace" if f.patch_strategy == "replace" else "")
    return sub, strategy, f.patch_merge_key


def _is_struct(type_: str) -> bool:
    return "." in type_ and type_ not in SPECIAL


def _merge_map(original: dict, patch: dict, schema: Schema) -> dict:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        if directive != "merge":
            raise ValueError(f"unknown $patch directive {directive!r} in a map")
    if original is None:
        original = {}
    _retain_keys(original, patch)
    _set_element_orders(original, patch, schema)
    for key, value in patch.items():
        delete_list = key.startswith(DELETE_PRIMITIVE)
        if delete_list:
            key = key[len(DELETE_PRIMITIVE):]
        if value is None:
            original.pop(key, None)
            continue
        if key not in original:
            if not delete_list:
                original[key] = _fresh(value, schema, key)
            continue
        current = original[key]
        sub, strategy, merge_key = _lookup(schema, key)
        if isinstance(current, dict) and isinstance(value, dict):
            original[key] = value if strategy == "replace" else _merge_map(current, value, sub)
        elif isinstance(current, list) and isinstance(value, list):
            if delete_list:
                original[key] = [v for v in current if v not in value]
            elif strategy == "merge":
                original[key] = _merge_list(current, value, sub, merge_key)
            else:
                original[key] = value
        elif not delete_list:
            original[key] = value
    return original


def _fresh(value: Any, schema: Schema, key: str) -> Any:
    """A patch value for a key the original lacks: applied to nothing, so that no
    directive or null is stored (upstream stores it as is, then the typed decode drops them)."""
    sub, strategy, merge_key = _lookup(schema, key)
    if isinstance(value, dict):
        return value if strategy == "replace" else _merge_map({}, value, sub)
    if isinstance(value, list) and strategy == "merge":
        return _merge_list([], value, sub, merge_key)
    return value


def _retain_keys(original: dict, patch: dict) -> None:
    if RETAIN_KEYS not in patch:
        return
    keep = patch.pop(RETAIN_KEYS)
    if not isinstance(keep, list):
        raise ValueError("$retainKeys must be a list of field names")
    for k, v in patch.items():
        if v is not None and not k.startswith((SET_ORDER, DELETE_PRIMITIVE)) and k not in keep:
            raise ValueError(f"$retainKeys does not name the patched field {k!r}")
    for k in list(original):
        if k not in keep:
            del original[k]


def _set_element_orders(original: dict, patch: dict, schema: Schema) -> None:
    for directive in [k for k in patch if k.startswith(SET_ORDER)]:
        order = patch.pop(directive)
        key = directive[len(SET_ORDER):]
        if not isinstance(order, list):
            raise ValueError(f"{directive} must be a list")
        sub, strategy, merge_key = _lookup(schema, key)
        live, wanted = original.get(key), patch.pop(key, None)
        if live is not None and wanted is not None:
            if not isinstance(live, list) or not isinstance(wanted, list):
                raise ValueError(f"{key}: $setElementOrder applies to a list")
            merged = (_merge_list(live, wanted, sub, merge_key) if strategy == "merge"
                      else list(wanted))
        elif wanted is not None:
            merged = _fresh(wanted, schema, key)
        elif live is not None:
            merged = live
        else:
            continue
        if not isinstance(merged, list):
            raise ValueError(f"{key}: $setElementOrder applies to a list")
        in_order = [m for m in merged if _index(order, m, merge_key) >= 0]
        server_only = [m for m in merged if _index(order, m, merge_key) < 0]
        original[key] = _normalize(in_order, server_only, order, live or [], merge_key)


def _merge_list(original: list, patch: list, schema: Schema, merge_key: str) -> list:
    if not original and not patch:
        return original
    if not all(isinstance(p, dict) for p in original + patch):
        # primitives (finalizers...): a set union in first-seen order
        merged: list = []
        for v in original + patch:
            if v not in merged:
                merged.append(v)
        order = patch
    else:
        if not merge_key:
            raise ValueError("cannot merge lists of objects without a patch merge key")
        original, patch = _special_elements(list(original), patch, merge_key)
        merged = list(original)
        for item in patch:
            if merge_key not in item:
                raise ValueError(f"list item {item} has no merge key {merge_key!r}")
            for i, live in enumerate(merged):
                if isinstance(live, dict) and live.get(merge_key) == item[merge_key]:
                    merged[i] = _merge_map(live, item, schema)
                    break
            else:
                merged.append(_merge_map({}, item, schema))
        order = patch
    in_patch = [m for m in merged if _index(order, m, merge_key) >= 0]
    server_only = [m for m in merged if _index(order, m, merge_key) < 0]
    return _normalize(in_patch, server_only, order, original, merge_key)


def _special_elements(original: list, patch: list, merge_key: str) -> tuple[list, list]:
    """Apply ``{"$patch": "delete"|"replace"}`` items; returns (original, plain patch items)."""
    plain, replace = [], False
    for item in patch:
        directive = item.get(DIRECTIVE)
        if directive is None:
            plain.append(item)
        elif directive == "delete":
            if merge_key not in item:
                raise ValueError(f"$patch: delete item {item} has no merge key {merge_key!r}")
            original = [o for o in original if not (isinstance(o, dict)
                                                    and o.get(merge_key) == item[merge_key])]
        elif directive == "replace":
            replace = True
        else:
            raise ValueError(f"unknown $patch directive {directive!r} in a list")
    if replace:
        return plain, []
    return original, plain


def _index(items: list, item: Any, merge_key: str) -> int:
    if merge_key and isinstance(item, dict):
        want = item.get(merge_key)
        for i, v in enumerate(items):
            if isinstance(v, dict) and v.get(merge_key) == want:
                return i
        return -1
    return items.index(item) if item in items else -1


def _normalize(patch_items: list, server_only: list, patch_order: list, server_order: list,
               merge_key: str) -> list:
    """Upstream normalizeElementOrder: sort each part by its order list, then interleave
    server-only items before the first patch item that follows them in the live list."""
    patch_items = sorted(patch_items, key=lambda m: _index(patch_order, m, merge_key))
    server_only = sorted(server_only, key=lambda m: _index(server_order, m, merge_key))
    out: list = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if i >= len(server_only):
            out.append(patch_items[j])
            j += 1
        elif j >= len(patch_items):
            out.append(server_only[i])
            i += 1
        else:
            li = _index(server_order, server_only[i], merge_key)
            ri = _index(server_order, patch_items[j], merge_key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(server_only[i])
                i += 1
            else:
                out.append(patch_items[j])
                j += 1
    return out


def json_merge(original: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``application/merge-patch+json``)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json_merge(out.get(key), value)
    return out


def json_patch(original: Any, ops: list) -> Any:
    """RFC 6902 JSON patch (``application/json-patch+json``); ValueError when an op fails."""
    if not isinstance(ops, list):
        raise ValueError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(original)
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ValueError(f"JSON patch operation {n} needs 'op' and 'path'")
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"JSON patch operation {n} ({op['op']} {op['path']}) "
                             f"failed: {e}") from None
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for p in parts[:-1]:
        doc = doc[_list_index(doc, p, False)] if isinstance(doc, list) else doc[p]
    return doc


def _list_index(lst: list, part: str, append: bool) -> int:
    if part == "-" and append:
        return len(lst)
    if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
        raise ValueError(f"bad array index {part!r}")
    i = int(part)
    if i > len(lst) or (i == len(lst) and not append):
        raise IndexError(f"index {i} out of range")
    return i


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        return parent[_list_index(parent, parts[-1], False)]
    if not isinstance(parent, dict):
        raise TypeError(f"{path}: parent is not an object or array")
    if parts[-1] not in parent:
        raise KeyError(f"{path} does not exist")
    return parent[parts[-1]]


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        parent.insert(_list_index(parent, parts[-1], True), value)
    elif isinstance(parent, dict):
        parent[parts[-1]] = value
    else:
        raise TypeError(f"{path}: parent is not an object or array")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise ValueError("cannot remove the whole document")
    _get(doc, path)             # raises when absent
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        del parent[_list_index(parent, parts[-1], False)]
    else:
        del parent[parts[-1]]
    return doc


def _apply_op(doc: Any, op: dict) -> Any:
    kind, path = op["op"], op["path"]
    if kind in ("add", "replace", "test") and "value" not in op:
        raise ValueError(f"{kind} {path} needs a 'value'")
    if kind == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if kind == "remove":
        return _remove(doc, path)
    if kind == "replace":
        if not path:
            return copy.deepcopy(op["value"])
        return _add(_remove(doc, path), path, copy.deepcopy(op["value"]))
    if kind in ("move", "copy"):
        if "from" not in op:
            raise ValueError(f"{kind} {path} needs 'from'")
        if kind == "move" and (path + "/").startswith(op["from"] + "/") and path != op["from"]:
            raise ValueError(f"cannot move {op['from']} into its own child {path}")
        value = copy.deepcopy(_get(doc, op["from"]))
        if kind == "move":
            doc = _remove(doc, op["from"])
        return _add(doc, path, value)
    if kind == "test":
        if _get(doc, path) != op["value"]:
            raise ValueError(f"test {path}: value differs")
        return doc
    raise ValueError(f"unknown JSON patch op {kind!r}")
