"""YAML loading that remembers where each key was written, so errors can name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from knetlab.errors import ConfigError

MAX_BYTES = 1 << 20


class LineDict(dict):
    """A mapping from YAML with ``line`` (its own) and ``lines`` (each key's line, 1-based)."""

    line: int = 0
    lines: dict[Any, int]


class LineList(list):
    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError("a key must be a plain word, not a list or mapping",
                              line=key_node.start_mark.line + 1, fix="write key: value")
        if key in out:
            raise ConfigError(f"key {key!r} is given twice", line=key_node.start_mark.line + 1,
                              fix="keep one of them")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML document; syntax errors become ConfigError naming file and line."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # bounded: `up /dev/zero` must not eat the memory
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path),
                          fix="give the path of a topology YAML file") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES // 1024} KiB: not a topology", file=str(path),
                          fix="give the path of a topology YAML file")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text file (byte {exc.start} is not UTF-8)", file=str(path),
                          line=data.count(b"\n", 0, exc.start) + 1,
                          fix="give the path of a topology YAML file") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as exc:
        raise exc.at(str(path)) from None
    except yaml.reader.ReaderError as exc:  # a control character: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"not valid YAML: control character #x{char:04x} is not allowed",
                          file=str(path), line=line, fix="remove the control character"
                          ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"not valid YAML: {problem}", file=str(path),
                          line=line, fix="correct the YAML syntax") from None
    except RecursionError:  # deeply nested flow collections
        raise ConfigError("not valid YAML: nested too deeply", file=str(path),
                          fix="write a topology, not a deeply nested structure") from None
