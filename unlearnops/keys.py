"""The workspace's keys and keyed hashing, in one place.

* The Ed25519 signing key signs certificates, audit records and receipts; its public half lets anyone verify
  them without the secret.
* The subject key pseudonymises subject ids (HMAC-SHA256) for tags and certificates.

Keys are created once, by :func:`create_keys` (``unlearnops init``); reading a key never creates one, so a
missing key is an error that names the file, not a silent new identity.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unlearnops.workspace import Workspace

SIGNING_KEY_FILE = "signing-ed25519.pem"
PUBLIC_KEY_FILE = "signing-ed25519.pub.pem"
SUBJECT_KEY_FILE = "subject-hmac.key"


class KeyMissing(FileNotFoundError):
    """A key the operation needs does not exist (the workspace was not initialised with ``unlearnops init``)."""


def create_keys(ws: Workspace) -> None:
    """Create the workspace's signing and subject keys where they do not exist yet (idempotent)."""
    load_or_create_signing_key(ws.keys_dir)
    path = ws.keys_dir / SUBJECT_KEY_FILE
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_bytes(secrets.token_bytes(32))


def load_or_create_signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in ``keys_dir``, generated (with its public half beside it) when there is none."""
    path = keys_dir / SIGNING_KEY_FILE
    if path.is_file():
        return _read_signing_key(path)
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(pem)
    (keys_dir / PUBLIC_KEY_FILE).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key


def _read_signing_key(path: Path) -> Ed25519PrivateKey:
    from unlearnops.certificate import CertificateError

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise CertificateError(f"{path} is not an Ed25519 private key")
    return key


def signing_key(ws: Workspace) -> Ed25519PrivateKey:
    """The workspace's signing key (:class:`KeyMissing` when it does not exist)."""
    path = ws.keys_dir / SIGNING_KEY_FILE
    if not path.is_file():
        raise KeyMissing(f"no signing key at {path}: run `unlearnops init` for this workspace")
    return _read_signing_key(path)


def public_key(ws: Workspace) -> Ed25519PublicKey:
    """The public half of the workspace's signing key."""
    from unlearnops.certificate import CertificateError

    path = ws.keys_dir / PUBLIC_KEY_FILE
    if not path.is_file():
        raise CertificateError(f"no public key at {path}")
    return serialization.load_pem_public_key(path.read_bytes())


def subject_key(ws: Workspace) -> bytes:
    """The key that pseudonymises subject ids (:class:`KeyMissing` when it does not exist)."""
    path = ws.keys_dir / SUBJECT_KEY_FILE
    if not path.is_file():
        raise KeyMissing(f"no subject key at {path}: run `unlearnops init` for this workspace")
    return path.read_bytes()


def keyed_hash(key: bytes, value: str) -> str:
    """Pseudonymise a personal identifier for tags and certificates (HMAC-SHA256, hex, 32 chars)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]
