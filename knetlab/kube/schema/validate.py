"""Strict field validation (``?fieldValidation=Strict``): the fields an object's type lacks.

Paths read as kube-apiserver prints them, ``.spec.template.spec.containers[0].imagee``.
``apiVersion`` and ``kind`` are allowed on every kind (Go's inline TypeMeta); maps (labels,
annotations, nodeSelector, data...) take any key; RawExtension and other special types
(IntOrString, Quantity, Time) hold anything; an unknown apiVersion/kind has no unknown
fields (nothing to check against). Wrong value types are the decoder's business, not this.
"""

from __future__ import annotations

from typing import Any

from knetlab.kube.schema.types import SPECIAL, registry


def unknown_fields(obj: dict) -> list[str]:
    """Dotted paths of the fields of ``obj`` that its type (apiVersion/kind) does not have."""
    if not isinstance(obj, dict):
        return []
    name = registry().kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if name is None:
        return []
    out: list[str] = []
    _walk(name, obj, "", out)
    return out


def _walk(name: str, obj: Any, path: str, out: list[str]) -> None:
    if not isinstance(obj, dict):
        return
    msg = registry().message(name)
    is_kind = registry().is_kind(name)
    for key, value in obj.items():
        f = msg.by_json.get(key)
        if f is None:
            if not (is_kind and key in ("apiVersion", "kind")):
                out.append(f"{path}.{key}")
            continue
        if value is None or "." not in f.type or f.type in SPECIAL:
            continue
        sub = registry().message(f.type)
        if f.map_key:
            if isinstance(value, dict):
                for k, v in value.items():
                    _walk(f.type, v, f"{path}.{key}.{k}", out)
        elif f.repeated or sub.nullable:
            if isinstance(value, list) and not sub.nullable:
                for i, item in enumerate(value):
                    _walk(f.type, item, f"{path}.{key}[{i}]", out)
        else:
            _walk(f.type, value, f"{path}.{key}", out)
