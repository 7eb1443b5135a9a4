"""Verify a registered version against its certificate: signature, weights, ONNX file and registry tags."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from unlearnops import model_registry
from unlearnops.certificate import CertificateError, verify
from unlearnops.keys import public_key
from unlearnops.durable import file_sha256
from unlearnops.workspace import Workspace


@dataclass
class Verification:
    version: str
    status: str | None = None
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    #: The weights were removed by ``unlearnops purge`` (certificate and tags are still checked).
    purged: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"version": self.version, "ok": self.ok, "certificate_status": self.status,
                "checked": self.checked, "problems": self.problems, "purged": self.purged}


#: The signed purge record ``unlearnops purge`` logs to a purged version's run (the tag is informational).
PURGE_RECORD = "purge.json"
PURGE_RECORD_KIND = "unlearnops.purge/v1"


def expected_tags(certificate: dict) -> dict[str, str | None]:
    """Every lineage tag a version carries (``flow.register.version_tags``), as its certificate states it.
    Other ``unlearnops.`` tags (tainted, purged, audit results) are informational: no decision reads them."""
    method = certificate.get("method") or {}
    after = certificate.get("dataset_after") or {}
    return {
        "unlearnops.kind": "unlearned",
        "unlearnops.parent_version": certificate.get("parent_model_version"),
        "unlearnops.dataset_rev": after.get("git_rev"),
        "unlearnops.dataset_md5": after.get("dvc_md5"),
        "unlearnops.requests": ",".join(certificate.get("requests") or [])[:5000],
        "unlearnops.method": method.get("name"),
        "unlearnops.certificate_status": certificate.get("status"),
        "unlearnops.weights_sha256": certificate.get("weights_sha256") or "",
        "unlearnops.onnx_sha256": (certificate.get("onnx") or {}).get("sha256", ""),
        "unlearnops.run_id": certificate.get("run_id"),
    }


def purge_record(ws: Workspace, model_version) -> dict | None:
    """The signed purge record of ``model_version`` (None when it was never purged); a forged, edited or
    misplaced one is an IntegrityError."""
    record = model_registry.signed_record(ws, model_version.run_id, PURGE_RECORD, PURGE_RECORD_KIND)
    if record is not None and (record.get("model_name"), record.get("version")) != (
            model_version.name, str(model_version.version)):
        raise model_registry.IntegrityError(f"{PURGE_RECORD} was signed for another version")
    return record


def certificate_of(ws: Workspace, run_id: str, tmp_path: Path) -> dict:
    """The certificate of a run, its signature checked with this workspace's public key (CertificateError)."""
    cert_path = model_registry.download_run_artifact(ws, run_id, "certificate.json", tmp_path)
    certificate = json.loads(cert_path.read_text())
    if not isinstance(certificate, dict):
        raise CertificateError("certificate.json is not a JSON object")
    verify(certificate, public_key(ws))
    return certificate


def verified_onnx(ws: Workspace, version: str) -> tuple[bytes, dict]:
    """The ONNX file of ``version`` and its certificate: the signature is checked, then the downloaded
    bytes against the certified sha256, before anything parses them (IntegrityError, CertificateError)."""
    mv = model_registry.model_version(ws, version)
    with tempfile.TemporaryDirectory() as tmp:
        certificate = certificate_of(ws, mv.run_id, Path(tmp))
    if purge_record(ws, mv) is not None:
        raise model_registry.IntegrityError(f"v{mv.version} was purged (signed purge record): nothing to load")
    data = model_registry.verified_artifact(ws, mv.run_id, model_registry.ONNX_ARTIFACT,
                                            (certificate.get("onnx") or {}).get("sha256"))
    return data, certificate


