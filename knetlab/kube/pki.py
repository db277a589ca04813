"""The lab's PKI and kubeconfig: a CA, the API server's serving certificate, a bearer token.

Made at ``up`` as kind does, in ``<rundir>/kube/`` (every file mode 0600, root only):
``ca.crt``, ``ca.key``, ``apiserver.crt`` (SAN 127.0.0.1, the ``kubernetes`` Service's
ClusterIP, localhost and the ``kubernetes.default.svc`` names),
``apiserver.key``, ``token`` and ``kubeconfig`` (JSON, which is YAML to kubectl; cluster
``knetlab-<lab>``, the CA inline, the token). Keys are ECDSA P-256: a key is made in
microseconds where RSA-2048 takes tens of milliseconds, and every client we care about (Go,
OpenSSL) accepts it.

Everything is idempotent: existing keys, certificates and token are kept, so a restarted
API server keeps serving the certificate that existing kubeconfigs trust.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
from pathlib import Path

from knetlab import shell

VALID_DAYS = 3650
#: the names in-cluster clients use for the API server (kubeadm's list for cluster.local)
SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")


def _write(path: Path, data: bytes | str) -> None:
    """Write a file created 0600 (never world-readable, not even for an instant)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _make_certs_cryptography(kube_dir: Path, cluster: str, ips: tuple[str, ...]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster}-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [*(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", *ips)),
         *(x509.DNSName(name) for name in SERVING_NAMES)])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(later)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(kube_dir / "ca.key", pem_key(ca_key))
    _write(kube_dir / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    _write(kube_dir / "apiserver.key", pem_key(key))
    _write(kube_dir / "apiserver.crt", cert.public_bytes(serialization.Encoding.PEM))


def _make_certs_openssl(kube_dir: Path, cluster: str, ips: tuple[str, ...]) -> None:
    """The same with the openssl CLI, for machines without the cryptography module."""
    d = kube_dir
    old = os.umask(0o077)
    try:
        shell.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(d / "ca.key"),
                   "-out", str(d / "ca.crt"), "-days", str(VALID_DAYS),
                   "-subj", f"/CN={cluster}-ca"], context="make the lab CA")
        shell.run(["openssl", "req", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                   str(d / "apiserver.key"), "-out", str(d / "apiserver.csr"),
                   "-subj", "/CN=kube-apiserver"], context="make the API server key")
        ext = d / "apiserver.ext"
        alt = ",".join([*(f"IP:{ip}" for ip in ("127.0.0.1", *ips)),
                        *(f"DNS:{name}" for name in SERVING_NAMES)])
        ext.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\n")
        shell.run(["openssl", "x509", "-req", "-in", str(d / "apiserver.csr"),
                   "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
                   "-out", str(d / "apiserver.crt"), "-days", str(VALID_DAYS),
                   "-extfile", str(ext)], context="sign the API server certificate")
    finally:
        os.umask(old)
    for leftover in ("apiserver.csr", "apiserver.ext", "ca.srl"):
        (d / leftover).unlink(missing_ok=True)
    for name in ("ca.key", "ca.crt", "apiserver.key", "apiserver.crt"):
        os.chmod(d / name, 0o600)


def make_certs(kube_dir: Path, cluster: str, ips: tuple[str, ...] = ()) -> None:
    """The CA and serving certificate, unless both already exist. ``ips``: more addresses
    the API server is reached at (the ``kubernetes`` Service's ClusterIP, as kubeadm signs
    it, so in-cluster clients verify it)."""
    names = ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key")
    if all((kube_dir / n).exists() for n in names):
        return
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _make_certs_openssl(kube_dir, cluster, ips)
    else:
        _make_certs_cryptography(kube_dir, cluster, ips)


def make_etcd_certs(kube_dir: Path) -> None:
    """etcd's serving certificate and the API server's client certificate for it, signed by
    the lab CA: etcd requires client certificates (``--client-cert-auth``), so the lab's
    store is reachable through the API server or by root, not by any local user."""
    names = ("etcd-server.crt", "etcd-server.key", "etcd-client.crt", "etcd-client.key")
    if all((kube_dir / n).exists() for n in names):
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((kube_dir / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((kube_dir / "ca.crt").read_bytes())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    usages = {"etcd-server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
              "etcd-client": [ExtendedKeyUsageOID.CLIENT_AUTH]}
    for name, eku in usages.items():
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.ExtendedKeyUsage(eku), critical=False))
        if name == "etcd-server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write(kube_dir / f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        _write(kube_dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))


def ensure_token(kube_dir: Path) -> str:
    path = kube_dir / "token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_hex(24)
    _write(path, token + "\n")
    return token


def kubeconfig_text(cluster: str, server_url: str, ca_pem: bytes, token: str) -> str:
    user = f"{cluster}-admin"
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {
            "server": server_url,
            "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    # JSON, which is YAML (kubectl and the official client read it as such), so that the
    # lab's own agents read it without importing yaml (``client.read_kubeconfig``).
    return json.dumps(config, indent=2) + "\n"


def make_pki(kube_dir: Path, server_url: str, lab: str | None = None,
             ips: tuple[str, ...] = ()) -> Path:
    """Make (or keep) the lab's CA, serving certificate, token and kubeconfig; return the
    kubeconfig's path. ``lab`` defaults to the run dir's name (``<rundir>/kube``)."""
    kube_dir = Path(kube_dir)
    kube_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(kube_dir, 0o700)
    lab = lab or kube_dir.resolve().parent.name
    cluster = f"knetlab-{lab}"
    make_certs(kube_dir, cluster, ips)
    make_etcd_certs(kube_dir)
    token = ensure_token(kube_dir)
    text = kubeconfig_text(cluster, server_url, (kube_dir / "ca.crt").read_bytes(), token)
    path = kube_dir / "kubeconfig"
    if not path.exists() or path.read_text() != text:
        _write(path, text)
    return path
