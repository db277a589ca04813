"""A node's CNI agent: serves a CNI plugin's invocations from a warm process, as Cilium's
and Antrea's plugins hand their work to their node's agent.

Why it exists: a pod's CNI ADD started Python, ~9-10 ms of CPU on the lab machines, more
than everything else knetlab's own plugins do for a pod. Their executables
(``bin/calico``, ``bin/ovs``, ``bin/weave-net``) are one thin client, ``agent_client.c``
(built by scripts/setup.sh, ~0.5 ms), that passes the invocation (the ``CNI_*`` environment and
the network configuration) to the node's agent and prints the answer. The agent runs the
very functions of the plugin's module through ``skel.call``, so a pod the agent wires and
one the plugin wires itself run the same code, with IPAM in the same process and one
kept-alive etcd connection.

- Found without configuration: the abstract unix socket ``@knetlab-<type>-cni`` of the
  node's network namespace, where plugins run (the runtime and kubelets run them there).
  Abstract sockets belong to their namespace: every node has its own, nothing is on disk.
- No agent, no difference but speed: where nobody listens (a unit test, an agent that
  died), the client runs the whole plugin in Python itself (``python3 -S``).
- Wire format, one invocation per connection: ``<n>\\n``, then ``n`` bytes of
  ``KEY=VALUE\\0`` per ``CNI_*`` variable, then the configuration up to EOF (the client
  shuts down its sending side). Answer: the exit code as one digit, then the plugin's
  stdout (the result, or the spec's error object).
- One thread per invocation (a kubelet ADDs pods in parallel). The pod side is configured
  after ``setns(2)``, which moves only the calling thread; the plugins return the thread
  to the node's namespace before they end.
- Served by a daemon per node (``python3 -S -m knetlab.cni.agent TYPE``: the calico and OVS
  planes, knetlab/overlays/cni_agents.py) or from a thread of a process the node runs
  anyway (weave's router: ``Agent.serve_in_background``).
"""

from __future__ import annotations

# C modules and the plugins' own (stdlib-only) imports: an agent starts on every node,
# and socket, threading, logging or argparse would triple its start-up CPU.
import _socket
import _thread
import sys
import time

from knetlab.cni import skel
from knetlab.cni.types import DECODE_FAILURE, CNIError, dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: CNI type -> the module whose add/delete/check/status/gc an agent runs (agent_client.c
#: falls back to the same modules)
PLUGINS = {"calico": "knetlab.cni.plugins.calico", "ovs": "knetlab.cni.plugins.ovs",
           "weave-net": "knetlab.cni.plugins.bridge"}
REQUEST_TIMEOUT = 60.0  # a client that sends nothing more must not hold a thread forever


def socket_name(plugin: str) -> str:
    """The agent's abstract socket name ("\\0" + this), per network namespace."""
    return f"knetlab-{plugin}-cni"


def stderr_log(text: str) -> None:
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


class Agent:
    """Serves one plugin type's invocations on its abstract socket."""

    def __init__(self, plugin: str, log: Callable[[str], None] = stderr_log) -> None:
        self.plugin, self.log = plugin, log
        self.module = __import__(PLUGINS[plugin], fromlist=["add"])

    def answer(self, env: dict[str, str], conf: str) -> tuple[int, str]:
        """What the plugin process would exit with and print."""
        m = self.module
        try:
            result = skel.call(env, conf, m.add, m.delete, m.check, m.status, m.gc)
        except CNIError as exc:
            return 1, dumps(exc.to_dict(exc.version))
        return 0, "" if result is None else dumps(result)

    def serve_one(self, conn: _socket.socket) -> None:
        started = time.monotonic()
        env: dict[str, str] = {}
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            try:
                env, conf = parse_request(b"".join(chunks))
                code, out = self.answer(env, conf)
            except ValueError as exc:
                code, out = 1, dumps(CNIError(DECODE_FAILURE, str(exc)).to_dict())
            conn.sendall(str(code).encode() + out.encode())
            self.log(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')} "
                     f"{env.get('CNI_IFNAME', '')}: exit {code} in "
                     f"{1000 * (time.monotonic() - started):.1f} ms"
                     + (f" {out}" if code else ""))
        except OSError as exc:
            self.log(f"{env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')}: "
                     f"the client went away: {exc}")
        finally:
            conn.close()

    def listen(self) -> _socket.socket:
        """Bind the socket in this thread's network namespace (OSError if another process
        of the namespace serves it already)."""
        server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        server.bind("\0" + socket_name(self.plugin))
        server.listen(128)
        self.log(f"serving the {self.plugin} plugin on @{socket_name(self.plugin)}")
        return server

    def serve(self, server: _socket.socket) -> None:
        while True:
            fd, _ = server._accept()
            _thread.start_new_thread(self.serve_one, (_socket.socket(fileno=fd),))

    def serve_in_background(self) -> None:
        """Listen now, serve from a thread of this process."""
        _thread.start_new_thread(self.serve, (self.listen(),))


def main(argv: list[str] | None = None) -> None:
    """``python3 -S -m knetlab.cni.agent TYPE [--ready-file PATH]``; SIGTERM ends it (the
    default action: there is nothing to flush)."""
    args = sys.argv[1:] if argv is None else argv
    usage = f"usage: agent {'|'.join(PLUGINS)} [--ready-file PATH]"
    if not args or args[0] not in PLUGINS:
        sys.exit(usage)
    plugin, ready_file = args[0], ""
    if args[1:]:
        if len(args) != 3 or args[1] != "--ready-file":
            sys.exit(usage)
        ready_file = args[2]
    agent = Agent(plugin)
    server = agent.listen()
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")
    agent.serve(server)


if __name__ == "__main__":
    main()
