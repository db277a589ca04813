"""Network namespaces by path: enter one for the current thread (sockets made there stay there).

Python 3.11 has no ``os.setns``, so this calls libc's ``setns(2)`` through ctypes. Only the
calling thread changes namespace; ``entered()`` always returns it to where it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
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
