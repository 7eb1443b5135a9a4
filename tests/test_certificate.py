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


def _third_party_snippet() -> str:
    """The README's "verify with the public key alone" code block, verbatim."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [block] = re.findall(r"<!-- third-party-verify -->\n```python\n(.*?)```", readme, re.S)
    return block


def test_rfc8785_bytes_rebuilt_by_a_third_party_with_the_public_key_alone(tmp_path):
    import json

    import rfc8785

    from unlearnops.certificate import SCHEMA, public_key_fingerprint, write
    from unlearnops.keys import PUBLIC_KEY_FILE

    key = load_or_create_signing_key(tmp_path / "keys")
    cert = sign({"status": "certified", "gates": [{"stat": 0.1, "big": 1e21, "n": 3}], "name": "ü€"}, key)
    assert cert["schema"] == SCHEMA == "unlearnops.certificate/v2"
    write(cert, tmp_path / "certificate.json")
    # What the README tells a verifier to run: only `cryptography` and `rfc8785`, the PEM and the file.
    namespace = {"CERTIFICATE": str(tmp_path / "certificate.json"), "PUBLIC_KEY": str(tmp_path / "keys" / PUBLIC_KEY_FILE)}
    exec(_third_party_snippet(), namespace)
    assert namespace["body"]["status"] == "certified"
    body = {k: v for k, v in json.loads((tmp_path / "certificate.json").read_text()).items() if k != "signature"}
    assert b'"big":1e+21' in rfc8785.dumps(body) and cert["signature"]["public_key"] == public_key_fingerprint(key.public_key())
    tampered = {**cert, "gates": [{"stat": 0.1000001, "big": 1e21, "n": 3}]}
    write(tampered, tmp_path / "certificate.json")
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        exec(_third_party_snippet(), namespace)


def test_nan_and_infinity_are_refused_at_signing_and_null_is_the_encoding(tmp_path):
    from unlearnops.certificate import finite_or_null

    key = Ed25519PrivateKey.generate()
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(CertificateError, match=r"NaN or infinity \(at \$\.gates\[0\]\.auc\)"):
            sign({"gates": [{"auc": bad}]}, key)
    cleaned = finite_or_null({"gates": [{"auc": float("nan"), "ci": [0.1, float("inf")]}], "n": 2})
    assert cleaned == {"gates": [{"auc": None, "ci": [0.1, None]}], "n": 2}
    verify(sign(cleaned, key))
    with pytest.raises(CertificateError, match="RFC 8785"):
        sign({"n": 2**60}, key)  # beyond IEEE-754 doubles: no portable canonical form


def test_v1_certificates_still_verify_and_unknown_schemas_do_not():
    import base64
    import json

    from unlearnops.certificate import SCHEMA_V1, public_key_fingerprint

    key = Ed25519PrivateKey.generate()
    body = {"status": "certified", "schema": SCHEMA_V1, "metric": float("nan")}  # v1 allowed NaN
    legacy = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    cert = {**body, "signature": {"algorithm": "ed25519", "public_key": public_key_fingerprint(key.public_key()),
                                  "value": base64.b64encode(key.sign(legacy)).decode()}}
    verify(cert, key.public_key())
    with pytest.raises(CertificateError, match="contents were changed"):
        verify({**cert, "status": "refused"}, key.public_key())
    with pytest.raises(CertificateError, match="unknown certificate schema"):
        verify({**cert, "schema": "unlearnops.certificate/v9"}, key.public_key())
    with pytest.raises(CertificateError, match="malformed"):
        verify({**cert, "signature": {**cert["signature"], "value": "!!"}}, key.public_key())


def test_key_dir_outside_the_workspace_is_0700_and_an_open_one_is_refused(tmp_path, monkeypatch):
    import os

    from unlearnops.keys import KeyDirInsecure, create_keys, signing_key, subject_key
    from unlearnops.workspace import Workspace

    monkeypatch.setenv("UNLEARNOPS_KEY_DIR", str(tmp_path / "vault" / "unlearnops"))
    ws = Workspace(tmp_path / "ws")
    assert ws.keys_dir == tmp_path / "vault" / "unlearnops"
    create_keys(ws)
    assert oct(ws.keys_dir.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in ws.keys_dir.iterdir() if "pub" not in p.name} == {"0o600"}
    assert not (tmp_path / "ws").exists()  # nothing of the keys inside the workspace
    signing_key(ws)
    os.chmod(ws.keys_dir, 0o755)
    for read in (signing_key, subject_key):
        with pytest.raises(KeyDirInsecure, match="chmod 700"):
            read(ws)


def test_cli_exports_the_public_key_and_verifies_a_file_with_it_alone(fresh_workspace, tmp_path):
    import json

    from typer.testing import CliRunner

    from unlearnops.certificate import write
    from unlearnops.cli import app
    from unlearnops.keys import signing_key

    runner = CliRunner()
    exported = runner.invoke(app, ["keys", "public", "--workspace", str(fresh_workspace.root), "--json"])
    assert exported.exit_code == 0, exported.output
    pem = tmp_path / "auditor" / "unlearnops.pub.pem"
    pem.parent.mkdir()
    pem.write_text(json.loads(exported.stdout)["pem"])
    write(sign({"status": "certified", "requests": ["req-1"]}, signing_key(fresh_workspace)), tmp_path / "c.json")
    plain = runner.invoke(app, ["keys", "public", "--workspace", str(fresh_workspace.root)])
    assert plain.stdout == pem.read_text() and plain.stdout.startswith("-----BEGIN PUBLIC KEY-----")

    verified = runner.invoke(app, ["certificate", "verify", "--public-key", str(pem), str(tmp_path / "c.json"), "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True
    (tmp_path / "bad.json").write_text((tmp_path / "c.json").read_text().replace("req-1", "req-2"))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    for name, problem in (("bad.json", "contents were changed"), ("deep.json", "not UTF-8 JSON"),
                          ("missing.json", "cannot read")):
        refused = runner.invoke(app, ["certificate", "verify", "--public-key", str(pem), str(tmp_path / name), "--json"])
        assert refused.exit_code == 1 and problem in json.loads(refused.stdout)["problem"], refused.output
    # The everyday commands import only what they use (start-up under 1.5 s, issue #20): one process runs
    # each and names the heavy modules it pulled in. A regression guard, not a timing test.
    # (``certificate verify VERSION`` on a registered version: tests/test_certify.py.)
    from conftest import HEAVY_MODULES, heavy_imports

    ws_args = ["--workspace", str(fresh_workspace.root)]
    commands = [["certificate", "verify", "--public-key", str(pem), str(tmp_path / "c.json")],
                ["request", "list", *ws_args], ["status", "--json", *ws_args], ["plugins", "list"],
                ["plugins", "list", "--json"]]
    result = heavy_imports(commands)
    assert result["exit"] == {"certificate verify": 0, "request list": 0, "status --json": 0, "plugins list": 0}
    assert result["imported"] == {"certificate verify": [], "request list": [], "status --json": [],
                                  "plugins list": []}
    # Listing plugins imports no plugin's torch, pandas or scipy either (alone: status reads parquet).
    alone = heavy_imports([["plugins", "list"]], heavy=(*HEAVY_MODULES, "pandas"))
    assert alone == {"exit": {"plugins list": 0}, "imported": {"plugins list": []}}
