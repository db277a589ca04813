"""Encryption of a weave connection, as weave does it with a password: NaCl.

After weave's ``router/crypto.go``: each TCP connection starts with both ends sending an
ephemeral Curve25519 public key; each computes the shared secret (``crypto_box_beforenm``)
and mixes in the password (SHA-256 of secret + password). Both ends get the same session
key only if they know the same password, so a wrong password shows up as the first
control message failing to open. From the session key come two secretbox (XSalsa20-
Poly1305) keys: one for the control messages on the TCP connection, one for the sleeve's
UDP datagrams between the two peers. Every message carries a fresh random 24-byte nonce.
"""

from __future__ import annotations

import hashlib
import os

import nacl.bindings as nb
from nacl.exceptions import CryptoError

NONCE = nb.crypto_secretbox_NONCEBYTES  # 24
OVERHEAD = NONCE + nb.crypto_secretbox_MACBYTES  # 24 + 16 bytes per sealed message

__all__ = ["CryptoError", "Keypair", "Session", "seal", "open_box", "OVERHEAD"]


class Keypair:
    def __init__(self) -> None:
        self.public, self.secret = nb.crypto_box_keypair()


class Session:
    """The two keys of one connection, derived from the handshake and the password."""

    def __init__(self, mine: Keypair, their_public: bytes, password: bytes) -> None:
        shared = nb.crypto_box_beforenm(their_public, mine.secret)
        session = hashlib.sha256(shared + password).digest()
        self.control = hashlib.sha256(b"control" + session).digest()
        self.sleeve = hashlib.sha256(b"sleeve" + session).digest()


def seal(key: bytes, message: bytes | memoryview) -> bytes:
    return b"".join(seal_parts(key, message))


def seal_parts(key: bytes, message: bytes | memoryview) -> tuple[bytes, bytes]:
    """(nonce, box): sent as two pieces of one datagram (``sendmsg``), saving a copy."""
    nonce = os.urandom(NONCE)
    return nonce, nb.crypto_secretbox(message, nonce, key)


def open_box(key: bytes, box: bytes | memoryview) -> bytes:
    """The plaintext, or CryptoError if the box was not sealed with ``key``."""
    return nb.crypto_secretbox_open(box[NONCE:], bytes(box[:NONCE]), key)
