"""The built-in images: Kubernetes' command/args rules, the files each image asks for, the
unknown-image error; the agnhost wrapper and the nginx config run for real (no root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from knetlab.errors import KnetlabError
from knetlab.kube import images
from knetlab.kube.images import PATH, UnknownImage, resolve

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.47"
SLEEP = shutil.which("sleep", path=PATH)


def run(image: str, command: list[str] | None = None, args: list[str] | None = None,
        ports: list[int] | None = None, pod: str = "web-1") -> images.ImageRun:
    return resolve(image, command, args, pod_name=pod, container_ports=ports or [],
                   run_dir=Path("/run/knetlab/test"))


def test_agnhost_entrypoint_cmd_semantics() -> None:
    assert run(AGNHOST).argv == ["/agnhost", "pause"]                       # ENTRYPOINT + CMD
    assert run(AGNHOST, args=["netexec", "--http-port=80"]).argv == \
        ["/agnhost", "netexec", "--http-port=80"]                           # args replace CMD
    assert run(AGNHOST, command=["/agnhost", "serve-hostname"]).argv == \
        ["/agnhost", "serve-hostname"]                                      # CMD dropped
    assert run(AGNHOST, command=["agnhost"], args=["connect", "a:1"]).argv == \
        ["/knetlab-bin/agnhost", "connect", "a:1"]                          # found on PATH
    assert run(AGNHOST, command=[], args=[]).argv == ["/agnhost", "pause"]  # empty = unset


def test_agnhost_files_and_env() -> None:
    r = run("k8s.gcr.io/e2e-test-images/agnhost:2.39")
    assert set(r.files) == {"/agnhost", "/knetlab-bin/agnhost"}
    assert sorted(r.executable) == sorted(r.files)
    assert r.files["/agnhost"].startswith("#!/bin/sh\n")
    assert sys.executable in r.files["/agnhost"] and "knetlab.kube.agnhost" in r.files["/agnhost"]
    assert r.env["PATH"] == PATH and PATH.endswith(":/knetlab-bin")
    assert run("agnhost:latest").argv == ["/agnhost", "pause"]


def test_agnhost_wrapper_runs(tmp_path: Path) -> None:
    """The wrapper the kubelet writes as /agnhost runs knetlab's agnhost."""
    wrapper = tmp_path / "agnhost"
    wrapper.write_text(run(AGNHOST).files["/agnhost"])
    wrapper.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = subprocess.run([str(wrapper), "connect", f"127.0.0.1:{closed}", "--timeout=2s"],
                       capture_output=True, text=True, timeout=20, cwd="/")
    assert (r.returncode, r.stderr) == (1, "REFUSED\n")


@pytest.mark.parametrize("image", ["busybox", "busybox:1.36", "docker.io/library/alpine:3.20",
                                   "debian:12", "ubuntu", "library/busybox",
                                   "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"])
def test_shell_images_default_to_sleep(image: str) -> None:
    r = run(image)
    assert r.argv == [SLEEP, "infinity"]
    assert r.files == {} and r.env == {"PATH": PATH}


def test_shell_images_run_the_given_command() -> None:
    sh = shutil.which("sh", path=PATH)
    assert run("busybox", command=["sh", "-c", "echo hi"]).argv == [sh, "-c", "echo hi"]
    assert run("busybox", args=["sleep", "3600"]).argv == [SLEEP, "3600"]   # no ENTRYPOINT
    assert run("busybox", command=["/bin/echo"], args=["a", "b"]).argv == ["/bin/echo", "a", "b"]
    # not on PATH: left bare, so the exec fails as Kubernetes reports it
    assert run("busybox", command=["no-such-program-xyz"]).argv == ["no-such-program-xyz"]
    assert run("python:3.12").argv == [shutil.which("python3", path=PATH)]


def test_curl_image_entrypoint() -> None:
    curl = shutil.which("curl", path=PATH)
    assert run("curlimages/curl:8.8.0", args=["-s", "http://web"]).argv == \
        [curl, "-s", "http://web"]
    assert run("curlimages/curl", args=["sh", "-c", "true"]).argv[1:] == ["-c", "true"]
    assert run("curlimages/curl").argv == [SLEEP, "infinity"]


def test_pause_image() -> None:
    for image in ("registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.2", "pause"):
        assert run(image).argv == [SLEEP, "infinity"]


def test_nginx_image() -> None:
    r = run("nginx:1.27", ports=[8080, 80], pod="web-7")
    assert r.argv == ["/usr/sbin/nginx", "-e", "stderr", "-c", images.NGINX_CONF,
                      "-g", "daemon off;"]
    conf = r.files[images.NGINX_CONF]
    assert "listen 80;" in conf and "listen 8080;" in conf and "daemon" not in conf
    assert "access_log /dev/stdout" in conf and "error_log /dev/stderr" in conf
    index = r.files["/usr/share/nginx/html/index.html"]
    assert "Welcome to nginx!" in index and "pod: web-7" in index
    assert images.NGINX_STATE in r.dirs and f"{images.NGINX_STATE}/proxy" in r.dirs
    assert "listen 80;" in run("docker.io/library/nginx@sha256:abcd").files[images.NGINX_CONF]
    assert run("nginx", args=["nginx", "-g", "daemon off;"]).argv[0].endswith("/nginx")


def test_unknown_image() -> None:
    for image in ("foo:1", "nginx-ingress-controller:1", "localhost:5000/nginx", "myorg/busybox"):
        with pytest.raises(UnknownImage) as err:
            run(image)
        assert isinstance(err.value, KnetlabError)
        assert str(err.value).startswith(f'image "{image}" is not built into knetlab; images '
                                         "that exist: registry.k8s.io/e2e-test-images/agnhost:*, "
                                         "nginx*, busybox*")


def test_repository_normalization() -> None:
    assert images.repository("docker.io/library/nginx:1.27") == "nginx"
    assert images.repository("NGINX") == "nginx"
    assert images.repository("registry.k8s.io/pause:3.9@sha256:ab") == "registry.k8s.io/pause"
    assert images.repository("localhost:5000/app") == "localhost:5000/app"


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="Debian's nginx not installed")
def test_nginx_config_serves(tmp_path: Path) -> None:
    """The nginx image's config, with its pod-root paths moved under tmp_path, really serves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state, html = tmp_path / "state", tmp_path / "html"
    r = run("nginx", ports=[port], pod="web-3")
    for d in r.dirs:
        if d.startswith(images.NGINX_STATE):
            (state / Path(d).relative_to(images.NGINX_STATE)).mkdir(parents=True, exist_ok=True)
    html.mkdir()
    (html / "index.html").write_text(r.files["/usr/share/nginx/html/index.html"])
    conf = tmp_path / "nginx.conf"
    conf.write_text(images.nginx_conf("web-3", [port], state=str(state), html=str(html)))
    argv = [a if a != images.NGINX_CONF else str(conf) for a in r.argv]
    out = (tmp_path / "out").open("w")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=r.env)
    try:
        deadline, body = time.monotonic() + 15, ""
        while time.monotonic() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            except OSError:
                time.sleep(0.05)
        assert b"Welcome to nginx!" in body and b"pod: web-3" in body
        host = urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5).read()
        assert host == b"web-3"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        out.close()
    assert '"GET /hostname HTTP/1.1" 200' in (tmp_path / "out").read_text()  # access log
    assert not os.path.exists(f"{images.NGINX_STATE}/nginx.pid")
