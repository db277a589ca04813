"""agnhost netexec: HTTP endpoints (/hostname, /clientip, /echo, /dial, /shell, /exit, ...)
and the UDP server (hostname, echo, clientip), as upstream's netexec.go answers them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from urllib.parse import parse_qs, quote, urlsplit

from knetlab.kube.agnhost import (
    bound_socket,
    errtext,
    go_addr,
    go_json,
    hostname,
    log,
    parse_duration,
    parse_flags,
    resolve,
)
from knetlab.kube.agnhost.httpserve import Handler, Server, make_server

NETEXEC_FLAGS: dict[str, tuple[str, object]] = {
    "http-port": ("int", 8080), "udp-port": ("int", 8081), "sctp-port": ("int", -1),
    "tls-cert-file": ("str", ""), "tls-private-key-file": ("str", ""),
    "http-override": ("str", ""), "udp-listen-addresses": ("str", ""),
    "shell-path": ("str", "/bin/sh")}


class Netexec:
    """netexec's state: the UDP server's readiness and the HTTP server (for /exit)."""

    def __init__(self, opts: dict[str, object]) -> None:
        self.opts = opts
        self.udp_ready = threading.Event()
        self.server: Server | None = None

    def udp_server(self, sock: socket.socket) -> None:
        self.udp_ready.set()
        try:
            while True:
                data, peer = sock.recvfrom(2048)
                text = data.decode(errors="replace").strip().lower()
                if text == "hostname":
                    reply = hostname()
                elif text.startswith("echo "):
                    reply = text.split(" ", 1)[1]
                elif text == "clientip":
                    reply = go_addr(peer)
                else:
                    if text:
                        log(f"Unknown UDP command received from {go_addr(peer)}: {text}")
                    continue
                sock.sendto(reply.encode(), peer)
        finally:
            log("UDP server exited")
            self.udp_ready.clear()

    def exit_later(self, code: int, wait: float, timeout: float) -> None:
        """/exit: after ``wait``, stop serving (up to ``timeout`` for open requests), exit."""
        def run() -> None:
            time.sleep(wait)
            if timeout > 0 and self.server is not None:
                stopper = threading.Thread(target=self.server.shutdown, daemon=True)
                stopper.start()
                stopper.join(timeout)
            os._exit(code)
        threading.Thread(target=run, daemon=True).start()


def dial_http(request: str, family: int, addr: tuple) -> str:
    """One try of /dial over HTTP: a new connection, GET /request, 5 s timeout."""
    import http.client
    host = f"[{addr[0]}]" if family == socket.AF_INET6 else addr[0]
    path = "/" + quote(request, safe="/?&=:;%+@!$'()*,~-._")
    url = f"http://{host}:{addr[1]}{path}"
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode(errors="replace")
    except TimeoutError:
        raise RuntimeError(f'Get "{url}": context deadline exceeded '
                           "(Client.Timeout exceeded while awaiting headers)") from None
    except OSError as exc:
        raise RuntimeError(f'Get "{url}": dial tcp {host}:{addr[1]}: connect: '
                           f"{errtext(exc)}") from None
    except http.client.HTTPException as exc:
        raise RuntimeError(f'Get "{url}": {exc!r}') from None
    finally:
        conn.close()


def dial_udp(request: str, family: int, addr: tuple) -> str:
    """One try of /dial over UDP: a new socket, the request as one datagram, 5 s for a reply."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
        except OSError as exc:
            raise RuntimeError(f"udp dial failed. err:dial udp: {errtext(exc)}") from None
        local = go_addr(sock.getsockname())
        try:
            sock.send(request.encode())
        except OSError as exc:
            raise RuntimeError(f"udp connection write failed. err:write udp {local}->"
                               f"{go_addr(addr)}: {errtext(exc)}") from None
        sock.settimeout(5)
        try:
            data = sock.recv(2048)
        except OSError as exc:
            raise RuntimeError(f"reading from udp connection failed. err:'read udp {local}->"
                               f"{go_addr(addr)}: {errtext(exc)}'") from None
        if not data:
            raise RuntimeError("reading from udp connection failed. err:'<nil>'")
        return data.decode(errors="replace")


