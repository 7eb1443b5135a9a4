"""Verify a registered version against its certificate: signature, weights, ONNX file and registry tags."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from unlearnops import model_registry
from unlearnops.certificate import CertificateError, verify
from unlearnops.keys import public_key
from unlearnops.model import file_sha256, save_weights
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


def verify_version(ws: Workspace, version: str) -> Verification:
    """Check that ``version``'s certificate is signed by this workspace's key and that the weights, the ONNX
    file and the lineage tags the registry holds are the ones it certifies."""
    from mlflow.exceptions import MlflowException

    result = Verification(version=version)
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        result.problems.append(f"no version {version} of {name}: {exc.message}")
        return result
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        try:
            cert_path = model_registry.download_run_artifact(ws, model_version.run_id, "certificate.json", tmp_path)
            certificate = json.loads(cert_path.read_text())
        except (MlflowException, OSError, ValueError) as exc:
            result.problems.append(f"certificate missing or unreadable: {exc}")
            return result
        result.status = certificate.get("status")
        try:
            verify(certificate, public_key(ws))
            result.checked.append("signature")
        except CertificateError as exc:
            result.problems.append(str(exc))

        # A purged version's weights and ONNX file were removed on purpose: nothing left to compare.
        result.purged = model_version.tags.get(model_registry.TAG_PREFIX + "purged") == "true"
        if not result.purged:
            _check_weights(ws, version, model_version, certificate, tmp_path, result)
    _check_tags(model_version, certificate, result)
    return result


def _check_weights(ws: Workspace, version: str, model_version, certificate: dict, tmp_path: Path,
                   result: Verification) -> None:
    from mlflow.exceptions import MlflowException

    weights_sha = save_weights(model_registry.load_model(ws, version), tmp_path / "weights.pt")
    if weights_sha == certificate.get("weights_sha256"):
        result.checked.append("weights_sha256")
    else:
        result.problems.append("registered weights differ from the certified weights")

    # The ONNX file and every other exporter's file: (check name, what it is, run artifact, certified sha256).
    files = [("onnx_sha256", "ONNX file", "model.onnx", (certificate.get("onnx") or {}).get("sha256"))]
    files += [(f"{name}_sha256", f"{name} export {record.get('file')}", record.get("file"), record.get("sha256"))
              for name, record in sorted((certificate.get("exports") or {}).items())]
    for check, label, artifact, certified_sha in files:
        try:
            if not artifact:
                raise OSError("the certificate names no file")
            path = model_registry.download_run_artifact(ws, model_version.run_id, artifact, tmp_path)
        except (MlflowException, OSError) as exc:
            result.problems.append(f"{label} missing: {exc}")
            continue
        if file_sha256(path) == certified_sha:
            result.checked.append(check)
        else:
            result.problems.append(f"{label} differs from the certified one")


def _check_tags(model_version, certificate: dict, result: Verification) -> None:
    tags = model_version.tags
    expected_tags = {
        "unlearnops.certificate_status": certificate.get("status"),
        "unlearnops.dataset_rev": (certificate.get("dataset_after") or {}).get("git_rev"),
        "unlearnops.parent_version": certificate.get("parent_model_version"),
        "unlearnops.weights_sha256": certificate.get("weights_sha256"),
    }
    mismatched = [k for k, v in expected_tags.items() if tags.get(k) != v]
    if mismatched:
        result.problems.append("registry tags disagree with the certificate: " + ", ".join(mismatched))
    else:
        result.checked.append("tags")
