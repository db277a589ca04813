"""``python -m knetlab.kube.apiserver``: argument parsing, then serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .app import ApiServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m knetlab.kube.apiserver",
                                description="knetlab's Kubernetes API server (etcd-backed)")
    p.add_argument("--rundir", required=True, help="the lab's run dir (holds kube/)")
    p.add_argument("--etcd", required=True, help="etcd client URL, e.g. http://127.0.0.1:2379")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--service-cidr", default="10.96.0.0/12")
    p.add_argument("--cluster-name", default="knetlab")
    p.add_argument("--node-port-range", default="30000-32767")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    lo, hi = (int(x) for x in args.node_port_range.split("-"))
    server = ApiServer(args.rundir, args.etcd, args.port, args.service_cidr, args.cluster_name,
                       (lo, hi), args.bind)
    runner = await server.start()
    logging.getLogger("knetlab.kube.apiserver").info("serving on https://%s:%d",
                                                     args.bind, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()  # ends the watch streams first, so connections close at once
    await asyncio.wait_for(runner.cleanup(), 2.0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
