"""The workspace's keys and keyed hashing, in one place.

* The Ed25519 signing key signs certificates, audit records and receipts; its public half lets anyone verify
  them without the secret.
* The subject key pseudonymises subject ids (HMAC-SHA256) for tags and certificates.

Keys are created once, by :func:`create_keys` (``unlearnops init``); reading a key never creates one, so a
missing key is an error that names the file, not a silent new identity.

The key directory (:attr:`Workspace.keys_dir`: ``UNLEARNOPS_KEY_DIR``, ``[locations] signing_key_dir`` or
``.unlearnops/keys``) is created 0700 and every secret in it 0600; a directory that group or others can
enter is refused for secrets (:class:`KeyDirInsecure`), so keys can live apart from the artifacts they sign.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unlearnops.workspace import Workspace

SIGNING_KEY_FILE = "signing-ed25519.pem"
PUBLIC_KEY_FILE = "signing-ed25519.pub.pem"
SUBJECT_KEY_FILE = "subject-hmac.key"


class KeyMissing(FileNotFoundError):
    """A key the operation needs does not exist (the workspace was not initialised with ``unlearnops init``)."""


class KeyDirInsecure(PermissionError):
    """The key directory can be read or entered by group or others (it must be 0700)."""


def ensure_keys_dir(keys_dir: Path) -> Path:
    """Create ``keys_dir`` with mode 0700 (parents as needed); refuse one that group or others can access."""
    if not keys_dir.exists():
        keys_dir.mkdir(parents=True, mode=0o700)
        os.chmod(keys_dir, 0o700)  # mkdir's mode is masked by the umask
    check_keys_dir(keys_dir)
    return keys_dir


def check_keys_dir(keys_dir: Path) -> None:
    """Raise :class:`KeyDirInsecure` when ``keys_dir`` is group- or world-accessible."""
    mode = stat.S_IMODE(keys_dir.stat().st_mode)
    if mode & 0o077:
        raise KeyDirInsecure(f"key directory {keys_dir} has mode {mode:04o}: group and others must have no "
                             f"access (run `chmod 700 {keys_dir}`)")


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600, never overwriting) in a checked key directory and write ``data``."""
    ensure_keys_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_keys(ws: Workspace) -> None:
    """Create the workspace's signing and subject keys where they do not exist yet (idempotent)."""
    load_or_create_signing_key(ws.keys_dir)
    path = ws.keys_dir / SUBJECT_KEY_FILE
    if not path.is_file():
        write_secret(path, secrets.token_bytes(32))


def load_or_create_signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in ``keys_dir``, generated (with its public half beside it) when there is none."""
    path = keys_dir / SIGNING_KEY_FILE
    if path.is_file():
        return _read_signing_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(path, pem)
    (keys_dir / PUBLIC_KEY_FILE).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key


def _read_signing_key(path: Path) -> Ed25519PrivateKey:
    from unlearnops.certificate import CertificateError

    check_keys_dir(path.parent)
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
    return read_public_key(ws.keys_dir / PUBLIC_KEY_FILE)


def read_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (:class:`CertificateError` when missing or not Ed25519)."""
    from unlearnops.certificate import CertificateError

    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"no public key at {path}")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateError(f"{path} is not an Ed25519 public key")
    return key


def public_key_pem(ws: Workspace) -> str:
    """The workspace's public signing key as PEM text, to hand to whoever verifies certificates."""
    return public_key(ws).public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def subject_key(ws: Workspace) -> bytes:
    """The key that pseudonymises subject ids (:class:`KeyMissing` when it does not exist)."""
    path = ws.keys_dir / SUBJECT_KEY_FILE
    if not path.is_file():
        raise KeyMissing(f"no subject key at {path}: run `unlearnops init` for this workspace")
    check_keys_dir(path.parent)
    return path.read_bytes()


def keyed_hash(key: bytes, value: str) -> str:
    """Pseudonymise a personal identifier for tags and certificates (HMAC-SHA256, hex, 32 chars)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]
