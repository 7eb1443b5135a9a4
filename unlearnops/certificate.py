"""Certificates: the signed JSON record of what was forgotten, how, and what the gates measured.

Signed with an Ed25519 key kept in the key directory (see :mod:`unlearnops.keys`); anyone holding the public
key can verify a certificate without the secret. The signature covers the canonical bytes of every other
field: RFC 8785 (JSON Canonicalization Scheme, the ``rfc8785`` library) for schema ``v2``, so a verifier in
any language can rebuild them. Certificates of schema ``v1`` (``json.dumps(sort_keys=True)``, Python-only)
still verify. NaN and infinities cannot be signed: encode them as ``null`` first (:func:`finite_or_null`).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEMA = "unlearnops.certificate/v2"
SCHEMA_V1 = "unlearnops.certificate/v1"


class CertificateError(ValueError):
    """The certificate is malformed or its signature does not verify."""


def _non_finite(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first NaN or infinity in ``value``, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            if (found := _non_finite(v, f"{path}.{k}")) is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if (found := _non_finite(v, f"{path}[{i}]")) is not None:
                return found
    return None


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN and infinity (at any depth) replaced by ``None`` (JSON ``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def canonical(payload: dict[str, Any]) -> bytes:
    """The signed bytes of ``payload`` by its ``schema``: RFC 8785 for v2 (the default), legacy for v1."""
    if payload.get("schema") == SCHEMA_V1:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    where = _non_finite(payload)
    if where is not None:
        raise CertificateError(f"cannot sign NaN or infinity (at {where}): encode it as null first")
    try:
        return rfc8785.dumps(payload)
    except rfc8785.CanonicalizationError as exc:
        raise CertificateError(f"cannot canonicalize the certificate (RFC 8785): {exc}") from None


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The raw public key as lowercase hex (what ``signature.public_key`` holds)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b16encode(raw).decode().lower()


def sign(payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``payload`` with ``schema`` (v2) and an Ed25519 ``signature`` over its RFC 8785 bytes; a NaN or
    infinity anywhere raises :class:`CertificateError`."""
    body = {k: v for k, v in payload.items() if k != "signature"}
    body["schema"] = SCHEMA
    signature = key.sign(canonical(body))
    body["signature"] = {
        "algorithm": "ed25519",
        "public_key": public_key_fingerprint(key.public_key()),
        "value": base64.b64encode(signature).decode(),
    }
    return body


def verify(certificate: dict[str, Any], public_key: Ed25519PublicKey | None = None) -> None:
    """Raise :class:`CertificateError` unless the signature verifies (with ``public_key`` if given, else
    with the key embedded in the certificate — which proves integrity, not who signed)."""
    if not isinstance(certificate, dict):
        raise CertificateError("a certificate is a JSON object")
    signature = certificate.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise CertificateError("certificate has no ed25519 signature")
    if not isinstance(signature.get("public_key"), str) or not isinstance(signature.get("value"), str):
        raise CertificateError("certificate signature is malformed")
    try:
        if public_key is None:
            public_key = Ed25519PublicKey.from_public_bytes(base64.b16decode(signature["public_key"].upper()))
        elif public_key_fingerprint(public_key) != signature["public_key"]:
            raise CertificateError("certificate was signed with a different key")
        value = base64.b64decode(signature["value"], validate=True)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CertificateError):
            raise
        raise CertificateError(f"certificate signature is malformed ({exc})") from None
    body = {k: v for k, v in certificate.items() if k != "signature"}
    if body.get("schema") not in (SCHEMA, SCHEMA_V1):
        raise CertificateError(f"unknown certificate schema {body.get('schema')!r}")
    try:
        public_key.verify(value, canonical(body))
    except InvalidSignature as exc:
        raise CertificateError("certificate signature does not verify: contents were changed") from exc


def read(path: Path) -> dict[str, Any]:
    """A certificate file's JSON (:class:`CertificateError` when unreadable, not UTF-8 JSON, or too deep)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CertificateError(f"{path} is not UTF-8 JSON ({type(exc).__name__})") from None


def write(certificate: dict[str, Any], path: Path) -> None:
    """Write ``certificate`` as indented JSON (the signature covers the canonical form, not these bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(certificate, indent=2, sort_keys=True))
