"""``KubeClient.in_cluster``: a pod's API client from the service-account files and env the
kubelet gives every container (no lab: files in a temp dir; the DNS and ingress e2e tests
use it from real pods through the kubernetes Service)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from knetlab.kube.client import KubeClient, NotInClusterError
from knetlab.kube.pki import make_certs

ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    (tmp_path / "pki").mkdir()
    make_certs(tmp_path / "pki", "incluster", ("10.96.0.1",))
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("first-token\n")
    (sa / "ca.crt").write_bytes((tmp_path / "pki" / "ca.crt").read_bytes())
    (sa / "namespace").write_text("kube-system")
    return sa


def test_reads_service_env_token_and_ca(sa_dir: Path) -> None:
    c = KubeClient.in_cluster(sa_dir, ENV)
    assert (c.host, c.port) == ("10.96.0.1", 443)
    assert c.token == "first-token"  # the trailing newline a mounted file may have is gone
    assert c.ca_data == (sa_dir / "ca.crt").read_bytes()


def test_rotated_token_is_read_again(sa_dir: Path) -> None:
    c = KubeClient.in_cluster(sa_dir, ENV)
    tmp = sa_dir / ".token.tmp"  # as the kubelet rotates it: a new file renamed over
    tmp.write_text("second-token")
    later = time.time() + 2
    os.utime(tmp, (later, later))
    tmp.replace(sa_dir / "token")
    assert c.token == "second-token"
    (sa_dir / "token").unlink()  # mid-rotation: keep the last good token
    assert c.token == "second-token"


@pytest.mark.parametrize("env,missing", [
    ({}, "KUBERNETES_SERVICE_HOST"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "KUBERNETES_SERVICE_PORT"),
])
def test_outside_a_pod_says_what_is_missing(sa_dir: Path, env: dict[str, str],
                                            missing: str) -> None:
    with pytest.raises(NotInClusterError, match=missing):
        KubeClient.in_cluster(sa_dir, env)


def test_without_the_mounted_files(tmp_path: Path) -> None:
    with pytest.raises(NotInClusterError, match="serviceaccount"):
        KubeClient.in_cluster(tmp_path / "serviceaccount", ENV)


def test_ipv6_service_address(sa_dir: Path) -> None:
    c = KubeClient.in_cluster(sa_dir, {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1",
                                       "KUBERNETES_SERVICE_PORT": "6443"})
    assert (c.host, c.port) == ("fd00:10:96::1", 6443)
