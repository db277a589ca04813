"""What knetlab's CNI plugins share: running a program, ``ip -batch``, names and MACs.

Plugins are executed once per pod, so their start-up time is the cost of a pod: this
module imports nothing but ``os``, ``select``, ``time`` and ``zlib`` (no subprocess,
hashlib, ipaddress or re, which together cost a plugin ~20 ms per run) and spawns with
``posix_spawnp``.
"""

from __future__ import annotations

import os
import select
import time
import zlib

from knetlab.cni.types import CNIError

RUN_TIMEOUT = 60.0  # a plugin or an `ip` that hangs must not hang the pod's set-up
TIMED_OUT = 124  # the exit code timeout(1) uses


def run(argv: list[str], input_text: str = "", env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    """Run argv with ``input_text`` on stdin; return (exit code, stdout, stderr). Past
    ``timeout`` seconds the program is killed and the exit code is TIMED_OUT."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
               (os.POSIX_SPAWN_DUP2, err_w, 2)]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env,
                              file_actions=actions)
    except OSError as exc:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        return 127, "", f"{argv[0]}: {exc.strerror}"
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    data = input_text.encode()
    while data:
        data = data[os.write(in_w, data):]
    os.close(in_w)
    out, err, finished = _read_until(out_r, err_r, time.monotonic() + timeout)
    if not finished:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    if not finished:
        return TIMED_OUT, out, f"{err}{argv[0]}: timed out after {timeout:g}s"
    return os.waitstatus_to_exitcode(status), out, err


def _read_until(out_fd: int, err_fd: int, deadline: float) -> tuple[str, str, bool]:
    """Read stdout and stderr to their ends (both at once: a full pipe cannot block the
    program), or until the deadline; True if both ended in time. poll, not select: the
    caller may hold over 1,024 descriptors (a big lab's process does)."""
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    poller = select.poll()
    for fd in (out_fd, err_fd):
        poller.register(fd, select.POLLIN)
    open_fds = {out_fd, err_fd}
    while open_fds:
        left = deadline - time.monotonic()
        ready = poller.poll(max(1, int(left * 1000))) if left > 0 else []
        if not ready:
            break
        for fd, _ in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                chunks[fd].append(chunk)
            else:
                open_fds.discard(fd)
                poller.unregister(fd)
    for fd in (out_fd, err_fd):
        os.close(fd)
    out, err = (b"".join(chunks[fd]).decode(errors="replace") for fd in (out_fd, err_fd))
    return out, err, not open_fds


def ip_batch(lines: list[str], netns: str | None, what: str, code: int,
             may_exist: frozenset[int] = frozenset()) -> None:
    """Run ``ip -force -batch`` (inside ``netns`` if given). Failures of the lines in
    ``may_exist`` (1-based) are fine when the object already exists (another pod made the
    bridge first)."""
    argv = ["ip", "-force", "-batch", "-"]
    if netns:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    rc, _, err = run(argv, "\n".join(lines) + "\n")
    if rc == 0:
        return
    failed = {int(w.split(":")[1]) for w in err.split() if w.startswith("-:")}
    exists = "File exists" in err or "already assigned" in err
    if not failed or not failed <= may_exist or not exists:
        raise CNIError(code, f"failed to {what}", err.strip())


def pod_lines(ifname: str, addr: str, ipam_result: dict, gw: str | None,
              default_route: bool) -> tuple[list[str], list[dict]]:
    """ip -batch lines that give a pod's interface its address and IPAM's routes (plus a
    default route via ``gw`` when asked and IPAM gave none), and those routes (for the
    ADD result)."""
    lines = [f"addr add {addr} dev {ifname}", f"link set {ifname} up"]
    routes = list(ipam_result.get("routes", []))
    if default_route and gw and not any(r.get("dst") == "0.0.0.0/0" for r in routes):
        routes.append({"dst": "0.0.0.0/0", "gw": gw})
    for r in routes:
        via = r.get("gw") or gw
        lines.append(f"route add {r['dst']}" + (f" via {via}" if via else "")
                     + f" dev {ifname}")
    return lines, routes


def short_hash(text: str) -> str:
    """8 hex digits, stable: names that DEL can find again (veth, chains)."""
    return f"{zlib.crc32(text.encode()):08x}"


def mac_for(ip: object) -> str:
    """``0a:58`` + the IPv4 address, as older Kubernetes bridges did: no read-back needed."""
    return "0a:58:" + ":".join(f"{int(b):02x}" for b in str(ip).split("."))


def local_mac(name: str) -> str:
    """A locally administered MAC derived from a name."""
    h = f"{zlib.crc32(name.encode()):08x}{zlib.crc32(name[::-1].encode()):08x}"
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


def ip_to_int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return a << 24 | b << 16 | c << 8 | d


def int_to_ip(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def parse_cidr(cidr: str) -> tuple[int, int]:
    """'10.244.1.5/24' -> (address as int, prefix length); CNIError-free: callers check."""
    ip, _, plen = cidr.partition("/")
    return ip_to_int(ip), int(plen or 32)
