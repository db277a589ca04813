"""The ovs CNI agent: one per node, serving the ovs plugin's invocations from a warm process
(as Antrea's CNI plugin hands its work to the node's antrea-agent).

Why: a pod's CNI ADD started Python (~9 ms of CPU here) and imported the plugin (~3 ms),
more than the pod's kernel and OVSDB work together. ``knetlab/cni/bin/ovs`` is a thin
client (Perl without modules, ~2 ms) that passes the invocation (the ``CNI_*``
environment and the network configuration) to this agent and prints its answer. The
agent runs the very functions of knetlab/cni/plugins/ovs.py through ``skel.call``, so a
pod the agent wires and one the plugin wires itself run the same code; IPAM in the same
process, one kept-alive etcd connection.

Design notes (the wire is the calico agent's, knetlab/cni/calico_agent.py):
- Found without configuration: the abstract unix socket ``@knetlab-ovs-cni`` of the
  node's network namespace, where plugins run. Abstract sockets belong to their
  namespace: every node has its own, and nothing is left on disk.
- No agent, no difference but speed: where nobody listens, the client runs the whole
  plugin in Python itself (``python3 -S``).
- Request: ``<n>\\n``, ``n`` bytes of ``KEY=VALUE\\0`` per ``CNI_*`` variable, then the
  configuration up to EOF. Answer: the exit code as one digit, then the plugin's stdout.
- One thread per invocation; the pod side is configured after ``setns(2)``, which moves
  only the calling thread, and the plugin returns the thread home before it ends.

    python3 -S -m knetlab.overlays.ovs.cniagent [--socket NAME] [--ready-file PATH]
"""

from __future__ import annotations

# C modules and the plugin's own (stdlib-only) imports: the agent starts on every node.
import _socket
import _thread
import sys
import time

from knetlab.cni import skel
from knetlab.cni.plugins import ovs
from knetlab.cni.types import DECODE_FAILURE, CNIError, dumps

SOCKET = "knetlab-ovs-cni"  # abstract: "\0" + this, per network namespace
REQUEST_TIMEOUT = 60.0  # a client that sends nothing more must not hold a thread forever


def log(text: str) -> None:
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
    sys.stderr.flush()


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
    """What the plugin process would exit with and print."""
    try:
        result = skel.call(env, conf, ovs.add, ovs.delete, ovs.check, ovs.status, ovs.gc)
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
        log(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')} "
            f"{env.get('CNI_IFNAME', '')}: exit {code} in "
            f"{1000 * (time.monotonic() - started):.1f} ms" + (f" {out}" if code else ""))
    except OSError as exc:
        log(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')}: "
            f"the client went away: {exc}")
    finally:
        conn.close()


def serve(name: str, ready_file: str | None) -> None:
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(128)
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")
    log(f"serving the ovs plugin on @{name}")
    while True:
        fd, _ = server._accept()
        _thread.start_new_thread(serve_one, (_socket.socket(fileno=fd),))


def main(argv: list[str] | None = None) -> None:
    """SIGTERM ends it (the default action: there is nothing to flush)."""
    args = sys.argv[1:] if argv is None else argv
    opts = {"--socket": SOCKET, "--ready-file": ""}
    while args:
        if args[0] not in opts or len(args) < 2:
            sys.exit(f"usage: cniagent [--socket NAME] [--ready-file PATH]; got {args[0]}")
        opts[args[0]], args = args[1], args[2:]
    serve(opts["--socket"], opts["--ready-file"] or None)


if __name__ == "__main__":
    main()
