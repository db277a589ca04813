"""``knetlab trace``, ``knetlab capture`` and ``knetlab graph``.

    knetlab trace SRC DST [--port P] [--proto tcp|udp|icmp] [--png F] [-o json]
    knetlab capture TARGET [-o file.pcapng] [--count N] [--duration S]
    knetlab graph [-o lab.png|lab.svg|lab.dot]

They read the lab's live state and work in its namespaces from this process (as root, as
``knetlab exec`` does); nothing goes through the supervisor, so they work on a lab run
from Python too.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    tr = sub.add_parser("trace", help="send a marked probe and show every hop it crossed")
    cluster_arg(tr)
    tr.add_argument("src", help="pod, node or router (or one of their addresses)")
    tr.add_argument("dst", help="pod, node, router, svc/NAME or an address in the lab")
    tr.add_argument("--port", type=int, help="destination port (tcp, udp)")
    tr.add_argument("--proto", choices=["tcp", "udp", "icmp"],
                    help="default: icmp, tcp with --port, the Service's protocol for svc/")
    tr.add_argument("--wait", type=float, default=1.5, help="seconds to wait for the answer")
    tr.add_argument("--png", metavar="FILE", help="draw the path on the lab's graph "
                    "(.png, .svg or .dot)")
    tr.add_argument("-o", "--output", choices=["text", "json"], default="text")
    tr.set_defaults(func=cmd_trace)

    cap = sub.add_parser("capture", help="record packets on a pod, node, router or link")
    cluster_arg(cap)
    cap.add_argument("target", help="NAME (all its interfaces), NAME:IFACE (one link end), "
                     "or a switch port")
    cap.add_argument("-o", "--output", metavar="FILE",
                     help="write pcapng (Wireshark, tcpdump -r); default: one line a packet")
    cap.add_argument("--count", type=int, help="stop after N packets")
    cap.add_argument("--duration", type=float, help="stop after S seconds")
    cap.set_defaults(func=cmd_capture)

    gr = sub.add_parser("graph", help="draw the lab (racks, routers, nodes, pods, tunnels)")
    cluster_arg(gr)
    gr.add_argument("-o", "--output", metavar="FILE",
                    help="lab.png, lab.svg or lab.dot (default: DOT on stdout)")
    gr.set_defaults(func=cmd_graph)


def cmd_trace(args: argparse.Namespace) -> int:
    from knetlab.rundir import live_state
    from knetlab.trace import format_trace, trace
    _, state = live_state(args.cluster)
    result = trace(state, args.src, args.dst, args.proto, args.port, args.wait)
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_trace(result))
    if args.png:
        from knetlab.graph import render, to_dot
        path = [(h.where, h.leg) for h in result.hops]
        print(f"drawn: {render(to_dot(state, path), args.png)}", file=sys.stderr)
    return 0 if result.delivered else 1


def capture_points(state: dict[str, Any], target: str) -> tuple[list[Any], str]:
    """The capture points of TARGET, and the one interface to keep ('' for all)."""
    from knetlab.rundir import lab_tag
    from knetlab.trace.capture import Point
    from knetlab.trace.endpoints import Lab
    lab = Lab(state)
    name, _, ifname = target.partition(":")
    if name in lab.hosts:
        return [Point(name, lab.netns(name))], ifname
    if target.startswith(lab_tag(lab.name)) and "-" in target:
        return [Point(f"switch:{target.split('-', 1)[0]}", None, (target,))], ""
    raise KnetlabError(f"no pod, node, router or switch port {target!r} in lab {lab.name}; "
                       "`knetlab status` lists them (a link end: NAME:IFACE)")


def cmd_capture(args: argparse.Namespace) -> int:
    from knetlab.rundir import live_state
    from knetlab.trace.capture import Capture, Frame
    from knetlab.trace.packets import decode
    from knetlab.trace.pcap import PcapngWriter
    _, state = live_state(args.cluster)
    points, ifname = capture_points(state, args.target)
    writer = PcapngWriter(args.output) if args.output else None
    done = threading.Event()
    seen = [0]

    def on_frame(f: Frame) -> None:
        if args.count and seen[0] >= args.count:
            return
        seen[0] += 1
        if writer is not None:
            writer.write(f)
        else:
            pkt = decode(f.data, f.hatype)
            what = pkt.text() if pkt else f"non-IPv4 frame, {len(f.data)} bytes"
            stamp = time.strftime("%H:%M:%S", time.localtime(f.ts)) + f".{int(f.ts % 1 * 1e6):06d}"
            print(f"{stamp} {f.where} {f.ifname} {'out' if f.outgoing else 'in '} {what}",
                  flush=True)
        if args.count and seen[0] >= args.count:
            done.set()

    keep = (lambda f: f.ifname == ifname) if ifname else None
    try:
        with Capture(points, keep, on_frame):
            print(f"capturing on {args.target} (Ctrl-C stops)", file=sys.stderr)
            done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            writer.close()
            print(f"{writer.count} packets written to {writer.path}", file=sys.stderr)
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from knetlab.graph import render, to_dot
    from knetlab.rundir import live_state
    _, state = live_state(args.cluster)
    dot = to_dot(state)
    if not args.output:
        print(dot, end="")
        return 0
    print(f"drawn: {render(dot, args.output)}")
    return 0
