"""The ``knetlab`` command. Library code raises; only this module maps errors to exit codes.

    knetlab up [-d] [--check] TOPOLOGY     knetlab status [-o json]
    knetlab exec NAME -- CMD...            knetlab check [--sample K]
    knetlab node add|delete NAME           knetlab pod add|delete NAME [--node N]
    knetlab down                           knetlab clean [--cluster NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Any

from knetlab import __version__
from knetlab.errors import ConfigError, KnetlabError
from knetlab.rundir import RunDir, live_state, running_lab

EXIT_CONFIG, EXIT_ERROR = 2, 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"knetlab: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KnetlabError as exc:
        print(f"knetlab: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("knetlab: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knetlab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"knetlab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = p.add_subparsers(metavar="COMMAND")

    up = sub.add_parser("up", help="build a lab from a topology YAML")
    up.add_argument("topology")
    up.add_argument("-d", "--detach", action="store_true",
                    help="leave it running under a supervisor and return when ready")
    up.add_argument("--check", action="store_true", help="run `check` once it is up")
    up.add_argument("--batch", action="store_true",
                    help="no interactive CLI: print the summary and tear down")
    up.set_defaults(func=cmd_up)

    for name, func, helptext in (("down", cmd_down, "tear a detached lab down"),
                                 ("status", cmd_status, "show a running lab")):
        sp = sub.add_parser(name, help=helptext)
        _cluster_arg(sp)
        if name == "status":
            sp.add_argument("-o", "--output", choices=["table", "json"], default="table")
        sp.set_defaults(func=func)

    ex = sub.add_parser("exec", help="run a command in a pod's, node's or router's namespace")
    _cluster_arg(ex)
    ex.add_argument("name")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    ck = sub.add_parser("check", help="prove the Kubernetes network model with real packets")
    _cluster_arg(ck)
    ck.add_argument("--sample", type=_positive_int, metavar="K", help="K random peers per pod")
    ck.set_defaults(func=cmd_check)

    cl = sub.add_parser("clean", help="remove everything knetlab created (only that)")
    cl.add_argument("--cluster", help="only this lab")
    cl.set_defaults(func=cmd_clean)

    for kind in ("node", "pod"):
        sp = sub.add_parser(kind, help=f"add or delete a {kind} of a running lab")
        _cluster_arg(sp)
        sp.add_argument("action", choices=["add", "delete"])
        sp.add_argument("name")
        if kind == "node":
            sp.add_argument("--rack", type=_positive_int, default=1)
        else:
            sp.add_argument("--node", help="the node to run the pod on (add)")
        sp.set_defaults(func=cmd_node if kind == "node" else cmd_pod)

    for module in _extension_modules():
        module.add_commands(sub, _cluster_arg)
    return p


def subcommands() -> dict[str, str]:
    """Every ``knetlab`` subcommand and its one-line help (the Mininet CLI offers them)."""
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help or "" for a in sub._choices_actions}


def _extension_modules() -> list[Any]:
    """Feature modules that add subcommands (``add_commands(subparsers, cluster_arg)``)."""
    import importlib
    out = []
    for name in EXTENSIONS:
        out.append(importlib.import_module(name))
    return out


EXTENSIONS: list[str] = [  # e.g. "knetlab.bgp.commands"
    "knetlab.overlays.flannel.commands",
    "knetlab.docker.cli",
    "knetlab.bgp.commands",
    "knetlab.overlays.ovs.commands",
    "knetlab.kube.commands",
    "knetlab.fault_commands",
    "knetlab.overlays.weave.commands",
    "knetlab.addons.kubeproxy.commands",
    "knetlab.addons.ingress.commands",
    "knetlab.trace.commands",
    "knetlab.addons.dns.commands",
    "knetlab.addons.netpolicy.commands",
    "knetlab.compare.commands",
]


def _positive_int(text: str) -> int:
    """argparse type: a whole number from 1 (argparse turns the error into usage + exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", help="the lab's name (default: the only one running)")


# -- commands ------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from knetlab.topologies.schema import load_topology
    spec = load_topology(args.topology)  # validate here: errors before anything is built
    if args.detach:
        return _up_detached(args, spec.name)
    from mininet.log import lg

    from knetlab.cluster import Cluster
    from knetlab.mncli import KnetCLI, summary
    lg.propagate = False  # Mininet prints through its own handler; ours would print it twice
    from knetlab.progress import PhasePrinter
    cluster = Cluster(spec)
    cluster.on_phase = PhasePrinter()  # one line per phase once it takes over a second
    with cluster:
        print(summary(cluster.state()))
        print(f"\nup in {cluster.timings['total']:.2f}s")
        failed = False
        if args.check:
            from knetlab.check import format_report
            report = cluster.check()
            print(format_report(report))
            failed = not report.ok
        if not args.batch and sys.stdin.isatty():
            KnetCLI(cluster)
        return EXIT_ERROR if failed else 0


def _up_detached(args: argparse.Namespace, name: str) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "knetlab.supervisor", args.topology],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout
    for line in proc.stdout:
        if line.startswith("READY"):
            break
        if line.startswith("ERROR:"):
            proc.wait()
            raise KnetlabError(line[len("ERROR:"):].strip())
        sys.stderr.write(line)  # the supervisor's warnings during bring-up
    else:
        proc.wait()
        raise KnetlabError(f"supervisor of {name} exited ({proc.returncode}) before ready")
    proc.stdout.close()
    rd, state = running_lab(name)
    from knetlab.mncli import summary
    print(summary(state))
    if args.check:
        return cmd_check(argparse.Namespace(cluster=name, sample=None))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from knetlab import clean
    from knetlab.supervisor import request
    try:
        rd, state = running_lab(args.cluster)
    except KnetlabError:
        if args.cluster and RunDir(args.cluster).exists():
            clean.clean_lab(RunDir(args.cluster))
            return 0
        raise
    request(rd, "down")
    from knetlab.daemon import stop_pid
    stop_pid(state["owner_pid"], state["owner_match"], timeout=60)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rd, state = live_state(args.cluster)
    if "cluster" not in state:  # caught between phases of a bring-up
        print(f"{rd.cluster}: {state.get('phase', 'unknown')} (owner pid {state.get('owner_pid')})")
        return 0
    public = {k: v for k, v in state.items() if k not in ("hosts", "owner_match")}
    if args.output == "json":
        print(json.dumps(public, indent=2))
    else:
        from knetlab.mncli import summary
        print(summary(state))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    _, state = live_state(args.cluster)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise KnetlabError("usage: knetlab exec NAME -- COMMAND [ARGS...]")
    host = state["hosts"].get(args.name)
    if not host:
        raise KnetlabError(f"no pod, node or router {args.name!r}; "
                           f"`knetlab status` lists them")
    os.execvp("nsenter", ["nsenter", f"--net=/proc/{host['pid']}/ns/net", "--", *command])
    return 0  # not reached


def cmd_check(args: argparse.Namespace) -> int:
    from knetlab.check import endpoints, format_report, run_check
    _, state = live_state(args.cluster)
    pods, nodes = endpoints(state)
    report = run_check(pods, nodes, args.sample)
    print(format_report(report))
    for note in state.get("check_notes", []):  # the data plane's own caveats (macvlan)
        print(f"note: {note}")
    return 0 if report.ok else EXIT_ERROR


def cmd_clean(args: argparse.Namespace) -> int:
    from knetlab.clean import clean_all
    for line in clean_all(args.cluster):
        print(f"removed {line}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from knetlab.supervisor import request
    rd, _ = running_lab(args.cluster)
    if args.action == "add":
        request(rd, "add_node", name=args.name, rack=args.rack)
    else:
        request(rd, "delete_node", name=args.name)
    return 0


def cmd_pod(args: argparse.Namespace) -> int:
    from knetlab.supervisor import request
    rd, _ = running_lab(args.cluster)
    if args.action == "add":
        if not args.node:
            raise KnetlabError("usage: knetlab pod add NAME --node NODE")
        request(rd, "add_pod", name=args.name, node=args.node)
    else:
        request(rd, "delete_pod", name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
