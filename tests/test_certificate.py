import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from unlearnops.certificate import CertificateError, sign, verify
from unlearnops.keys import load_or_create_signing_key


def test_sign_verify_and_tamper(tmp_path):
    key = load_or_create_signing_key(tmp_path)
    assert load_or_create_signing_key(tmp_path).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    cert = sign({"status": "certified", "gates": [{"name": "utility", "status": "pass"}]}, key)
    verify(cert)
    verify(cert, key.public_key())
    tampered = {**cert, "status": "certified!"}
    with pytest.raises(CertificateError, match="contents were changed"):
        verify(tampered)
    with pytest.raises(CertificateError, match="different key"):
        verify(cert, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CertificateError, match="no ed25519 signature"):
        verify({"status": "certified"})
