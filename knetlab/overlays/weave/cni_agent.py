"""The weave router serves its node's ``weave-net`` CNI plugin from a warm process, as
weave's router serves weave's own CNI plugin.

Why: each pod's CNI ADD used to start Python for knetlab's bridge plugin (~7 ms of CPU
before doing anything, 15 ms in all, most of a pod's price). ``bin/weave-net`` is now a
thin client (Perl without modules, ~2 ms): it hands the invocation (the ``CNI_*``
environment and the network configuration) to the router of the node it runs in and
prints the answer. The router runs knetlab's bridge plugin (knetlab/cni/plugins/bridge.py)
through ``skel.call`` in a thread of its own, its IPAM (``weave-ipam``) in that thread too
(knetlab.cni.invoke.IN_PROCESS); so a pod wired here and one wired by the plugin process
(the client's fallback when no router listens) run the same code.

Design notes:
- Wire format and socket naming are the calico agent's (knetlab/cni/calico_agent.py): the
  abstract unix socket ``@knetlab-weave-cni`` of the node's network namespace (abstract
  sockets belong to their namespace: every node has its own, nothing is left on disk when
  the router ends); one invocation per connection: ``<n>\\n``, ``n`` bytes of
  ``KEY=VALUE\\0`` per ``CNI_*`` variable, the configuration up to EOF; answer: the exit
  code as one digit, then the plugin's stdout.
- One thread per invocation (a kubelet ADDs pods in parallel), never the router's event
  loop: the bridge plugin's IPAM asks that loop over ``weave.sock``, and the pod's side is
  configured after ``setns(2)``, which moves only the calling thread (bridge.py returns it
  to the node's namespace before it ends).
"""

from __future__ import annotations

import _socket
import logging
import threading
import time

from knetlab.cni import skel
from knetlab.cni.plugins import bridge
from knetlab.cni.types import DECODE_FAILURE, CNIError, dumps

log = logging.getLogger("weave.cni")
SOCKET = "knetlab-weave-cni"  # abstract: "\0" + this, per network namespace
REQUEST_TIMEOUT = 60.0  # a client that sends nothing more must not hold a thread forever


def parse_request(data: bytes) -> tuple[dict[str, str], str]:
    """The invocation's environment and configuration (ValueError if malformed)."""
    size, sep, rest = data.partition(b"\n")
    if not sep or not size.isdigit() or int(size) > len(rest):
        raise ValueError("malformed request: no environment block")
    block, conf = rest[:int(size)], rest[int(size):]
    env = {}
    for item in block.split(b"\0"):
        if item:
            key, _, value = item.decode().partition("=")
            env[key] = value
    return env, conf.decode()


def answer(env: dict[str, str], conf: str) -> tuple[int, str]:
    """What the bridge plugin process would exit with and print."""
    try:
        result = skel.call(env, conf, bridge.add, bridge.delete, bridge.check, bridge.status,
                           bridge.gc)
    except CNIError as exc:
        return 1, dumps(exc.to_dict(exc.version))
    return 0, "" if result is None else dumps(result)


def serve_one(conn: _socket.socket) -> None:
    started = time.monotonic()
    env: dict[str, str] = {}
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        try:
            env, conf = parse_request(b"".join(chunks))
            code, out = answer(env, conf)
        except ValueError as exc:
            code, out = 1, dumps(CNIError(DECODE_FAILURE, str(exc)).to_dict())
        conn.sendall(str(code).encode() + out.encode())
        log.info("%s %s %s: exit %d in %.1f ms%s", env.get("CNI_COMMAND", "?"),
                 env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), code,
                 1000 * (time.monotonic() - started), f" {out}" if code else "")
    except OSError as exc:
        log.warning("%s %s: the client went away: %s", env.get("CNI_COMMAND", "?"),
                    env.get("CNI_CONTAINERID", ""), exc)
    finally:
        conn.close()


def start(name: str = SOCKET) -> None:
    """Listen on ``@name`` in this thread's network namespace and serve in the background
    (OSError if another process of the namespace serves it already)."""
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(128)

    def accept_loop() -> None:
        while True:
            fd, _ = server._accept()
            threading.Thread(target=serve_one, args=(_socket.socket(fileno=fd),),
                             daemon=True, name="cni").start()

    threading.Thread(target=accept_loop, daemon=True, name="cni-accept").start()
    log.info("serving the weave-net CNI plugin on @%s", name)
