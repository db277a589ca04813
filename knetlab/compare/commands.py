"""``knetlab compare [--planes a,b,...] [--quick] [--out DIR] [--rate R]
[--kubeproxy-results DIR]``: bring each data plane up in turn on the same two-node
layout, measure, tear down, and write DIR/report.md, PNG charts and the raw samples.

It builds its own labs (``cmp-<plane>``), one at a time, in this process: no supervisor.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knetlab.errors import ConfigError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    from knetlab.compare.planes import BY_KEY
    cmp = sub.add_parser("compare", help="measure the data planes side by side (report + "
                         "charts + CSV)")
    cmp.add_argument("--planes", help="comma-separated, from: " + ",".join(BY_KEY)
                     + " (default: all; --quick: host,host-gw)")
    cmp.add_argument("--quick", action="store_true", help="short samples (a smoke run)")
    cmp.add_argument("--out", default="compare-results", help="output directory")
    cmp.add_argument("--rate", help="fixed rate of the CPU measurement, iperf3 -b syntax "
                     "(default 50M: below the slowest plane)")
    cmp.add_argument("--kubeproxy-results", metavar="DIR",
                     help="a directory with kubeproxy.csv from knetlab.bench.kubeproxy")
    cmp.set_defaults(func=cmd_compare)


def parse_planes(text: str | None, quick: bool) -> list[str]:
    from knetlab.compare.planes import BY_KEY, PLANES, QUICK
    if not text:
        return list(QUICK if quick else [p.key for p in PLANES])
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown or not keys:
        raise ConfigError(f"unknown plane(s) {', '.join(unknown) or '(none given)'}",
                          field="--planes", fix="use some of " + ",".join(BY_KEY))
    if "host" not in keys:
        keys.insert(0, "host")  # every ratio needs the baseline of the same run
    return keys


def cmd_compare(args: argparse.Namespace) -> int:
    from knetlab.compare.run import QUICK, Settings, compare
    keys = parse_planes(args.planes, args.quick)
    cfg = QUICK if args.quick else Settings()
    if args.rate:
        if not re.fullmatch(r"\d+(\.\d+)?[KMG]?", args.rate):
            raise ConfigError(f"{args.rate!r} is not an iperf3 rate", field="--rate",
                              fix="a number with an optional K, M or G suffix, e.g. 50M")
        cfg = dataclasses.replace(cfg, rate=args.rate)
    kp = Path(args.kubeproxy_results).resolve() if args.kubeproxy_results else None
    path = compare(keys, Path(args.out).resolve(), cfg, kp)
    print(f"report: {path}")
    return 0
