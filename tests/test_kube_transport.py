"""The API client's own HTTP/1.1 transport (knetlab/kube/transport.py) and kubeconfig reader,
against a scripted TLS server on loopback (no lab, no root): response framings, keep-alive,
a watch split across chunks, a connection the server dropped, the watch taking the list's
connection, and kubeconfigs in the forms knetlab, kubectl and a careless user write."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from knetlab.errors import KnetlabError
from knetlab.kube.client import ApiError, KubeClient, read_kubeconfig
from knetlab.kube.pki import make_pki

ROOT = Path(__file__).resolve().parent.parent

#: what the server does with one request on one connection: send bytes, maybe close
Reply = Callable[[str], tuple[bytes, bool]]


class ScriptedServer:
    """A TLS server (the lab's certificate) answering requests from a list of replies, one
    per request in order; it records each request line and which connection carried it."""

    def __init__(self, kube_dir: Path, replies: list[Reply]) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(kube_dir / "apiserver.crt", kube_dir / "apiserver.key")
        self.replies = replies
        self.seen: list[tuple[int, str]] = []  # (connection number, request line)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._conn, args=(raw, self.conns), daemon=True).start()

    def _conn(self, raw: socket.socket, number: int) -> None:
        with self.ctx.wrap_socket(raw, server_side=True) as tls:
            buf = b""
            while self.replies:
                while b"\r\n\r\n" not in buf:
                    more = tls.recv(65536)
                    if not more:
                        return
                    buf += more
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next((int(h.split(":")[1]) for h in lines
                               if h.lower().startswith("content-length:")), 0)
                while len(buf) < length:
                    buf += tls.recv(65536)
                buf = buf[length:]
                self.seen.append((number, lines[0]))
                data, close = self.replies.pop(0)(lines[0])
                tls.sendall(data)
                if close:
                    return

    def close(self) -> None:
        self.listener.close()


def sized(body: dict, status: str = "200 OK") -> Reply:
    data = json.dumps(body).encode()
    return lambda _line: (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data, False)


def chunked(pieces: list[bytes]) -> Reply:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    out += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return lambda _line: (out, False)


def until_close(body: dict) -> Reply:
    return lambda _line: (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
                          + json.dumps(body).encode(), True)


def dropped() -> Reply:
    """The server closes the connection without answering (an idle kept-alive connection
    it timed out)."""
    return lambda _line: (b"", True)


@pytest.fixture(scope="module")
def kube_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kube")
    make_pki(d, "https://127.0.0.1:1", "bt-transport")
    return d


@pytest.fixture
def serve(kube_dir: Path) -> Iterator[Callable[[list[Reply]], tuple[ScriptedServer,
                                                                      KubeClient]]]:
    servers: list[ScriptedServer] = []

    def start(replies: list[Reply]) -> tuple[ScriptedServer, KubeClient]:
        server = ScriptedServer(kube_dir, replies)
        servers.append(server)
        client = KubeClient(f"https://127.0.0.1:{server.port}", "t0ken",
                            (kube_dir / "ca.crt").read_bytes(), timeout=5)
        return server, client

    yield start
    for s in servers:
        s.close()


def test_keep_alive_and_framings(serve) -> None:  # noqa: ANN001 - fixture factory
    server, client = serve([sized({"kind": "PodList", "items": [1]}),
                            sized({"kind": "Status", "reason": "NotFound", "code": 404},
                                  "404 Not Found"),
                            chunked([b'{"kind":', b'"Pod"}']),
                            until_close({"kind": "Node"}),
                            sized({"kind": "Namespace"})])
    assert client.list("pods")["items"] == [1]
    with pytest.raises(ApiError) as err:
        client.get("pods", "x", "default")
    assert err.value.code == 404 and err.value.reason == "NotFound"
    assert client.get("pods", "y", "default") == {"kind": "Pod"}
    assert client.get("nodes", "n") == {"kind": "Node"}
    assert client.get("namespaces", "ns") == {"kind": "Namespace"}
    # four answers on one kept-alive connection; the one delimited by the connection's end
    # used it up, so the last request dialled again
    assert [n for n, _ in server.seen] == [1, 1, 1, 1, 2]
    assert server.seen[0][1].startswith("GET /api/v1/pods") and server.seen[0][1].endswith(
        " HTTP/1.1")


def test_retries_a_connection_the_server_dropped(serve) -> None:  # noqa: ANN001
    server, client = serve([sized({"n": 1}), dropped(), sized({"n": 2})])
    assert client.request("GET", "/a") == {"n": 1}
    assert client.request("GET", "/b") == {"n": 2}
    assert [n for n, _ in server.seen] == [1, 1, 2]


def test_watch_lines_across_chunks_reuses_the_lists_connection(serve) -> None:  # noqa: ANN001
    events = [{"type": "ADDED", "object": {"metadata": {"name": f"p{i}",
                                                        "resourceVersion": str(i)}}}
              for i in range(3)]
    stream = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    # cut mid-event and several events in one chunk, as TCP and aiohttp may deliver them
    server, client = serve([sized({"metadata": {"resourceVersion": "0"}, "items": []}),
                            chunked([stream[:7], stream[7:90], stream[90:]]),
                            sized({"kind": "after"})])
    client.list("pods")
    got = list(client.watch("pods", resource_version="0", timeout_seconds=1))
    assert got == events
    assert client.request("GET", "/after") == {"kind": "after"}
    # list, watch and the next request: one TLS connection (one handshake) for all three
    assert [n for n, _ in server.seen] == [1, 1, 1]
    assert "watch=true" in server.seen[1][1] and "resourceVersion=0" in server.seen[1][1]


def test_watch_error_event_raises(serve) -> None:  # noqa: ANN001
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    _server, client = serve([chunked([json.dumps(gone).encode() + b"\n"])])
    with pytest.raises(ApiError) as err:
        list(client.watch("pods", resource_version="1"))
    assert err.value.code == 410


# -- kubeconfig -------------------------------------------------------------------------------
def test_reads_what_knetlab_writes_without_yaml(kube_dir: Path) -> None:
    """The lab's kubeconfig is JSON: an agent (python -S, knetlab on PYTHONPATH) reads it
    without importing yaml; and yaml (so kubectl and the official client) reads it too."""
    path = kube_dir / "kubeconfig"
    code = ("import sys; from knetlab.kube.client import KubeClient; "
            f"c = KubeClient.from_kubeconfig({str(path)!r}); "
            "print(c.host, c.port, 'yaml' in sys.modules, 'email' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT)}, check=True).stdout.split()
    assert out == ["127.0.0.1", "1", "False", "False"]
    assert yaml.safe_load(path.read_text()) == json.loads(path.read_text())


def test_reads_yaml_kubeconfig_even_without_site(kube_dir: Path, tmp_path: Path) -> None:
    """kubectl rewrites a kubeconfig as YAML (``kubectl config set-context``): an agent
    without site-packages still reads it."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(read_kubeconfig(kube_dir / "kubeconfig")))
    assert not path.read_text().lstrip().startswith("{")
    code = ("from knetlab.kube.client import KubeClient; "
            f"print(KubeClient.from_kubeconfig({str(path)!r}).port)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


@pytest.mark.parametrize(("text", "says"), [
    ("clusters: [unclosed", "neither JSON nor YAML"),
    ("- just\n- a list\n", "holds no mapping"),
    ('{"current-context": "c", "contexts": [], "clusters": [], "users": []}',
     "needs current-context naming a context"),
])
def test_refuses_what_it_cannot_use(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KnetlabError) as err:
        KubeClient.from_kubeconfig(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_missing_token_is_named(kube_dir: Path, tmp_path: Path) -> None:
    cfg = read_kubeconfig(kube_dir / "kubeconfig")
    del cfg["users"][0]["user"]["token"]
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    with pytest.raises(KnetlabError, match="KeyError: 'token'"):
        KubeClient.from_kubeconfig(path)
