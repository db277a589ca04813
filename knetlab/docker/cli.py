"""``knetlab docker NODE ...``: Docker's own command line, run against a node's engine.

    knetlab docker node-1 run -d --name web -p 8080:5000 python python3 -m http.server 5000
    knetlab docker node-1 ps | port web | rm -f web
    knetlab docker node-1 network create -d bridge|macvlan|overlay [--subnet S] NAME
    knetlab docker node-1 network ls | inspect NET | connect NET CTR | rm NET
    knetlab docker node-1 daemon --userland-proxy=false     (dockerd's flag)

The CLI checks the arguments, then sends the argv to the lab's supervisor, which runs it
on its Cluster (``Cluster.docker`` -> ``knetlab.docker.execute.execute``); the flags
parse as Docker parses them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from knetlab.docker.execute import docker_parser


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("docker", help="Docker networking on a node (run, ps, port, rm, network)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cluster_arg(p)
    p.add_argument("node")
    p.add_argument("docker_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_docker)


def cmd_docker(args: argparse.Namespace) -> int:
    import sys

    from knetlab.rundir import running_lab
    from knetlab.supervisor import request
    docker_parser().parse_args(args.docker_args)  # usage errors before any request
    rd, _ = running_lab(args.cluster)
    sys.stdout.write(request(rd, "docker", node=args.node, argv=args.docker_args) or "")
    return 0
