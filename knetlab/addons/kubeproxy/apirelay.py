"""The API server's address on the node network: ``NODE_IP:6443`` relayed to the API server.

The lab's API server listens on 127.0.0.1 of the machine's root namespace, which no pod can
reach. A real cluster's ``kubernetes`` Service points at the control-plane nodes' addresses
(port 6443); here every node plays that part: the kube-proxy agent of each node listens on
``NODE_IP:6443`` inside the node's namespace and relays each TCP connection, bytes only
(TLS passes through untouched, so clients verify the lab's CA and send their own token), to
the API server. The ``kubernetes`` EndpointSlice lists these addresses, so a pod's
connection to ``10.96.0.1:443`` is DNATed by the node's proxy rules like any other
Service's and reaches the API server over the data plane.

The listening socket is made inside the node's namespace (``knetlab.netns.entered``); the
threads that accept and connect upstream run in the root namespace, where 127.0.0.1 is the
API server's.
"""

from __future__ import annotations

import logging
import socket
import threading

from knetlab.netns import entered

log = logging.getLogger("knetlab.addons.kubeproxy.apirelay")
#: kubeadm's API server port: where the ``kubernetes`` Endpoints point on every node
API_PORT = 6443


class ApiServerRelay:
    def __init__(self, netns: str, listen_ip: str, upstream_port: int,
                 listen_port: int = API_PORT) -> None:
        self.netns, self.listen_ip, self.listen_port = netns, listen_ip, listen_port
        self.upstream_port = upstream_port
        self._sock: socket.socket | None = None

    def start(self) -> None:
        with entered(self.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.listen_ip, self.listen_port))
        sock.listen(64)
        self._sock = sock
        threading.Thread(target=self._accept, name="apirelay", daemon=True).start()
        log.info("relaying %s:%d (node netns) to the API server on 127.0.0.1:%d",
                 self.listen_ip, self.listen_port, self.upstream_port)

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        sock = self._sock
        while sock is not None and sock.fileno() >= 0:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError as exc:
            log.warning("API server unreachable: %s", exc)
            client.close()
            return
        upstream.settimeout(None)
        t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        t.start()
        _pump(client, upstream)
        t.join()
        client.close()
        upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends, then end dst's sending side (half-close)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
