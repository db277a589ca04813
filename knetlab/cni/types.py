"""CNI spec types: versions, error codes, errors and results (spec 1.1.0, back to 0.3.0)."""

from __future__ import annotations

import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any


SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

# Well-known error codes (CNI spec, "Error" section)
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now
LIMITED_CONNECTIVITY = 51  # STATUS: ADD works, with limited connectivity
# 100 and up are the plugin's own
INTERNAL = 999


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"CNI error {code}: {msg}" + (f" ({details})" if details else ""))
        self.code, self.msg, self.details = code, msg, details

    def to_dict(self, version: str = SPEC_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_output(cls, stdout: str, stderr: str, returncode: int) -> CNIError:
        try:
            data = json.loads(stdout)
            return cls(int(data["code"]), str(data.get("msg", "")), str(data.get("details", "")))
        except (ValueError, KeyError, TypeError):
            return cls(INTERNAL, f"plugin exited {returncode} without an error object",
                       (stderr or stdout).strip()[-500:])


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def check_version(conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"incompatible CNI versions; config is {version!r}, "
                       f"plugin supports {SUPPORTED_VERSIONS}")
    return version


def convert_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Express a 1.x result in the requested version's shape (0.3/0.4 carry ips[].version)."""
    out = dict(result)
    out["cniVersion"] = version
    if version_tuple(version) < (1, 0, 0):
        out["ips"] = [{**ip, "version": "6" if ":" in ip["address"] else "4"}
                      for ip in result.get("ips", [])]
    else:
        out["ips"] = [{k: v for k, v in ip.items() if k != "version"}
                      for ip in result.get("ips", [])]
    return out


def add_result(version: str, interfaces: list[dict[str, Any]], ips: list[dict[str, Any]],
               routes: list[dict[str, Any]], dns: dict[str, Any]) -> dict[str, Any]:
    """An ADD result: the pod's interface is the last of ``interfaces`` and every IP
    points at it, as the reference plugins report."""
    result = {"cniVersion": version, "interfaces": interfaces,
              "ips": [{**ip, "interface": len(interfaces) - 1} for ip in ips],
              "routes": routes, "dns": dns}
    return convert_result(result, version)
