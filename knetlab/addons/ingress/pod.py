"""The ingress-nginx controller pod's program: nginx, and the controller that feeds it.

``/nginx-ingress-controller --state-dir DIR [--http-port 80] [--https-port 443]
[--health-port 10254]``, run by the kubelet as the container of the
``ingress-nginx-controller`` DaemonSet (``hostNetwork: true``; the image
``registry.k8s.io/ingress-nginx/controller`` maps to this program, ``knetlab.kube.images``).

As in ingress-nginx, one pod holds both halves:

1. nginx starts first, as a child in the pod's network namespace (with hostNetwork, the
   node's: it listens on the node's addresses), from ``DIR/<node>/``: ``nginx.conf``,
   ``routes.conf`` (an empty table until the first sync: every request 404), certificates,
   pid file and logs. ``DIR`` is in the lab's run dir (the pod sees the machine's ``/run``),
   so ``knetlab ingress show`` reads the controller's ``routes.json`` there.
2. The controller is an in-cluster API client, as ingress-nginx is: the service-account token
   and CA the kubelet mounted, the ``kubernetes`` Service at ``KUBERNETES_SERVICE_HOST``
   (``KubeClient.in_cluster``). With hostNetwork its connections to 10.96.0.1:443 leave from
   the node itself, so the node's kube-proxy OUTPUT rules (or the userspace proxy's) carry
   them to the API server. Until they exist the informers retry with back-off and the pod is
   not ready (no ``/healthz`` before the first sync).
3. The controller (``controller.py``) runs until SIGTERM; nginx gets SIGTERM with it (same
   process group, and PR_SET_PDEATHSIG if this process dies first).

Ready (``/healthz`` on the health port answers 200) once the first rendered table is loaded.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from knetlab.addons.ingress import model, nginx
from knetlab.addons.ingress.certs import CertStore
from knetlab.addons.ingress.controller import HEALTH_PORT, KEY, Controller
from knetlab.addons.ingress.render import render
from knetlab.kube.client import KubeClient, NotInClusterError

log = logging.getLogger("knetlab.addons.ingress")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_nginx(state: Path, http_port: int, https_port: int) -> subprocess.Popen[bytes]:
    """nginx with an empty table (404 everywhere, not yet ready), in this namespace."""
    certs = CertStore(state / "certs")
    routes = state / "routes.conf"
    routes.write_text(render(model.Routing(servers={model.CATCH_ALL: model.Server(
        model.CATCH_ALL)}), http_port=http_port, https_port=https_port,
        cert_dir=str(certs.dir), default_cert=str(certs.ensure_default())))
    conf = state / "nginx.conf"
    conf.write_text(nginx.main_conf(state, routes, f"ingress-nginx on {socket.gethostname()}"))
    ok, why = nginx.check(conf)
    if not ok:
        raise SystemExit(f"nginx -t refused the initial configuration: {why}")
    (state / "nginx.pid").unlink(missing_ok=True)
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(state / "error.log"),
                             "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only
    deadline = time.monotonic() + 20
    while not (state / "nginx.pid").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (state / "error.log").read_text(errors="replace")[-2000:] \
                if (state / "error.log").exists() else ""
            raise SystemExit(f"nginx did not start (exit {proc.returncode}): {tail}")
        time.sleep(0.02)
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nginx-ingress-controller")
    p.add_argument("--state-dir", required=True, help="per-node dirs are made under it")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=443)
    p.add_argument("--health-port", type=int, default=HEALTH_PORT)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        client = KubeClient.in_cluster()
    except NotInClusterError as exc:
        log.error("%s", exc)
        return 1
    node = os.environ.get("NODE_NAME") or socket.gethostname()
    state = Path(args.state_dir) / node
    state.mkdir(parents=True, exist_ok=True)
    proc = start_nginx(state, args.http_port, args.https_port)
    ctl = Controller(client, state, args.http_port,
                     args.https_port, identity=os.environ.get("POD_NAME") or node,
                     health_port=args.health_port)

    def on_term(*_: object) -> None:
        ctl.shutdown()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, lambda *_: ctl.queue.add(KEY))
    try:
        ctl.run(None)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
