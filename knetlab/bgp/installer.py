"""A node's route installer: the API program behind its ExaBGP (like Calico's BIRD kernel
protocol). Reads ExaBGP's JSON on stdin, keeps every peer's routes apart (two reflectors
are independent), and applies announces, withdraws and peer-down to the kernel.

    python -m knetlab.bgp.installer --pool 10.244.0.0/16 --self 192.168.0.11 \
        [--own 10.244.1.0/24] [--store ETCD_URL --node node-1] \
        [--encap ipip|ipip-crosssubnet]

With ``--store`` the node's IPAM blocks are announced from here (knetlab/bgp/blocks.py),
not from ExaBGP's static config, and are re-sent to every peer whose session comes up.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from knetlab.bgp.blocks import BlockAnnouncer
from knetlab.bgp.kernel import KernelRoutes
from knetlab.bgp.messages import PeerTable, api_bursts, parse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="knetlab.bgp.installer")
    p.add_argument("--pool", required=True, action="append",
                   help="accept learned routes inside this network (repeatable)")
    p.add_argument("--self", dest="self_ips", action="append", default=[])
    p.add_argument("--own", action="append", default=[])
    p.add_argument("--encap", default="none", choices=["none", "ipip", "ipip-crosssubnet"])
    p.add_argument("--store", help="the lab store (Store.to_arg): announce this node's "
                   "IPAM blocks")
    p.add_argument("--node", help="the node whose blocks to announce (with --store)")
    args = p.parse_args(argv)
    table = PeerTable(os.environ.get("KNETLAB_BGP_STATE"))
    kernel = KernelRoutes(",".join(args.pool), set(args.own), set(args.self_ips), args.encap)
    kernel.flush()
    blocks = _announcer(args, kernel) if args.store else None
    table.save({"role": "node"})
    for burst in api_bursts():
        changed: set[str] = set()
        for line in burst:
            ev = parse(line)
            if ev is None:
                continue
            if blocks and ev.kind == "state" and ev.state == "up":
                blocks.resend(ev.peer)
            changed |= table.apply(ev)
        if changed:  # one batch per burst: both reflectors' copies of a route at once
            kernel.sync(changed, {pfx: table.paths(pfx) for pfx in changed})
        table.save({"role": "node"})


def _announcer(args: argparse.Namespace, kernel: KernelRoutes) -> BlockAnnouncer:
    out = threading.Lock()

    def emit(command: str) -> None:
        with out:
            sys.stdout.write(command + "\n")
            sys.stdout.flush()

    def own(blocks: set[str]) -> None:
        kernel.own = set(args.own) | blocks  # never install our own blocks as learned

    announcer = BlockAnnouncer(args.store, args.node, args.self_ips[0], emit, own,
                               kernel.batch.send)
    announcer.reconcile(announcer.read_blocks())  # announced before any session is up
    announcer.start()
    return announcer


if __name__ == "__main__":
    main()