class NetexecHandler(Handler):
    state: Netexec

    ROUTES = {"/hostname": "h_hostname", "/hostName": "h_hostname", "/clientip": "h_clientip",
              "/dial": "h_dial", "/echo": "h_echo", "/exit": "h_exit", "/healthz": "h_healthz",
              "/redirect": "h_redirect", "/shell": "h_shell", "/shutdown": "h_shutdown"}

    def route(self) -> None:
        override = str(self.state.opts["http_override"])
        if override:   # --http-override: every request is served as a GET of that path
            self.path, self.command = override, "GET"
        getattr(self, self.ROUTES.get(urlsplit(self.path).path, "h_root"))()

    def h_root(self) -> None:
        log("GET /")
        self.answer(f"NOW: {time.strftime('%Y-%m-%d %H:%M:%S %z %Z')}")

    def h_hostname(self) -> None:
        log(f"GET {urlsplit(self.path).path}")
        self.answer(hostname())

    def h_clientip(self) -> None:
        log("GET /clientip")
        self.answer(go_addr(self.client_address))

    def h_healthz(self) -> None:
        log("GET /healthz")
        self.answer("", 200 if self.state.udp_ready.is_set() else 412)

    def h_echo(self) -> None:
        f = self.form()
        msg, code = f.get("msg", ""), f.get("code", "")
        log(f"GET /echo?msg={msg}&code={code}")
        if code:
            try:
                self.answer(msg, int(code))
            except ValueError:
                self.answer(f"argument 'code' must be an integer or empty, got {code!r}\n")
            return
        self.answer(msg)

    def h_redirect(self) -> None:
        f = self.form()
        location, code = f.get("location", ""), f.get("code", "")
        log(f"{self.command} /redirect?msg={location}&code={code}")
        try:
            status = int(code) if code else 302
        except ValueError:
            self.answer(f"argument 'code' must be an integer or empty, got {code!r}\n")
            return
        self.answer("", status, headers={"Location": location})

    def h_shell(self) -> None:
        f = self.form()
        cmd = f.get("shellCommand") or f.get("cmd", "")
        log(f"GET /shell?cmd={cmd}")
        proc = subprocess.run([str(self.state.opts["shell_path"]), "-c", cmd], check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out: dict[str, str] = {}
        if proc.stdout:
            out["output"] = proc.stdout.decode(errors="replace")
        if proc.returncode:
            out["error"] = (f"exit status {proc.returncode}" if proc.returncode > 0
                            else f"signal: {signal.Signals(-proc.returncode).name}")
        self.answer(go_json(out))

    def h_exit(self) -> None:
        f = self.form()
        code, timeout, wait = f.get("code", ""), f.get("timeout", ""), f.get("wait", "")
        log(f"GET /exit?code={code}&timeout={timeout}&wait={wait}")
        try:
            t = parse_duration(timeout) if timeout else 0.0
            w = parse_duration(wait) if wait else 0.0
        except ValueError:
            self.answer(f"argument 'timeout' or 'wait' must be a valid golang duration or "
                        f"empty, got {timeout!r}, {wait!r}\n")
            return
        try:
            n = int(code) if code else 0
        except ValueError:
            self.answer(f"argument 'code' must be an integer [0-127] or empty, got {code!r}\n")
            return
        log(f"Will begin shutdown in {w}s, allowing {t}s for connections to close, "
            f"then will exit with {n}")
        self.close_after = True
        self.answer("")
        self.state.exit_later(n, w, t)

    def h_shutdown(self) -> None:
        log("GET /shutdown")
        self.close_after = True
        self.answer("")
        self.state.exit_later(0, 0.0, 0.0)

    def h_dial(self) -> None:
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        host, port, request = q.get("host", ""), q.get("port", ""), q.get("request", "")
        protocol, tries_s = q.get("protocol", "").lower(), q.get("tries", "")
        log(f"GET /dial?host={host}&protocol={protocol}&port={port}&request={request}"
            f"&tries={tries_s}")
        try:
            tries = int(tries_s) if tries_s else 1
        except ValueError:
            return self.answer(f"tries parameter is invalid. strconv.Atoi: parsing "
                               f'"{tries_s}": invalid syntax\n', 400)
        if not request:
            return self.answer("request parameter not specified. <nil>\n", 400)
        dialers = {"": (dial_http, socket.SOCK_STREAM), "http": (dial_http, socket.SOCK_STREAM),
                   "udp": (dial_udp, socket.SOCK_DGRAM)}
        if protocol not in dialers:
            return self.answer(f"unsupported protocol. {protocol}\n", 400)
        dialer, kind = dialers[protocol]
        try:
            family, addr = resolve(host, port, kind)
        except ValueError as exc:
            return self.answer(f"host and/or port param are invalid. {exc}\n", 400)
        responses, errors, last = [], [], ""
        for _ in range(tries):
            try:
                last = dialer(request, family, addr)
                responses.append(last)
            except RuntimeError as exc:
                last = ""
                errors.append(str(exc))
        out: dict[str, list[str]] = {}
        if last:   # upstream: responses only when the last try answered something
            out["responses"] = responses
        if errors:
            out["errors"] = errors
        self.answer(go_json(out))


def netexec(argv: list[str]) -> int:
    opts, _ = parse_flags(argv, NETEXEC_FLAGS)
    state = Netexec(opts)
    if int(opts["udp_port"]) != -1:
        addrs = [a for a in str(opts["udp_listen_addresses"]).split(",") if a] or [""]
        for addr in sorted(set(addrs)):
            sock = bound_socket(socket.SOCK_DGRAM, int(opts["udp_port"]), addr)
            threading.Thread(target=state.udp_server, args=(sock,), daemon=True).start()
            log(f"Started UDP server on port {addr} {opts['udp_port']}")
    if int(opts["sctp_port"]) != -1:
        log("SCTP is not supported by knetlab's agnhost; --sctp-port ignored")
    handler = type("H", (NetexecHandler,), {"state": state})
    state.server = make_server(int(opts["http_port"]), handler)
    if opts["tls_cert_file"]:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(opts["tls_cert_file"]),
                            str(opts["tls_private_key_file"]) or None)
        state.server.socket = ctx.wrap_socket(state.server.socket, server_side=True)
    log(f"Started HTTP server on port {opts['http_port']}")
    state.server.serve_forever()
    while True:     # /exit with a timeout stopped the server; its thread exits the process
        time.sleep(3600)

