"""A pod's sandbox (the pause container): its network, UTS and mount namespaces and its root.

Run by the kubelet as ``python3 -S sandbox.py POD_DIR`` (standard library only, no package
import: a sandbox starts in about 15 ms). It reads ``POD_DIR/sandbox.json``::

    {"hostname": "web-0", "netns": null, "files": {"/etc/hosts": "...", ...}}

and then, in this order:

1. ``unshare`` a new mount and UTS namespace, and a new network namespace unless ``netns``
   names one to join (hostNetwork pods join the node's);
2. makes every mount private (nothing done here propagates to the host), sets the
   hostname, brings ``lo`` up;
3. mounts the pod's root: an overlay with ``lowerdir=/`` (every host program exists in the
   pod) and its upper/work dirs in the pod dir, at ``POD_DIR/rootfs``; binds the host's
   ``/proc``, ``/dev`` and ``/run`` into it (the lab's files stay visible), a fresh sysfs
   (so ``/sys/class/net`` shows the pod's interfaces) and a private tmpfs on ``/tmp``;
4. ``chroot``s into it and writes ``files`` there (after the chroot, so a symlinked
   ``/etc/resolv.conf`` cannot lead a write out to the host's file);
5. prints ``ready`` on stdout (the kubelet waits for that line) and execs ``sleep
   infinity`` with ``argv[0]`` naming the pod dir, so the pid's command line still proves
   what it is (``knetlab clean`` matches it).

The mounts live only in the pause's mount namespace: when the pause and every container
are gone, the kernel tears the overlay down and nothing is left in the host's mount table.
Containers join with ``nsenter --target PID --net --uts --mount --root``.
"""

from __future__ import annotations

# Only builtin modules (no ctypes, json, socket, struct packages): their imports (re, enum,
# ...) cost more CPU than the rest of the sandbox's set-up, and every pod pays it.
import _ctypes
import _json
import _socket
import fcntl
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


class _Int(_ctypes._SimpleCData):  # ctypes.c_int
    _type_ = "i"


class _ULong(_ctypes._SimpleCData):  # ctypes.c_ulong
    _type_ = "L"


class _Func(_ctypes.CFuncPtr):  # a libc function returning int, errno kept (use_errno)
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _Libc:  # what ctypes.CDLL(None) holds: the handle functions are looked up in
    _handle = _ctypes.dlopen(None, os.RTLD_NOW)


def _libc(name: str) -> _Func:
    return _Func((name, _Libc))


class SandboxError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = _ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()
    _check(_libc("mount")(enc(source), enc(target), enc(fstype), _ULong(flags), enc(data)),
           f"mount {source or fstype} on {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc("umount2")(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc("unshare")(flags), "unshare")


def setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc("setns")(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def link_up(name: str) -> None:
    """``ip link set NAME up`` without exec'ing ip: SIOCSIFFLAGS on a datagram socket."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifname = name.encode().ljust(16, b"\0")  # struct ifreq: name, short flags, padding
        got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifname + bytes(16))
        flags = int.from_bytes(got[16:18], sys.byteorder) | IFF_UP
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, ifname + flags.to_bytes(2, sys.byteorder)
                    + bytes(14))
    finally:
        s.close()


def load_json(text: str) -> dict:
    """json.loads through the C scanner json uses, without json's Python modules."""
    ctx = type("Ctx", (), {"strict": True, "object_hook": None, "object_pairs_hook": None,
                           "parse_float": float, "parse_int": int, "parse_constant": float,
                           "memo": {}})
    text = text.strip()
    try:
        obj, end = _json.make_scanner(ctx)(text, 0)
    except StopIteration:
        raise ValueError("sandbox.json is not JSON") from None
    if end != len(text) or not isinstance(obj, dict):
        raise ValueError("sandbox.json is not a JSON object")
    return obj


def build_root(pod_dir: str) -> str:
    """Mount the pod's overlay root and its special filesystems; return the root path."""
    root, upper, work = (os.path.join(pod_dir, d) for d in ("rootfs", "upper", "work"))
    for d in (root, upper, work):
        os.makedirs(d, exist_ok=True)
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    # /run first: its recursive copy then holds a copy of the overlay itself (it lives under
    # /run/knetlab); detach that copy so the pod does not see its own root twice.
    mount("/run", root + "/run", None, MS_BIND | MS_REC)
    nested = root + "/run" + root[len("/run"):] if root.startswith("/run/") else ""
    if nested:
        try:
            umount(nested)
        except SandboxError:
            pass  # /run was not where the pod dir lives: nothing nested
    mount("/proc", root + "/proc", None, MS_BIND | MS_REC)
    mount("/dev", root + "/dev", None, MS_BIND | MS_REC)
    try:  # a fresh sysfs shows this network namespace's interfaces
        mount("sysfs", root + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SandboxError:
        mount("/sys", root + "/sys", None, MS_BIND | MS_REC)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for own in _own_dirs():  # knetlab's code and venv, for /agnhost and friends in the pod
        hidden = own == "/tmp" or own.startswith("/tmp/")
        if hidden or os.stat(own).st_dev != os.stat("/").st_dev:  # not in the overlay
            os.makedirs(root + own, exist_ok=True)
            mount(own, root + own, None, MS_BIND | MS_REC)
    return root


def _own_dirs() -> list[str]:
    """The checkout holding knetlab and the Python environment running it. The overlay shows
    only the root filesystem and the private /tmp hides the rest, so a checkout under /tmp
    (or on another mount) is bound in at the same path."""
    code = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dirs = {code, os.path.abspath(sys.prefix)}
    return sorted(d for d in dirs if d != "/" and os.path.isdir(d))


def write_file(path: str, content: str) -> None:
    """Write inside the (chrooted) root; a symlink there is replaced, never followed."""
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(content)


def setup(pod_dir: str) -> None:
    with open(os.path.join(pod_dir, "sandbox.json")) as f:
        spec = load_json(f.read())
    join = spec.get("netns")
    unshare(CLONE_NEWNS | CLONE_NEWUTS | (0 if join else CLONE_NEWNET))
    if join:
        setns(join, CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    _socket.sethostname(spec["hostname"])
    if not join:
        link_up("lo")
    root = build_root(pod_dir)
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")
    for path, content in spec.get("files", {}).items():
        write_file(path, content)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: sandbox.py POD_DIR\n")
        return 2
    pod_dir = os.path.abspath(argv[0])
    try:
        setup(pod_dir)
    except (OSError, SandboxError, ValueError, KeyError) as exc:
        sys.stdout.write(f"error: {exc}\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1024)
    # The pause: one small process per pod. argv[0] carries the pod dir for ownership checks.
    os.execv("/bin/sleep", [f"knetlab-pause {pod_dir}", "infinity"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
