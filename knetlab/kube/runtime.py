"""The on-disk state of a pod's runtime, written by the kubelet and read by the API server.

``<rundir>/nodes/<node>/pods/<namespace>_<name>_<uid>/`` holds ``sandbox.pid`` (the pause
process whose net, UTS and mount namespaces and root are the pod's), ``sandbox.json`` (its
set-up), ``upper/``, ``work/`` and ``rootfs/`` (the overlay), and per container
``containers/<name>/<restartCount>.log`` (stdout+stderr) and ``containers/<name>/exec.json``
(``{"env": {...}, "workingDir": "/", "hostNetwork": false}``).

The readers here only read files, so the API server can call them for logs, exec and
port-forward without talking to the kubelet.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from knetlab.errors import NotFoundError
from knetlab.rundir import pid_alive

__all__ = ["exec_argv", "log_path", "pid_alive", "pod_dir", "sandbox_netns"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _base(rundir: Any) -> Path:
    """A RunDir or a path: both are accepted, the API server passes a path."""
    return Path(getattr(rundir, "path", rundir))


def pod_dir(rundir: Any, node: str, namespace: str, name: str, uid: str) -> Path:
    return _base(rundir) / "nodes" / node / "pods" / f"{namespace}_{name}_{uid}"


def pod_dir_of(rundir: Any, pod: dict[str, Any]) -> Path:
    meta = pod["metadata"]
    node = (pod.get("spec") or {}).get("nodeName") or ""
    if not node:
        raise NotFoundError(f"pod {meta.get('namespace')}/{meta['name']} is not on a node")
    return pod_dir(rundir, node, meta.get("namespace", "default"), meta["name"], meta["uid"])


def container_id(uid: str, name: str = "") -> str:
    """A stable 64-hex id: the pod's sandbox id (no name) or one container's."""
    return hashlib.sha256(f"{uid}/{name}".encode()).hexdigest()


def container_dir(pdir: Path, container: str) -> Path:
    return pdir / "containers" / container


def sandbox_pid(rundir: Any, pod: dict[str, Any]) -> int:
    """The pid of the pod's pause process; NotFoundError unless it runs."""
    pdir = pod_dir_of(rundir, pod)
    meta = pod["metadata"]
    try:
        pid = int((pdir / "sandbox.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        raise NotFoundError(f"pod {meta.get('namespace')}/{meta['name']} has no running "
                            "sandbox") from None
    if str(pdir).encode() not in cmdline:  # the pid was reused by another process
        raise NotFoundError(f"pod {meta.get('namespace')}/{meta['name']} has no running sandbox")
    return pid


def sandbox_netns(rundir: Any, pod: dict[str, Any]) -> str:
    """The pod's network namespace (the node's, for hostNetwork pods) as a /proc path."""
    static = static_pod_pid(rundir, pod)
    return f"/proc/{static if static is not None else sandbox_pid(rundir, pod)}/ns/net"


def log_numbers(cdir: Path) -> list[int]:
    out = []
    try:
        for entry in os.listdir(cdir):
            if entry.endswith(".log") and entry[:-4].isdigit():
                out.append(int(entry[:-4]))
    except OSError:
        pass
    return sorted(out)


def log_path(rundir: Any, pod: dict[str, Any], container: str, previous: bool = False) -> Path:
    """The log of the container's current run, or of the run before it (``--previous``).

    The path may not exist (the container has not run yet / has no previous run)."""
    cdir = container_dir(pod_dir_of(rundir, pod), container)
    numbers = log_numbers(cdir)
    current = numbers[-1] if numbers else 0
    if previous:
        older = [n for n in numbers if n < current]
        return cdir / f"{older[-1] if older else current - 1}.log"
    return cdir / f"{current}.log"


def read_exec_info(pdir: Path, container: str) -> dict[str, Any]:
    try:
        return json.loads((container_dir(pdir, container) / "exec.json").read_text())
    except (OSError, ValueError):
        return {"env": {}, "workingDir": "/", "hostNetwork": False}


def write_exec_info(pdir: Path, container: str, env: dict[str, str], working_dir: str,
                    host_network: bool) -> None:
    cdir = container_dir(pdir, container)
    cdir.mkdir(parents=True, exist_ok=True)
    tmp = cdir / "exec.json.tmp"
    tmp.write_text(json.dumps({"env": env, "workingDir": working_dir,
                               "hostNetwork": host_network}))
    tmp.replace(cdir / "exec.json")


def enter_argv(pid: int, working_dir: str, command: list[str]) -> list[str]:
    """argv that runs ``command`` in the pause's net, UTS and mount namespaces and root."""
    # Not nsenter's --wd: util-linux 2.38 leaves the cwd outside the new root with --root
    # (getcwd fails); env -C changes into the directory once inside the pod's root.
    return ["nsenter", f"--target={pid}", "--net", "--uts", "--mount", "--root", "--",
            "env", "-C", working_dir or "/", "--", *command]


MIRROR = "kubernetes.io/config.mirror"


def static_pod_pid(rundir: Any, pod: dict[str, Any]) -> int | None:
    """For a mirror pod (a pod of the topology file, wired before the API existed): the pid
    of the Mininet shell that holds its network namespace, from the lab's state file."""
    meta = pod["metadata"]
    if MIRROR not in (meta.get("annotations") or {}):
        return None
    try:
        state = json.loads((_base(rundir) / "state.json").read_text())
        pid = int(state["hosts"][meta["name"]]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NotFoundError(f"static pod {meta['name']} has no running shell") from None
    if f"mininet:{meta['name']}".encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
        raise NotFoundError(f"static pod {meta['name']} has no running shell")
    return pid


def exec_argv(rundir: Any, pod: dict[str, Any], container: str, command: list[str]
              ) -> tuple[list[str], dict[str, str]]:
    """argv + env for ``kubectl exec``: the container's env and working dir, in the pod."""
    static = static_pod_pid(rundir, pod)
    if static is not None:  # a topology pod: its namespace is a Mininet host's
        return ["nsenter", f"--target={static}", "--net", "--", *command], \
            {"PATH": DEFAULT_PATH}
    pid = sandbox_pid(rundir, pod)
    info = read_exec_info(pod_dir_of(rundir, pod), container)
    env = {"PATH": DEFAULT_PATH, **(info.get("env") or {})}
    return enter_argv(pid, info.get("workingDir") or "/", command), env
