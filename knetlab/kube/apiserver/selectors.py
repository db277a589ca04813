"""Label and field selectors: parse the query-string forms and match objects.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``,
``!a`` (and ``a>1``, ``a<1``), comma-separated (commas inside parentheses belong to the
set). Field selectors: ``path=value``, ``path==value``, ``path!=value`` where path is a
dotted field of the object (``metadata.name``, ``spec.nodeName``, ``status.phase``,
``involvedObject.uid``, ``type``, ...); a missing field reads as "".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|<|>|[^\s(),!=<>]+)")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise bad_request(f"unable to parse requirement: {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def parse_labels(text: str) -> list[tuple[str, str, list[str]]]:
    """Requirements as (key, op, values); op in = != in notin exists !exists gt lt."""
    toks, i, reqs = _tokens(text), 0, []

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise bad_request(f"unable to parse requirement: {what} in {text!r}")

    while i < len(toks):
        if toks[i] == "!":
            need(i + 1 < len(toks), "missing key after '!'")
            reqs.append((toks[i + 1], "!exists", []))
            i += 2
        else:
            key = toks[i]
            i += 1
            if i >= len(toks) or toks[i] == ",":
                reqs.append((key, "exists", []))
            elif toks[i] in ("=", "==", "!="):
                op = "!=" if toks[i] == "!=" else "="
                val = ""
                if i + 1 < len(toks) and toks[i + 1] != ",":
                    val = toks[i + 1]
                    i += 1
                reqs.append((key, op, [val]))
                i += 1
            elif toks[i] in (">", "<"):
                need(i + 1 < len(toks), "missing value")
                reqs.append((key, "gt" if toks[i] == ">" else "lt", [toks[i + 1]]))
                i += 2
            elif toks[i] in ("in", "notin"):
                op = toks[i]
                need(i + 1 < len(toks) and toks[i + 1] == "(", "expected '('")
                i += 2
                vals = []
                while i < len(toks) and toks[i] != ")":
                    if toks[i] != ",":
                        vals.append(toks[i])
                    i += 1
                need(i < len(toks), "expected ')'")
                reqs.append((key, op, vals))
                i += 1
            else:
                need(False, f"unexpected {toks[i]!r}")
        if i < len(toks):
            need(toks[i] == ",", f"expected ',' got {toks[i]!r}")
            i += 1
    return reqs


def labels_match(reqs: list[tuple[str, str, list[str]]], labels: dict[str, str]) -> bool:
    for key, op, vals in reqs:
        has, v = key in labels, labels.get(key)
        if op == "exists" and not has or op == "!exists" and has:
            return False
        if op in ("=", "in") and (not has or v not in vals):
            return False
        if op in ("!=", "notin") and has and v in vals:
            return False
        if op in ("gt", "lt"):
            try:
                a, b = int(v or ""), int(vals[0])
            except ValueError:
                return False
            if op == "gt" and not a > b or op == "lt" and not a < b:
                return False
    return True


def selector_to_reqs(sel: dict[str, Any] | None) -> list[tuple[str, str, list[str]]]:
    """A LabelSelector object (matchLabels, matchExpressions) as requirements."""
    if not sel:
        return []
    reqs = [(k, "=", [v]) for k, v in (sel.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for e in sel.get("matchExpressions") or []:
        reqs.append((e.get("key", ""), ops.get(e.get("operator", ""), "in"),
                     list(e.get("values") or [])))
    return reqs


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_fields(text: str) -> list[tuple[str, str, str]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([^=!]+)(!=|==|=)(.*)", part)
        if not m:
            raise bad_request(f'invalid selector: \'{text}\'; can\'t understand \'{part}\'')
        out.append((m.group(1).strip(), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def matcher(label_selector: str = "", field_selector: str = "") -> Matcher | None:
    """One predicate for both selectors, or None when neither filters anything."""
    lreqs = parse_labels(label_selector) if label_selector.strip() else []
    freqs = parse_fields(field_selector) if field_selector.strip() else []
    if not lreqs and not freqs:
        return None

    def match(obj: dict[str, Any]) -> bool:
        if lreqs and not labels_match(lreqs, obj.get("metadata", {}).get("labels") or {}):
            return False
        for path, op, val in freqs:
            if (field_value(obj, path) == val) != (op == "="):
                return False
        return True
    return match
