"""Executing a CNI plugin: find it on CNI_PATH, pass env + config, read result or error.

Used by the runtime (which runs plugins inside a node's namespace) and by plugins that
delegate (bridge -> IPAM), exactly as libcni's invoke package does.
"""

from __future__ import annotations

import os

from knetlab.cni.netutil import run
from knetlab.cni.types import CNIError, dumps, loads

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

#: knetlab's IPAM plugins that a delegating knetlab plugin runs in its own process
IN_PROCESS = {"host-local": "knetlab.cni.plugins.host_local",
              "calico-ipam": "knetlab.cni.plugins.calico_ipam",
              "weave-ipam": "knetlab.overlays.weave.ipam_plugin"}
KNETLAB_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")
PLUGIN_NOT_FOUND = 127  # mirrors the shell's "command not found"; reported as a CNIError


def find_plugin(kind: str, paths: list[str]) -> str:
    for d in paths:
        candidate = os.path.join(d, kind)
        if os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(PLUGIN_NOT_FOUND, f"failed to find plugin {kind!r} in path {paths}")


def exec_plugin(path: str, conf: dict[str, Any], env: dict[str, str],
                netns: str | None = None) -> dict[str, Any] | None:
    argv = [path] if not netns else ["nsenter", f"--net={netns}", "--", path]
    rc, out, err = run(argv, dumps(conf), env)
    if rc != 0:
        raise CNIError.from_output(out, err, rc)
    out = out.strip()
    return loads(out) if out else None


def delegate(kind: str, command: str, conf: dict[str, Any],
             invocation_env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Run another plugin (IPAM) with this process's CNI env (or ``invocation_env``, the
    env of the invocation an agent serves) but a different command.

    When CNI_PATH finds knetlab's own host-local, calico-ipam or weave-ipam, it runs in
    this process: same input (the config as JSON), same result or CNIError, one python
    start less per pod (~10-20 ms of CPU). Any other plugin of that name (the reference
    host-local) is run."""
    env = dict(os.environ if invocation_env is None else invocation_env, CNI_COMMAND=command)
    paths = [p for p in env.get("CNI_PATH", "").split(":") if p]
    path = find_plugin(kind, paths)
    module = IN_PROCESS.get(kind)
    if module and os.path.realpath(os.path.dirname(path)) == os.path.realpath(KNETLAB_BIN):
        return _in_process(module, env, conf)
    return exec_plugin(path, conf, env)


def _in_process(module: str, env: dict[str, str], conf: dict[str, Any]
                ) -> dict[str, Any] | None:
    from knetlab.cni.skel import call
    mod = __import__(module, fromlist=["add"])
    result = call(env, dumps(conf), mod.add, mod.delete, mod.check,
                  getattr(mod, "status", None), getattr(mod, "gc", None))
    # Through JSON as from a process: the caller gets its own copy, in JSON's types.
    return None if result is None else loads(dumps(result))
