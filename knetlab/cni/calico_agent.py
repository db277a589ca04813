"""The calico CNI agent: one per node, serving the calico plugin's invocations from a warm
process, as Cilium's and Antrea's CNI plugins hand their work to their node's agent.

Why it exists: each pod's CNI ADD started Python, ~9-10 ms of CPU on the lab machines,
more than everything else the plugin does together. ``bin/calico`` is now a thin client
(Perl with no module, ~2 ms): it passes the invocation (the ``CNI_*`` environment and
the network configuration) to this agent and prints what the agent answers. The agent
runs the very functions of knetlab/cni/plugins/calico.py through ``skel.call``, so a pod
the agent wires and one the plugin wires itself are the same code; with its IPAM in the
same process and one kept-alive etcd connection.

Design notes:
- Found without configuration: the agent listens on the abstract unix socket
  ``@knetlab-calico-cni`` of the node's network namespace, and the plugin runs in that
  namespace (the runtime and kubelets run plugins there). Abstract sockets belong to
  their namespace, so every node has its own and nothing is left on disk.
- No agent, no difference but speed: when nobody listens (a unit test, a lab whose agent
  died), the client runs the whole plugin in Python itself (``python3 -S``).
- Wire format (one invocation per connection): ``<n>\\n``, then ``n`` bytes of
  ``KEY=VALUE\\0`` per ``CNI_*`` variable, then the configuration up to EOF (the client
  shuts down its sending side). Answer: the exit code as one digit, then the plugin's
  stdout (the result, or the spec's error object).
- One thread per invocation (a kubelet ADDs pods in parallel). The pod side is configured
  after ``setns(2)``, which moves only the calling thread; calico.py returns the thread
  to the node's namespace before it ends. IPAM takes Calico's host-wide lock
  (``calico_ipam.IPAM_LOCK``), so parallel ADDs do not each claim a block.
- Started, without waiting, by the Calico data planes (knetlab/overlays/calico_cni.py):
  ``daemons/<node>/calico-cni/``, its log lists every invocation with its exit code.
"""

from __future__ import annotations

# The agent starts on every node of a lab: C modules and knetlab's plugin code only, as
# the plugin itself (``python3 -S``; socket, threading, logging and argparse would triple
# its start-up CPU).
import _socket
import _thread
import sys
import time

from knetlab.cni import skel
from knetlab.cni.plugins import calico
from knetlab.cni.types import DECODE_FAILURE, CNIError, dumps

SOCKET = "knetlab-calico-cni"  # abstract: "\0" + this, per network namespace
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
        result = skel.call(env, conf, calico.add, calico.delete, calico.check,
                           calico.status, calico.gc)
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
    log(f"serving the calico plugin on @{name}")
    while True:
        fd, _ = server._accept()
        _thread.start_new_thread(serve_one, (_socket.socket(fileno=fd),))


def main(argv: list[str] | None = None) -> None:
    """``python3 -S -m knetlab.cni.calico_agent [--socket NAME] [--ready-file PATH]``;
    SIGTERM ends it (the default action: there is nothing to flush)."""
    args = sys.argv[1:] if argv is None else argv
    opts = {"--socket": SOCKET, "--ready-file": ""}
    while args:
        if args[0] not in opts or len(args) < 2:
            sys.exit(f"usage: calico_agent [--socket NAME] [--ready-file PATH]; got {args[0]}")
        opts[args[0]], args = args[1], args[2:]
    serve(opts["--socket"], opts["--ready-file"] or None)


if __name__ == "__main__":
    main()
