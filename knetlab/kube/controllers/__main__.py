"""``python -m knetlab.kube.controllers --kubeconfig PATH [--only a,b]``: run the controller
manager until SIGTERM; ``--ready-file`` is written once the caches have synced."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from knetlab.errors import KnetlabError
from knetlab.kube.client import KubeClient
from knetlab.kube.controllers.manager import CONTROLLERS, ControllerManager


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knetlab.kube.controllers")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--only", default="",
                    help=f"comma-separated controllers to run (of {','.join(CONTROLLERS)})")
    ap.add_argument("--ready-file", default="")
    ap.add_argument("--load-balancer-cidr", default="",
                    help="the pool LoadBalancer Services take addresses from")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = Path(args.ready_file) if args.ready_file else None
    if ready:
        ready.unlink(missing_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        manager = ControllerManager(KubeClient.from_kubeconfig(args.kubeconfig),
                                    [o for o in args.only.split(",") if o] or None,
                                    {"load_balancer_cidr": args.load_balancer_cidr})
        manager.start()
    except KnetlabError as exc:
        print(f"kube-controller-manager: {exc}", file=sys.stderr)
        return 1
    if ready:
        ready.write_text("ok\n")
    stop.wait()
    manager.stop()
    if ready:
        ready.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
