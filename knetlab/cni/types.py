"""CNI spec types: versions, error codes, errors and results (spec 1.1.0, back to 0.3.0)."""

from __future__ import annotations

# json's C half only: the json package imports re (and re enum, functools...), ~8 ms of CPU
# a plugin run would pay before doing anything.
import _json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any


class _ScanContext:  # what json.JSONDecoder hands the C scanner: the defaults
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float  # NaN, Infinity as json's
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_ScanContext())
_encode = _json.make_encoder({}, None, _json.encode_basestring_ascii, None, ": ", ", ",
                             False, False, True)
_WS = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """json.loads for plugins; a ValueError for what is not one JSON document."""
    if isinstance(text, bytes):
        text = text.decode()
    text = text.strip(_WS)
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("expecting a JSON value at char 0") from None
    except SystemError:  # the C scanner's error needs json.decoder, which is not imported
        raise ValueError("invalid JSON") from None
    if end != len(text):
        raise ValueError(f"extra data at char {end}")
    return obj


def dumps(obj: Any) -> str:
    """json.dumps(obj) (default separators, ASCII)."""
    return "".join(_encode(obj, 0))


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
        self.version = SPEC_VERSION  # the config's, once known (skel sets it)

    def to_dict(self, version: str = SPEC_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_output(cls, stdout: str, stderr: str, returncode: int) -> CNIError:
        try:
            data = loads(stdout)
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
