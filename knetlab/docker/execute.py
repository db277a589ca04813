"""Docker's command line, parsed as Docker parses it and run against a node's engine.

``execute(service, node, argv)`` is what ``docker ...`` does on an emulated node: the
Cluster calls it (``Cluster.docker``, reached from the supervisor), and the ``knetlab
docker`` subcommand (``knetlab.docker.cli``) only checks the argv with ``docker_parser``
before it sends it there. Nothing here knows about the knetlab command line.

    run -d --name web -p 8080:5000 IMAGE CMD...     ps [-a] | port NAME [PORT] | rm [-f] NAME...
    network create -d bridge|macvlan|overlay [--subnet S] NAME
    network ls | inspect NET | connect NET CTR | rm NET       daemon --userland-proxy=BOOL
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.docker.engine import DockerService


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


def execute(service: DockerService, node: str, argv: list[str]) -> str:
    """Run one docker command on ``node``'s engine; return what docker would print."""
    from knetlab.docker import containers, views
    a = docker_parser().parse_args(argv)
    eng = service.engine(node)
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
