"""agnhost's other servers: serve-hostname (HTTP, raw TCP, raw UDP), porter, liveness."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

from knetlab.kube.agnhost import bound_socket, go_addr, go_json, hostname, log, parse_flags
from knetlab.kube.agnhost.httpserve import Handler, Server, make_server, serve_forever


def serve_hostname(argv: list[str]) -> int:
    opts, _ = parse_flags(argv, {"http": ("bool", True), "tcp": ("bool", False),
                                 "udp": ("bool", False), "close": ("bool", False),
                                 "port": ("int", 9376)})
    if opts["http"] and (opts["tcp"] or opts["udp"]):
        log("Can't server TCP/UDP mode and HTTP mode at the same time")
        return 1
    name, port = hostname(), int(opts["port"])
    # Upstream keeps serving for 60 s after SIGTERM ("awaiting pod deletion"): the pod is
    # killed at the end of its grace period, and serves while it is terminating.
    got = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: got.set())
    if opts["tcp"]:
        lsock = bound_socket(socket.SOCK_STREAM, port)
        lsock.listen(128)

        def tcp_loop() -> None:
            while True:
                conn, peer = lsock.accept()
                log(f"TCP request from {go_addr(peer)}")
                with conn:
                    conn.sendall(name.encode())
        threading.Thread(target=tcp_loop, daemon=True).start()
    if opts["udp"]:
        usock = bound_socket(socket.SOCK_DGRAM, port)

        def udp_loop() -> None:
            while True:
                _, peer = usock.recvfrom(16)
                log(f"UDP request from {go_addr(peer)}")
                usock.sendto(name.encode(), peer)
        threading.Thread(target=udp_loop, daemon=True).start()
    if opts["http"]:
        class HostnameHandler(Handler):
            close_after = bool(opts["close"])

            def route(self) -> None:
                log(f"HTTP request from {go_addr(self.client_address)}")
                self.answer(name)
        srv = make_server(port, HostnameHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    log(f"Serving on port {port}.")
    got.wait()
    log("Shutting down after receiving signal: terminated.")
    log("Awaiting pod deletion.")
    time.sleep(60)
    return 0


def porter(argv: list[str]) -> int:
    opts, _ = parse_flags(argv, {"json-response": ("bool", False)})
    servers: list[Server] = []
    for key, value in os.environ.items():
        m = re.fullmatch(r"SERVE_(PORT|TCP_PORT|UDP_PORT|TLS_PORT)_(\d+)", key)
        if not m:
            continue
        port = int(m.group(2))
        if m.group(1) == "UDP_PORT":
            threading.Thread(target=_porter_udp, args=(port, value), daemon=True).start()
            continue

        class PorterHandler(Handler):
            body = value

            def route(self) -> None:
                if opts["json_response"]:
                    self.answer(go_json({"Method": self.command, "Body": self.body}),
                                ctype="application/json")
                else:
                    self.answer(self.body)
        srv = make_server(port, PorterHandler, "0.0.0.0")
        if m.group(1) == "TLS_PORT":
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.environ.get("CERT_FILE", "localhost.crt"),
                                os.environ.get("KEY_FILE", "localhost.key"))
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        servers.append(srv)
    if servers:
        serve_forever(servers)
    threading.Event().wait()
    return 0


def _porter_udp(port: int, value: str) -> None:
    sock = bound_socket(socket.SOCK_DGRAM, port, "0.0.0.0")
    log(f"Started UDP server on port {port}")
    while True:
        _, peer = sock.recvfrom(16)
        sock.sendto(value.encode(), peer)


def liveness(argv: list[str]) -> int:
    parse_flags(argv, {})
    started = time.monotonic()

    class LivenessHandler(Handler):
        def route(self) -> None:
            path, age = urlsplit(self.path).path, time.monotonic() - started
            if path == "/started":
                self.answer(f"{age:.6f}s")
            elif path == "/healthz":
                if age > 10:
                    self.answer(f"error: {age}", 500)
                else:
                    self.answer("ok")
            elif path == "/redirect":
                self.answer("", 302, headers={"Location": self.form().get("loc", "")})
            else:
                self.answer("404 page not found\n", 404)
    make_server(8080, LivenessHandler).serve_forever()
    return 0

