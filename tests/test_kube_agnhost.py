"""knetlab's agnhost, run as real processes on 127.0.0.1 (no root): netexec's HTTP endpoints
and UDP server, /dial to itself, connect's classification, serve-hostname's modes, pause."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPConnection

import pytest

from knetlab.kube.agnhost import parse_duration, parse_flags
from knetlab.kube.agnhost import tools as agnhost_tools

HOST = socket.gethostname()


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (netexec uses one of each)."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def poll(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"not within {timeout}s: {what}")


def run_agnhost(*args: str, timeout: float = 20, env: dict | None = None
                ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "knetlab.kube.agnhost", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def agnhost() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``agnhost ARGS`` in the background; every process is killed (by pid) after."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-P", "-m", "knetlab.kube.agnhost", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def get(url: str, timeout: float = 10) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def up(url: str) -> bool:
    try:
        get(url, timeout=1)
        return True
    except OSError:
        return False


def udp_ask(port: int, data: bytes, timeout: float = 5) -> tuple[str, tuple]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(data)
        return s.recv(2048).decode(), s.getsockname()


@pytest.fixture
def netexec(agnhost) -> tuple[int, int]:
    http, udp = free_port(), free_port()
    agnhost("netexec", f"--http-port={http}", "--udp-port", str(udp))
    base = f"http://127.0.0.1:{http}"
    poll(lambda: up(base + "/healthz"), 15, "netexec answers")
    return http, udp


def test_flags_and_durations() -> None:
    spec = {"http-port": ("int", 8080), "udp-port": ("int", 8081), "close": ("bool", False),
            "timeout": ("duration", 0.0)}
    opts, args = parse_flags(["--http-port=80", "-udp-port", "-1", "--close", "x:1",
                              "--v=2", "-timeout=1m30s"], spec)
    assert opts == {"http_port": 80, "udp_port": -1, "close": True, "timeout": 90.0}
    assert args == ["x:1"]
    assert parse_flags(["--close=false"], spec)[0]["close"] is False
    assert parse_duration("500ms") == 0.5 and parse_duration("0") == 0.0
    assert parse_duration("1h2m3.5s") == 3723.5
    for bad in ("5", "1x", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_netexec_endpoints(netexec) -> None:
    http, _ = netexec
    base = f"http://127.0.0.1:{http}"
    assert get(base + "/hostname")[:2] == (200, HOST)
    assert get(base + "/hostName")[1] == HOST
    code, body, _ = get(base + "/clientip")
    ip, port = body.rsplit(":", 1)
    assert code == 200 and ip == "127.0.0.1" and port.isdigit()   # no trailing newline
    assert get(base + "/echo?msg=hello%20there")[1] == "hello there"
    assert get(base + "/echo?msg=gone&code=503")[:2] == (503, "gone")
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/")[1].startswith("NOW: ")
    code, body, _ = get(base + "/shell?shellCommand=echo%20hi")
    assert json.loads(body) == {"output": "hi\n"}
    assert json.loads(get(base + "/shell?cmd=echo%20out;exit%203")[1]) == \
        {"output": "out\n", "error": "exit status 3"}
    conn = HTTPConnection("127.0.0.1", http, timeout=10)
    conn.request("GET", "/redirect?location=/echo%3Fmsg%3Dx&code=307")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Location")) == (307, "/echo?msg=x")
    conn.close()


def test_netexec_dial_itself(netexec) -> None:
    http, udp = netexec
    base = f"http://127.0.0.1:{http}/dial?host=127.0.0.1"
    body = get(f"{base}&port={http}&request=hostname&protocol=http&tries=3")[1]
    assert json.loads(body) == {"responses": [HOST, HOST, HOST]}
    body = get(f"{base}&port={http}&request=echo?msg=via-dial")[1]
    assert json.loads(body) == {"responses": ["via-dial"]}
    body = get(f"{base}&port={udp}&request=hostname&protocol=udp&tries=2")[1]
    assert json.loads(body) == {"responses": [HOST, HOST]}
    body = get(f"{base}&port={udp}&request=clientip&protocol=udp")[1]
    assert json.loads(body)["responses"][0].startswith("127.0.0.1:")


def test_netexec_dial_errors(netexec) -> None:
    http, _ = netexec
    closed = free_port()
    base = f"http://127.0.0.1:{http}/dial?host=127.0.0.1"
    code, body, _ = get(f"{base}&port={closed}&request=hostname&tries=2")
    out = json.loads(body)
    assert code == 200 and "responses" not in out
    assert len(out["errors"]) == 2 and "connection refused" in out["errors"][0]
    assert get(f"{base}&port={http}")[0] == 400                        # no request
    assert get(f"{base}&port={http}&request=x&tries=many")[0] == 400
    assert get(f"{base}&port={http}&request=x&protocol=sctp2")[0] == 400
    assert get(f"http://127.0.0.1:{http}/dial?host=no.such.host.invalid&port=80"
               "&request=x")[0] == 400


def test_netexec_udp_server(netexec) -> None:
    _, udp = netexec
    assert udp_ask(udp, b"hostname")[0] == HOST
    assert udp_ask(udp, b"  ECHO Hello World \n")[0] == "hello world"
    reply, local = udp_ask(udp, b"clientip")
    assert reply == f"127.0.0.1:{local[1]}"
    with pytest.raises(TimeoutError):
        udp_ask(udp, b"what is this", timeout=0.5)


def test_netexec_without_udp_is_unhealthy_and_exit_code(agnhost) -> None:
    http = free_port()
    p = agnhost("netexec", f"--http-port={http}", "--udp-port=-1")
    base = f"http://127.0.0.1:{http}"
    poll(lambda: up(base + "/hostname"), 15, "netexec answers")
    assert get(base + "/healthz")[0] == 412
    assert get(base + "/exit?code=3")[0] == 200
    assert p.wait(timeout=10) == 3


def test_connect_tcp(agnhost) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        r = run_agnhost("connect", f"127.0.0.1:{listener.getsockname()[1]}", "--timeout=5s")
        assert (r.returncode, r.stderr) == (0, "")
    r = run_agnhost("connect", f"127.0.0.1:{free_port()}", "--timeout=2s")
    assert r.returncode == 1 and r.stderr == "REFUSED\n"
    for args, word in ((["nothing"], "UNKNOWN"), (["a:1", "b:2"], "UNKNOWN"),
                       (["127.0.0.1:1", "--timeout=forever"], "UNKNOWN"),
                       (["no.such.host.invalid:80"], "DNS")):
        r = run_agnhost("connect", *args)
        assert r.returncode == 1 and r.stderr.startswith(word + ":"), (args, r.stderr)


def test_connect_tcp_timeout() -> None:
    """A listener whose accept queue is full drops new SYNs: the handshake times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):      # fill the queue until a connect times out
                s = socket.socket()
                fillers.append(s)
                s.settimeout(0.3)
                try:
                    s.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            r = run_agnhost("connect", f"127.0.0.1:{port}", "--timeout=300ms")
        finally:
            for s in fillers:
                s.close()
    assert r.returncode == 1 and r.stderr == "TIMEOUT\n"


