"""The cluster DNS pod's program: unbound, fed by a controller that watches the API.

``python -m knetlab.addons.dns.server --domain cluster.local --dns-ip IP
[--reverse-cidr CIDR]... [--upstream IP]...``, run by the kubelet as the container of the
``coredns`` Deployment in kube-system (the image ``registry.k8s.io/coredns/coredns`` maps to
this program, ``knetlab.kube.images``).

Design notes:

- Everything runs in the pod's own network namespace. unbound starts first, as a child,
  listening on port 53; the readiness socket is ``:8181/ready`` (CoreDNS's port and path).
- The API is reached as CoreDNS's kubernetes plugin reaches it: an in-cluster client
  (``KubeClient.in_cluster``: the service-account token and CA the kubelet mounted, the
  ``kubernetes`` Service at ``KUBERNETES_SERVICE_HOST``), so requests go to 10.96.0.1:443
  and through the node's kube-proxy rules to the API server. Until that node's kube-proxy
  has synced, the Service is not routed: the informers retry with back-off and the pod
  stays not ready, as CoreDNS does until its first list succeeds.
- Level-triggered: informers on Services, EndpointSlices and Pods only set a flag; one
  sync thread renders the whole record set (``records.build_records``), diffs it with
  what unbound holds and sends the difference (``local_datas_remove`` then
  ``local_datas``). A burst of events becomes one sync. Every ``RESYNC_S`` every record
  is sent again (unbound keeps one copy of a record), which repairs any drift; if
  unbound dies the pod's container exits and the kubelet restarts it.
- Ready once the first full record set is loaded: before that the pod would answer
  NXDOMAIN for names that exist.
"""

from __future__ import annotations

import argparse
import ctypes
import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from knetlab.addons.dns.records import Records, ZoneConfig, build_records, diff, reverse_zones
from knetlab.addons.dns.unbound import Control, ServerConfig, UnboundError, render

if TYPE_CHECKING:
    from knetlab.kube.client import KubeClient

log = logging.getLogger("knetlab.dns")
PR_SET_PDEATHSIG = 1
READY_PORT = 8181
RESYNC_S = 30.0  # a full re-send now and then repairs anything unbound lost


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this program dies, so a restarted container
    never finds port 53 held by the unbound of its previous run."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Unbound:
    """The unbound child process of this pod."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.control = Control(cfg.control_socket)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        Path(self.cfg.directory).mkdir(parents=True, exist_ok=True)
        conf = Path(self.cfg.directory) / "unbound.conf"
        conf.write_text(render(self.cfg))
        check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise UnboundError(f"unbound.conf rejected: {check.stderr or check.stdout}")
        Path(self.cfg.control_socket).unlink(missing_ok=True)
        self.proc = subprocess.Popen(["unbound", "-d", "-p", "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while not self.control.ping():
            if self.proc.poll() is not None:
                raise UnboundError(f"unbound exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise UnboundError("unbound did not open its control socket within 10 s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Feeder:
    """Keeps unbound's local data equal to the records the API implies."""

    def __init__(self, client: KubeClient, zone: ZoneConfig, unbound: Unbound) -> None:
        from knetlab.kube.client import Informer
        self.zone, self.unbound = zone, unbound
        self.informers = {r: Informer(client, r) for r in ("services", "endpointslices", "pods")}
        self.applied: Records = {}
        self.ready = threading.Event()
        self.dirty = threading.Event()
        self.syncs = 0

    def start(self) -> None:
        for inf in self.informers.values():
            inf.add_handler(lambda kind, obj, old: self.dirty.set())
            inf.start()
        threading.Thread(target=self._loop, name="dns-sync", daemon=True).start()

    def _loop(self) -> None:
        for inf in self.informers.values():
            while not inf.wait_synced(5):
                log.info("waiting for the %s informer (is the kubernetes Service routed on "
                         "this node yet?)", inf.resource)
        last_full = 0.0
        while True:
            self.dirty.wait(RESYNC_S)
            self.dirty.clear()
            if not self.unbound.alive():
                log.error("unbound exited (%s); the pod restarts", self.unbound.proc
                          and self.unbound.proc.returncode)
                os._exit(1)
            full = time.monotonic() - last_full > RESYNC_S
            try:
                self.sync(full)
            except (UnboundError, OSError) as exc:
                log.warning("sync failed, retrying with every record: %s", exc)
                last_full = 0.0
                self.dirty.set()
                time.sleep(0.2)
                continue
            if full:
                last_full = time.monotonic()

    def sync(self, full: bool = False) -> None:
        t = time.monotonic()
        desired = build_records(self.zone, self.informers["services"].items(),
                                self.informers["endpointslices"].items(),
                                self.informers["pods"].items())
        if full:  # re-send every record (unbound ignores one it holds): no gap in answers
            remove = sorted(set(self.applied) - set(desired))
            add = [rr for rrs in desired.values() for rr in sorted(rrs)]
        else:
            remove, add = diff(self.applied, desired)
        self.unbound.control.remove(remove)
        self.unbound.control.add(add)
        self.applied = desired
        self.syncs += 1
        self.ready.set()
        # pods' status updates make many syncs that change nothing: log only the others
        log.log(logging.INFO if remove or add else logging.DEBUG,
                "sync %d: %d names, -%d +%d records in %.1f ms", self.syncs, len(desired),
                len(remove), len(add), (time.monotonic() - t) * 1000)


def serve_ready(sock: socket.socket, feeder: Feeder) -> None:
    """CoreDNS's readiness endpoint: 200 on /ready once the records are loaded."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            ok = self.path in ("/ready", "/health") and (
                self.path == "/health" or feeder.ready.is_set())
            body = b"OK" if ok else b"not ready"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", READY_PORT), Handler,
                                             bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    # nothing shuts it down, so no need to look for that twice a second (the default)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 3600.0},
                     name="ready", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knetlab-dns", description=__doc__.splitlines()[0])
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--dns-ip", default="10.96.0.10")
    p.add_argument("--ttl", type=int, default=5)
    p.add_argument("--reverse-cidr", action="append", default=[])
    p.add_argument("--upstream", action="append", default=[])
    p.add_argument("--dir", default="/var/lib/knetlab-dns")
    p.add_argument("--port", type=int, default=53)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    zone = ZoneConfig(domain=args.domain, ttl=args.ttl, dns_ip=args.dns_ip,
                      reverse_cidrs=tuple(args.reverse_cidr))
    unbound = Unbound(ServerConfig(directory=args.dir,
                                   zones=[zone.origin, *reverse_zones(args.reverse_cidr)],
                                   upstreams=args.upstream, port=args.port))
    from knetlab.kube.client import KubeClient, NotInClusterError
    try:
        client = KubeClient.in_cluster()
    except NotInClusterError as exc:
        log.error("%s", exc)
        return 1
    unbound.start()
    ready_sock = socket.create_server(("0.0.0.0", READY_PORT), reuse_port=False)
    feeder = Feeder(client, zone, unbound)
    serve_ready(ready_sock, feeder)
    feeder.start()
    log.info("serving %s on port %d (upstreams: %s)", zone.origin, args.port,
             ", ".join(args.upstream) or "none: other names are REFUSED")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if not unbound.alive():
            log.error("unbound exited with %s", unbound.proc and unbound.proc.returncode)
            return 1
    unbound.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
