"""Network namespaces by path: enter one for the current thread (sockets made there stay there).

Python 3.11 has no ``os.setns``, so this calls libc's ``setns(2)`` through ctypes. Only the
calling thread changes namespace; ``entered()`` always returns it to where it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def netns_inode(path: str) -> int:
    """The namespace's identity: two paths name the same namespace iff inodes match."""
    return os.stat(path).st_ino


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the network namespace at ``path``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def link_up(path: str, ifname: str = "lo") -> None:
    """Set a link up inside a namespace with one ioctl: no ``ip`` process per pod."""
    with entered(path):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        req = struct.pack("16sH14s", ifname.encode(), 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", ifname.encode(),
                                                          flags | IFF_UP, b""))
