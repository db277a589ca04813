"""agnhost's HTTP serving: a threaded server on every address and a Go-like handler base."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from knetlab.kube.agnhost import bound_socket


class Server(ThreadingHTTPServer):
    """A threaded HTTP server; each request in its own thread (a /dial to itself works)."""

    daemon_threads = True


def make_server(port: int, handler: type[BaseHTTPRequestHandler], host: str = "") -> Server:
    """An HTTP server on a ``bound_socket``. HTTPServer's own bind is skipped: it calls
    getfqdn(), a reverse DNS lookup that waits on cluster DNS that may not exist yet."""
    sock = bound_socket(socket.SOCK_STREAM, port, host)
    sock.listen(128)
    srv = Server(sock.getsockname()[:2], handler, bind_and_activate=False)
    srv.socket.close()
    srv.socket, srv.address_family = sock, sock.family
    srv.server_name, srv.server_port = str(sock.getsockname()[0]), sock.getsockname()[1]
    return srv


class Handler(BaseHTTPRequestHandler):
    """Base of the HTTP handlers: one ``route`` for every method, Go-like plain answers."""

    protocol_version = "HTTP/1.1"
    server_version = "agnhost"
    close_after = False   # serve-hostname --close

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:
        pass  # each route logs what upstream logs

    def answer(self, body: str = "", code: int = 200, ctype: str = "text/plain; charset=utf-8",
               headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_after:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def form(self) -> dict[str, str]:
        """Go's r.FormValue source: query values, then an urlencoded body's."""
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length and "urlencoded" in self.headers.get("Content-Type", ""):
            body = self.rfile.read(length).decode(errors="replace")
            for k, v in parse_qs(body, keep_blank_values=True).items():
                query.setdefault(k, v)
        return {k: v[0] for k, v in query.items()}

    def route(self) -> None:
        raise NotImplementedError

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        self.route()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815


def serve_forever(servers: list[Server]) -> None:
    """Serve every server in its own thread; return only if one stops."""
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    while all(t.is_alive() for t in threads):
        threads[0].join(1.0)

