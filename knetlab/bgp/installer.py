"""A node's route installer: the API program behind its ExaBGP (like Calico's BIRD kernel
protocol). Reads ExaBGP's JSON on stdin, keeps every peer's routes apart (two reflectors
are independent), and applies announces, withdraws and peer-down to the kernel.

    python -m knetlab.bgp.installer --pool 10.244.0.0/16 --self 192.168.0.11 \
        --own 10.244.1.0/24 [--encap ipip]
"""

from __future__ import annotations

import argparse
import os
import sys

from knetlab.bgp.kernel import KernelRoutes
from knetlab.bgp.messages import PeerTable, parse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="knetlab.bgp.installer")
    p.add_argument("--pool", required=True)
    p.add_argument("--self", dest="self_ips", action="append", default=[])
    p.add_argument("--own", action="append", default=[])
    p.add_argument("--encap", default="none", choices=["none", "ipip"])
    args = p.parse_args(argv)
    table = PeerTable(os.environ.get("KNETLAB_BGP_STATE"))
    kernel = KernelRoutes(args.pool, set(args.own), set(args.self_ips), args.encap)
    kernel.flush()
    table.save({"role": "node"})
    for line in sys.stdin:
        ev = parse(line)
        if ev is None:
            continue
        changed = table.apply(ev)
        if changed:
            kernel.sync(changed, {pfx: table.paths(pfx) for pfx in changed})
        table.save({"role": "node"})


if __name__ == "__main__":
    main()