def test_connect_udp(netexec) -> None:
    _, udp = netexec
    r = run_agnhost("connect", f"127.0.0.1:{udp}", "--protocol=udp", "--timeout=3s")
    assert (r.returncode, r.stderr) == (0, "")
    r = run_agnhost("connect", f"127.0.0.1:{free_port()}", "--protocol=udp", "--timeout=3s")
    assert r.returncode == 1 and r.stderr.startswith("REFUSED: "), r.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:   # never answers
        silent.bind(("127.0.0.1", 0))
        r = run_agnhost("connect", f"127.0.0.1:{silent.getsockname()[1]}",
                        "--protocol", "udp", "--timeout=300ms")
    assert r.returncode == 1 and r.stderr.startswith("TIMEOUT: "), r.stderr


def test_serve_hostname_http(agnhost) -> None:
    port = free_port()
    p = agnhost("serve-hostname", f"--port={port}", "--close")
    base = f"http://127.0.0.1:{port}"
    poll(lambda: up(base), 15, "serve-hostname answers")
    code, body, headers = get(base + "/any/path")
    assert (code, body) == (200, HOST) and headers.get("Connection") == "close"
    # upstream keeps serving after SIGTERM (the pod serves while it terminates)
    p.send_signal(signal.SIGTERM)
    poll(lambda: "Awaiting pod deletion" in _read_nonblocking(p), 10, "SIGTERM noticed")
    assert get(base + "/hostname")[1] == HOST


def _read_nonblocking(p: subprocess.Popen) -> str:
    os.set_blocking(p.stderr.fileno(), False)
    return p.stderr.read() or ""


def test_serve_hostname_raw_tcp_and_udp(agnhost) -> None:
    port = free_port()
    agnhost("serve-hostname", "--http=false", "--tcp", "--udp", "--port", str(port))

    def tcp() -> str:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(1024).decode()
        except OSError:
            return ""
    assert poll(tcp, 15, "serve-hostname --tcp answers") == HOST
    assert udp_ask(port, b"anything")[0] == HOST
    r = run_agnhost("serve-hostname", "--tcp", f"--port={free_port()}")   # --http is on
    assert r.returncode == 1 and "at the same time" in r.stderr


def test_porter(agnhost) -> None:
    port = free_port()
    agnhost("porter", env={**os.environ, f"SERVE_PORT_{port}": "foo"})
    poll(lambda: up(f"http://127.0.0.1:{port}"), 15, "porter answers")
    assert get(f"http://127.0.0.1:{port}/whatever")[1] == "foo"


def test_pause_exits_2_on_sigterm(agnhost) -> None:
    p = agnhost("pause")
    assert p.stdout.readline() == "Paused\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 2


def test_dns_lists(tmp_path, monkeypatch, capsys) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local"
                    " cluster.local\noptions ndots:5\n")
    monkeypatch.setattr(agnhost_tools, "RESOLV_CONF", str(conf))
    assert agnhost_tools.dns_suffix([]) == 0
    assert agnhost_tools.dns_server_list([]) == 0
    assert capsys.readouterr().out == \
        "default.svc.cluster.local,svc.cluster.local,cluster.local\n10.96.0.10\n"


def test_unknown_subcommand_and_help() -> None:
    r = run_agnhost("frobnicate")
    assert r.returncode == 1 and 'unknown command "frobnicate"' in r.stderr
    assert "netexec" in r.stderr
    r = run_agnhost("netexec", "--no-such-flag")
    assert r.returncode == 1 and "unknown flag" in r.stderr
    assert run_agnhost().returncode == 0
