"""Certificates: the signed JSON record of what was forgotten, how, and what the gates measured.

Signed with an Ed25519 key kept in the workspace (``.unlearnops/keys``); anyone holding the public key can
verify a certificate without the secret. The signature covers the canonical JSON of every other field.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEMA = "unlearnops.certificate/v1"


class CertificateError(ValueError):
    """The certificate is malformed or its signature does not verify."""


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b16encode(raw).decode().lower()


def sign(payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in payload.items() if k != "signature"}
    body["schema"] = SCHEMA
    signature = key.sign(_canonical(body))
    body["signature"] = {
        "algorithm": "ed25519",
        "public_key": public_key_fingerprint(key.public_key()),
        "value": base64.b64encode(signature).decode(),
    }
    return body


def verify(certificate: dict[str, Any], public_key: Ed25519PublicKey | None = None) -> None:
    """Raise :class:`CertificateError` unless the signature verifies (with ``public_key`` if given, else
    with the key embedded in the certificate — which proves integrity, not who signed)."""
    signature = certificate.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise CertificateError("certificate has no ed25519 signature")
    if public_key is None:
        public_key = Ed25519PublicKey.from_public_bytes(base64.b16decode(signature["public_key"].upper()))
    elif public_key_fingerprint(public_key) != signature.get("public_key"):
        raise CertificateError("certificate was signed with a different key")
    body = {k: v for k, v in certificate.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(signature["value"]), _canonical(body))
    except InvalidSignature as exc:
        raise CertificateError("certificate signature does not verify: contents were changed") from exc


def write(certificate: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(certificate, indent=2, sort_keys=True))
