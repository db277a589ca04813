"""Typed reads from a YAML mapping; every failure names file, line, field and fix."""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from knetlab.errors import ConfigError
from knetlab.topologies.yamlsrc import LineDict, LineList

_NAME = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")  # a DNS label, as Kubernetes names
NAME_MAX = 31
#: A node's uplink is ``<node>-eth0`` and Linux interface names hold 15 characters.
NODE_NAME_MAX = 15 - len("-eth0")
#: Hosts knetlab itself adds to a lab (ToRs, spines, route reflectors, the VPC router).
_RESERVED = re.compile(r"^((tor|spine|rr)-[0-9]+|vpc-router)$")


def name_problem(value: str, max_len: int = NAME_MAX, host: bool = False) -> str | None:
    """Why ``value`` cannot name a lab, node or pod (``host``: one of the lab's hosts), or
    None. Shared by the topology and by live ``node add`` / ``pod add``."""
    if not _NAME.match(value):
        return (f"{value!r} is not a valid name: use lowercase letters, digits and '-', "
                "starting with a letter and ending with a letter or digit")
    if len(value) > max_len:
        why = " (its uplink <name>-eth0 must fit a 15-character interface name)" \
            if max_len == NODE_NAME_MAX else ""
        return f"{value!r} is longer than {max_len} characters{why}"
    if host and _RESERVED.match(value):
        return f"{value!r} is the name of a host knetlab adds itself"
    return None


class Fields:
    """Reads fields of one mapping at ``path`` (dotted, for messages) in ``file``."""

    def __init__(self, data: Any, file: str, path: str, line: int = 0) -> None:
        if data is None:
            data = LineDict()
            data.lines = {}
            data.line = line
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, not {_kind(data)}", file=file,
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

    def name(self, key: str, default: str | None = None, max_len: int = NAME_MAX,
             host: bool = False) -> str:
        value = self.str(key, default)
        problem = name_problem(value, max_len, host)
        if problem:
            avoid = " other than tor-N, spine-N, rr-N and vpc-router" if host else ""
            raise self.error(key, problem, f"use a name of at most {max_len} lowercase letters, "
                             f"digits and '-'{avoid}")
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
            raise self.error(key, f"must be a list, not {_kind(value)}",
                             "write a YAML list (- item)")
        return value  # type: ignore[return-value]


def _kind(value: Any) -> str:
    """A YAML reader's word for a value's type (LineList is a list to them)."""
    for kind, word in ((bool, "true/false"), (dict, "a mapping"), (list, "a list"),
                       (str, "a string"), (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return word
    return "empty" if value is None else type(value).__name__
