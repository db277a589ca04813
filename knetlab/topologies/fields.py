"""Typed reads from a YAML mapping; every failure names file, line, field and fix."""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from knetlab.errors import ConfigError
from knetlab.topologies.yamlsrc import LineDict, LineList

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class Fields:
    """Reads fields of one mapping at ``path`` (dotted, for messages) in ``file``."""

    def __init__(self, data: Any, file: str, path: str, line: int = 0) -> None:
        if data is None:
            data = LineDict()
            data.lines = {}
            data.line = line
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, not {type(data).__name__}", file=file,
                              line=getattr(data, "line", line) or None, field=path or "(top)",
                              fix="write key: value pairs here")
        self.data, self.file, self.path = data, file, path
        self.line = getattr(data, "line", line)

    def where(self, key: str) -> int | None:
        lines = getattr(self.data, "lines", {})
        return lines.get(key) or self.line or None

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str, fix: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.where(key), field=self.field(key),
                           fix=fix)

    def only(self, allowed: list[str]) -> None:
        for key in self.data:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                fix = (f"did you mean {near[0]!r}?" if near
                       else f"allowed keys: {', '.join(allowed)}")
                raise self.error(str(key), "unknown key", fix)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def sub(self, key: str) -> Fields:
        return Fields(self.data.get(key), self.file, self.field(key), self.where(key) or 0)

    def str(self, key: str, default: str | None = None, choices: list[str] | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required", f"set {self.field(key)}")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {value!r}", "quote the value")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}",
                             f"use one of {', '.join(choices)}")
        return value

    def name(self, key: str, default: str | None = None) -> str:
        value = self.str(key, default)
        if not _NAME.match(value):
            raise self.error(key, f"{value!r} is not a valid name",
                             "use lowercase letters, digits and '-', starting with a letter, "
                             "at most 31 characters")
        return value

    def int(self, key: str, default: int | None = None, lo: int | None = None,
            hi: int | None = None) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required", f"set {self.field(key)} to a number")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, not {value!r}", "write a number")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise self.error(key, f"{value} is out of range", f"use a value from {lo} to {hi}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}", "write true or false")
        return value

    def cidr(self, key: str, default: str) -> ipaddress.IPv4Network:
        value = self.str(key, default)
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise self.error(key, f"{value!r} is not a network: {exc}",
                             "write an IPv4 network such as 10.244.0.0/16 with host bits zero"
                             ) from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise self.error(key, "IPv6 is not supported", "use an IPv4 network")
        return net

    def list(self, key: str) -> LineList:
        value = self.data.get(key)
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {type(value).__name__}",
                             "write a YAML list (- item)")
        return value  # type: ignore[return-value]
