"""TLS material of the ingress controller: the Secrets' certificates as files nginx reads,
the default ("fake") certificate, and self-signed certificates for tests and the docs.

A Secret's certificate is checked before nginx ever sees it (``ssl.SSLContext.load_cert_chain``
parses both PEMs and checks that the key matches the certificate), so a bad Secret is
reported on its Ingress and can never make a reload fail. Files are named by a hash of their
content: a changed Secret is a new file, and the running nginx keeps its old one until the
reload.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_TYPE = "kubernetes.io/tls"
DEFAULT_CERT = "default.pem"
FAKE_CN = "Kubernetes Ingress Controller Fake Certificate"  # ingress-nginx's default cert


def self_signed(common_name: str, hosts: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): an ECDSA P-256 self-signed certificate for ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def tls_secret(name: str, hosts: list[str], namespace: str = "default") -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding a new self-signed certificate for ``hosts``."""
    crt, key = self_signed(hosts[0] if hosts else name, hosts)
    return {"apiVersion": "v1", "kind": "Secret", "type": TLS_TYPE,
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(crt).decode(),
                     "tls.key": base64.b64encode(key).decode()}}


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


class CertStore:
    """``<dir>/<name>.pem`` files (certificate chain then key), one per distinct Secret."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.used: set[str] = set()

    def ensure_default(self) -> Path:
        path = self.dir / DEFAULT_CERT
        if not path.exists():
            crt, key = self_signed(FAKE_CN, ["ingress.local"])
            _write_private(path, crt + key)
        self.used.add(DEFAULT_CERT)
        return path

    def cert_for(self, secret: dict[str, Any]) -> str:
        """Store the Secret's certificate; its file name, or ValueError saying why not."""
        if secret.get("type") != TLS_TYPE:
            raise ValueError(f"type is {secret.get('type') or 'Opaque'!r}, not {TLS_TYPE!r}")
        data = secret.get("data") or {}
        try:
            crt, key = (base64.b64decode(data[k]) for k in ("tls.crt", "tls.key"))
        except KeyError as exc:
            raise ValueError(f"has no {exc.args[0]}") from None
        except ValueError:
            raise ValueError("tls.crt or tls.key is not base64") from None
        meta = secret["metadata"]
        digest = hashlib.sha256(crt + b"\0" + key).hexdigest()[:16]
        name = f"{meta.get('namespace', 'default')}-{meta['name']}-{digest}.pem"
        path = self.dir / name
        if not path.exists():
            candidate = self.dir / f".check-{name}"
            _write_private(candidate, crt.rstrip(b"\n") + b"\n" + key)
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    str(candidate))
            except (ssl.SSLError, OSError) as exc:
                candidate.unlink(missing_ok=True)
                raise ValueError(f"not a usable certificate and key ({exc.__class__.__name__}:"
                                 f" {exc})") from None
            candidate.replace(path)
        self.used.add(name)
        return name

    def start_round(self) -> None:
        self.used = {DEFAULT_CERT}

    def prune(self) -> None:
        """Remove files no longer referenced (call after nginx has reloaded)."""
        for p in self.dir.glob("*.pem"):
            if p.name not in self.used:
                p.unlink(missing_ok=True)
