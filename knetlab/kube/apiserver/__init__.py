"""knetlab's Kubernetes API server: etcd-backed, spoken to by unmodified kubectl and the
official Python client. ``ApiServerDaemon`` runs it as a lab daemon
(``python -m knetlab.kube.apiserver``); the modules:

- ``app``: HTTPS server, auth, routing; ``rest``: the verbs; ``registry``: the generic
  etcd-backed store; ``strategies``, ``defaults``, ``validation``: per-kind behaviour;
- ``resources``: the resource table; ``discovery``: discovery documents;
  ``tables``: server-side printing; ``selectors``; ``watch``: the etcd-watch cacher;
- ``streams``: logs, exec and port-forward; ``errors``: Status.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request
from pathlib import Path

from knetlab.daemon import Daemon
from knetlab.rundir import RunDir


class ApiServerDaemon(Daemon):
    name = "kube-apiserver"
    ready_timeout = 15.0

    def __init__(self, rundir: RunDir, owner: str = "control-plane", *, etcd_url: str,
                 port: int, service_cidr: str = "10.96.0.0/12",
                 node_port_range: str = "30000-32767") -> None:
        super().__init__(rundir, owner)
        self.etcd_url, self.port = etcd_url, port
        self.service_cidr, self.node_port_range = service_cidr, node_port_range
        self.kube_dir = Path(rundir.path) / "kube"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "knetlab.kube.apiserver", "--rundir", str(self.rundir.path),
                "--etcd", self.etcd_url, "--port", str(self.port),
                "--service-cidr", self.service_cidr, "--cluster-name", self.rundir.cluster,
                "--node-port-range", self.node_port_range]

    def match(self) -> str:
        return f"knetlab.kube.apiserver --rundir {self.rundir.path}"

    def is_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.kube_dir / "ca.crt"))
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own https URL
                    self.url + "/readyz", timeout=0.5, context=ctx) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False
