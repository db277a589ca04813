"""The plugin side of the CNI protocol (like libcni's skel.PluginMain).

Reads CNI_* from the environment and the network configuration from stdin, calls the
plugin's function for the command, writes the result (or the spec error object) to stdout
and exits 0 (or 1). Plugins implement ``add``/``delete``/``check``/``status``/``gc``;
argument checks, VERSION and the 1.1.0 floor of STATUS and GC are here.
"""

from __future__ import annotations

import os
import sys

from knetlab.cni.types import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    SPEC_VERSION,
    SUPPORTED_VERSIONS,
    CNIError,
    check_version,
    dumps,
    loads,
    version_tuple,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[["Args"], dict[str, Any] | None]


class Args:
    """The parsed invocation (no dataclass: plugin start-up time matters)."""

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, args: str,
                 path: list[str], conf: dict[str, Any], version: str,
                 env: dict[str, str] | None = None) -> None:
        self.command, self.container_id, self.netns, self.ifname = (command, container_id,
                                                                    netns, ifname)
        self.args, self.path, self.conf, self.version = args, path, conf, version
        #: the invocation's environment: a delegate gets it (an agent serving many
        #: invocations has no CNI_* of its own in os.environ)
        self.env = env if env is not None else {}

    @property
    def prev_result(self) -> dict[str, Any] | None:
        return self.conf.get("prevResult")

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC's still-valid (containerID, ifname) pairs. libcni sends the list under
        ``cni.dev/valid-attachments`` and, because spec 1.1.0 misnamed it, also under
        ``cni.dev/attachments`` (cni#1101): read both."""
        out = set()
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            items = self.conf.get(key) or []
            if not isinstance(items, list):
                raise CNIError(INVALID_CONFIG, f"{key} must be a list of attachments")
            for a in items:
                if not isinstance(a, dict):
                    raise CNIError(INVALID_CONFIG, f"{key}: {a!r} is not an attachment")
                out.add((str(a.get("containerID", "")), str(a.get("ifname", ""))))
        return out


_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
}


def _parse(env: dict[str, str], stdin: str) -> Args:
    command = env.get("CNI_COMMAND", "")
    if command not in _REQUIRED:
        raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                       "CNI_COMMAND must be ADD, DEL, CHECK, VERSION, STATUS or GC")
    missing = [v for v in _REQUIRED[command] if not env.get(v)]
    if missing:
        raise CNIError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    try:
        conf = loads(stdin)
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, "failed to decode network configuration", str(exc)
                       ) from None
    if not isinstance(conf, dict):
        raise CNIError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = check_version(conf)
    if command in ("STATUS", "GC") and version_tuple(version) < (1, 1, 0):
        # as libcni's skel: these verbs exist from spec 1.1.0 on
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {version} does not allow "
                       f"{command}", "STATUS and GC need cniVersion 1.1.0 or later")
    return Args(command, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""),
                env.get("CNI_IFNAME", ""), env.get("CNI_ARGS", ""),
                [p for p in env.get("CNI_PATH", "").split(":") if p], conf, version, env)


def call(env: dict[str, str], stdin: str, add: Handler, delete: Handler, check: Handler,
         status: Handler | None = None, gc: Handler | None = None) -> dict[str, Any] | None:
    """One invocation: the handler's result, or a CNIError (any other exception becomes an
    INTERNAL one) whose ``version`` is the config's, for the error object. Used by
    ``plugin_main`` and by plugins that run a knetlab IPAM plugin in their own process."""
    if env.get("CNI_COMMAND") == "VERSION":
        return {"cniVersion": SPEC_VERSION, "supportedVersions": SUPPORTED_VERSIONS}
    version = SPEC_VERSION
    try:
        args = _parse(env, stdin)
        version = args.version
        handler = {"ADD": add, "DEL": delete, "CHECK": check,
                   "STATUS": status or (lambda a: None), "GC": gc or (lambda a: None)}
        return handler[args.command](args)
    except CNIError as exc:
        exc.version = version
        raise
    except Exception as exc:  # noqa: BLE001 - every failure must reach the runtime as JSON
        err = CNIError(INTERNAL, str(exc) or type(exc).__name__)
        err.version = version
        raise err from exc


def plugin_main(add: Handler, delete: Handler, check: Handler,
                status: Handler | None = None, gc: Handler | None = None) -> None:
    env = dict(os.environ)
    stdin = "" if env.get("CNI_COMMAND") == "VERSION" else sys.stdin.read()
    try:
        result = call(env, stdin, add, delete, check, status, gc)
    except CNIError as exc:
        sys.stdout.write(dumps(exc.to_dict(exc.version)))
        sys.exit(1)
    if result is not None:
        sys.stdout.write(dumps(result))
    sys.exit(0)
