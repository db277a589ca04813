"""``knetlab docker NODE ...``: Docker's own command line, run against a node's engine.

    knetlab docker node-1 run -d --name web -p 8080:5000 python python3 -m http.server 5000
    knetlab docker node-1 ps | port web | rm -f web
    knetlab docker node-1 network create -d bridge|macvlan|overlay [--subnet S] NAME
    knetlab docker node-1 network ls | inspect NET | connect NET CTR | rm NET
    knetlab docker node-1 daemon --userland-proxy=false     (dockerd's flag)

The CLI checks the arguments, then sends the argv to the lab's supervisor, which runs
``execute`` on its Cluster (``Cluster.docker``); the flags parse as Docker parses them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.cluster import Cluster


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting (it runs inside the supervisor too)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise KnetlabError(f"docker: {message}\nSee '{self.prog} --help'.")

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        raise KnetlabError(message or self.format_usage())


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def docker_parser() -> _Parser:
    p = _Parser(prog="docker", add_help=False)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", add_help=False)
    r.add_argument("-d", "--detach", action="store_true")
    r.add_argument("--name", default="")
    r.add_argument("--network", "--net", default="bridge")
    r.add_argument("--ip", default="")
    r.add_argument("-p", "--publish", action="append", default=[])
    r.add_argument("-P", "--publish-all", action="store_true")
    r.add_argument("--expose", action="append", default=[])
    r.add_argument("--rm", action="store_true")
    r.add_argument("image")
    r.add_argument("command", nargs=argparse.REMAINDER)
    ps = sub.add_parser("ps", add_help=False)
    ps.add_argument("-a", "--all", action="store_true")
    pt = sub.add_parser("port", add_help=False)
    pt.add_argument("name")
    pt.add_argument("port", nargs="?", default="")
    rm = sub.add_parser("rm", add_help=False)
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+")
    dm = sub.add_parser("daemon", add_help=False)
    dm.add_argument("--userland-proxy", type=_bool, required=True)
    _network_parser(sub.add_parser("network", add_help=False))
    return p


def _network_parser(n: argparse.ArgumentParser) -> None:
    sub = n.add_subparsers(dest="ncmd", required=True, parser_class=_Parser)
    c = sub.add_parser("create", add_help=False)
    c.add_argument("-d", "--driver", default="bridge")
    c.add_argument("--subnet", default="")
    c.add_argument("--gateway", default="")
    c.add_argument("--ip-range", default="")
    c.add_argument("--aux-address", type=_kv, action="append", default=[])
    c.add_argument("-o", "--opt", type=_kv, action="append", default=[])
    c.add_argument("name")
    sub.add_parser("ls", add_help=False)
    for verb in ("inspect", "rm"):
        sub.add_parser(verb, add_help=False).add_argument("names", nargs="+")
    cn = sub.add_parser("connect", add_help=False)
    cn.add_argument("network")
    cn.add_argument("container")


def execute(cluster: Cluster, node: str, argv: list[str]) -> str:
    """Run one docker command on ``node``'s engine; return what docker would print."""
    from knetlab.docker import containers, views
    from knetlab.docker.engine import service_for
    a = docker_parser().parse_args(argv)
    eng = service_for(cluster).engine(node)
    if a.cmd == "run":
        out = containers.run(eng, a.image, a.command, a.name, a.detach, a.publish,
                             a.publish_all, a.expose, a.network, a.ip)
        if a.rm and not a.detach:
            containers.remove(eng, a.name or list(eng.containers)[-1], force=True)
        return out
    if a.cmd == "ps":
        return views.ps(eng, a.all)
    if a.cmd == "port":
        return views.port(eng.container(a.name), a.port)
    if a.cmd == "rm":
        return "".join(containers.remove(eng, n, a.force) for n in a.names)
    if a.cmd == "daemon":
        eng.set_userland_proxy(a.userland_proxy)
        return f"userland-proxy={str(a.userland_proxy).lower()}\n"
    return _network(eng, a)


def _network(eng: Any, a: argparse.Namespace) -> str:
    from knetlab.docker import containers, views
    if a.ncmd == "create":
        net = eng.create_network(a.name, a.driver, a.subnet, a.gateway, a.ip_range,
                                 dict(a.aux_address), dict(a.opt))
        return net.id + "\n"
    if a.ncmd == "ls":
        return views.network_ls(eng)
    if a.ncmd == "inspect":
        return "".join(views.inspect(eng, eng.network(n)) for n in a.names)
    if a.ncmd == "connect":
        containers.connect(eng, a.network, a.container)
        return ""
    for name in a.names:
        eng.remove_network(name)
    return "".join(f"{n}\n" for n in a.names)


# -- the knetlab subcommand ---------------------------------------------------------

def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("docker", help="Docker networking on a node (run, ps, port, rm, network)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cluster_arg(p)
    p.add_argument("node")
    p.add_argument("docker_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_docker)


def cmd_docker(args: argparse.Namespace) -> int:
    import sys

    from knetlab.cli import running_lab
    from knetlab.supervisor import request
    docker_parser().parse_args(args.docker_args)  # usage errors before any request
    rd, _ = running_lab(args.cluster)
    sys.stdout.write(request(rd, "docker", node=args.node, argv=args.docker_args) or "")
    return 0