def verify_version(ws: Workspace, version: str, files: bool = True) -> Verification:
    """Check that ``version``'s certificate is signed by this workspace's key and that the weights, the ONNX
    files (the run's and the MLflow model's) and every lineage tag the registry holds are the ones it
    certifies. Only signed records decide: a version counts as purged only with a signed purge record.
    ``files=False`` checks signature, purge record and tags only (no weight download)."""
    result = Verification(version=version)
    name = ws.settings.project.model_name
    try:
        model_version = model_registry.get_version(ws, version)
    except model_registry.artifact_errors() as exc:
        result.problems.append(f"no version {version} of {name}: {getattr(exc, 'message', exc)}")
        return result
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        try:
            cert_path = model_registry.download_run_artifact(ws, model_version.run_id, "certificate.json", tmp_path)
            certificate = json.loads(cert_path.read_text())
            if not isinstance(certificate, dict):
                raise ValueError("not a JSON object")
        except (*model_registry.artifact_errors(), ValueError) as exc:
            result.problems.append(f"certificate missing or unreadable: {exc}")
            return result
        result.status = certificate.get("status")
        try:
            verify(certificate, public_key(ws))
            result.checked.append("signature")
        except CertificateError as exc:
            result.problems.append(str(exc))

        # A purged version's weights and ONNX files were removed on purpose; only a signed record says so.
        try:
            result.purged = purge_record(ws, model_version) is not None
        except model_registry.IntegrityError as exc:
            result.problems.append(str(exc))
        if result.purged:
            result.checked.append("purge_record")
        elif files:
            _check_weights(ws, model_version, certificate, tmp_path, result)
    _check_tags(model_version, certificate, result)
    return result


def _check_weights(ws: Workspace, model_version, certificate: dict, tmp_path: Path,
                   result: Verification) -> None:
    run_id = model_version.run_id
    try:
        record = model_registry.signed_record(ws, run_id, model_registry.WEIGHTS_RECORD,
                                              model_registry.WEIGHTS_RECORD_KIND)
        if record is None:
            result.problems.append(f"no signed {model_registry.WEIGHTS_RECORD}: the weights are not bound to this run")
    except model_registry.IntegrityError as exc:
        result.problems.append(str(exc))
        record = None
    record = record or {}
    certified_onnx = (certificate.get("onnx") or {}).get("sha256")
    if record and (record.get("weights_sha256"), record.get("onnx_sha256")) != (
            certificate.get("weights_sha256"), certified_onnx):
        result.problems.append(f"the signed {model_registry.WEIGHTS_RECORD} names other files than the certificate")
    # Hashes only: the bytes are never deserialized here.
    try:
        model_registry.verified_artifact(ws, run_id, model_registry.WEIGHTS_ARTIFACT,
                                         certificate.get("weights_sha256"))
        result.checked.append("weights_sha256")
    except model_registry.IntegrityError:
        result.problems.append("registered weights differ from the certified weights")

    # The ONNX files and every other exporter's file: (check name, what it is, where, certified sha256).
    files = [("onnx_sha256", "ONNX file", f"runs:/{run_id}/model.onnx", certified_onnx),
             ("mlflow_model_sha256", "MLflow model's ONNX file", f"{ws_model_location(ws, model_version)}/model.onnx",
              certified_onnx)]
    files += [(f"{name}_sha256", f"{name} export {record.get('file')}",
               f"runs:/{run_id}/{record.get('file')}" if record.get("file") else None, record.get("sha256"))
              for name, record in sorted((certificate.get("exports") or {}).items())]
    for index, (check, label, uri, certified_sha) in enumerate(files):
        try:
            if not uri:
                raise OSError("the certificate names no file")
            path = model_registry.download_artifact(ws, uri, tmp_path / str(index))
        except model_registry.artifact_errors() as exc:
            result.problems.append(f"{label} missing: {exc}")
            continue
        if file_sha256(path) == certified_sha:
            result.checked.append(check)
        else:
            result.problems.append(f"{label} differs from the certified one")


def ws_model_location(ws: Workspace, model_version) -> str:
    """The artifact location of the MLflow model a version registers."""
    return model_registry.version_download_uri(ws, model_version)


def _check_tags(model_version, certificate: dict, result: Verification) -> None:
    tags = model_version.tags
    mismatched = [k for k, v in expected_tags(certificate).items() if tags.get(k) != v]
    if mismatched:
        result.problems.append("registry tags disagree with the certificate: " + ", ".join(mismatched))
    else:
        result.checked.append("tags")
