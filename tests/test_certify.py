"""What "certified" means: verification of registered versions, tampering, privacy, the report, and the
forgetting gates on the default demo data (identity refused, retraining certified)."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unlearnops import model_registry
from unlearnops.cli import app
from unlearnops.verification import verify_version


def _run_artifact(ws, version, name) -> Path:
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, version)
    (path,) = ws.mlflow_artifacts.glob(f"**/{mv.run_id}/artifacts/{name}")
    return path


def _model_file(ws, version) -> Path:
    """The ONNX file of the registered MLflow model (what ``mlflow.pyfunc`` loads)."""
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, version)
    model_id = mv.source.rsplit("/", 1)[-1]
    (path,) = ws.mlflow_artifacts.glob(f"**/models/{model_id}/artifacts/model.onnx")
    return path


@pytest.fixture
def tamper(processed):
    """Change a stored file for one test and put the original bytes back afterwards."""
    saved = []

    def _tamper(path: Path, change):
        saved.append((path, path.read_bytes()))
        change(path)

    yield _tamper
    for path, original in saved:
        path.write_bytes(original)


def test_certified_version_verifies(processed):
    ws, summary, *_ = processed
    result = verify_version(ws, "2")
    assert result.ok, result.problems
    assert set(result.checked) == {"signature", "weights_sha256", "onnx_sha256", "mlflow_model_sha256", "tags"}
    cli = CliRunner().invoke(app, ["certificate", "verify", "2", "--workspace", str(ws.root), "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["ok"] is True
    missing = CliRunner().invoke(app, ["certificate", "verify", "99", "--workspace", str(ws.root)])
    assert missing.exit_code == 1


def test_tampered_onnx_fails(processed, tamper):
    ws, *_ = processed
    tamper(_run_artifact(ws, "2", "model.onnx"), lambda p: p.write_bytes(p.read_bytes() + b"\0"))
    assert verify_version(ws, "2").problems == ["ONNX file differs from the certified one"]


def test_tampered_certificate_fails(processed, tamper):
    ws, *_ = processed

    def upgrade(path):
        cert = json.loads(path.read_text())
        cert["gates"][0]["status"] = "pass" if cert["gates"][0]["status"] != "pass" else "fail"
        path.write_text(json.dumps(cert))

    tamper(_run_artifact(ws, "2", "certificate.json"), upgrade)
    problems = verify_version(ws, "2").problems
    assert any("contents were changed" in p for p in problems)


def test_tampered_weights_fail(processed, tamper):
    ws, *_ = processed

    def nudge(path):
        from safetensors.torch import load, save

        state = load(path.read_bytes())
        next(iter(state.values())).add_(1e-3)
        path.write_bytes(save(state))

    tamper(_run_artifact(ws, "2", "model.safetensors"), nudge)
    assert "registered weights differ from the certified weights" in verify_version(ws, "2").problems
    with pytest.raises(model_registry.IntegrityError, match="differs from the signed sha256"):
        model_registry.load_model(ws, "2")


def test_tampered_mlflow_model_fails(processed, tamper):
    ws, *_ = processed
    tamper(_model_file(ws, "2"), lambda p: p.write_bytes(p.read_bytes() + b"\0"))
    assert verify_version(ws, "2").problems == ["MLflow model's ONNX file differs from the certified one"]


def test_no_raw_subject_id_anywhere_in_the_mlflow_store(processed):
    ws, summary, stored, subjects = processed
    stores = [ws.mlflow_db, *[p for p in ws.mlflow_artifacts.rglob("*") if p.is_file()]]
    assert len(stores) > 5
    for path in stores:
        content = path.read_bytes()
        leaked = [s for s in subjects if s.encode() in content]
        assert not leaked, f"{path} holds raw subject ids {leaked[:3]}"


def test_report_is_logged_and_well_formed(processed):
    ws, summary, *_ = processed
    page = _run_artifact(ws, "2", "report.html").read_text()

    class Checker(HTMLParser):
        images, headings = 0, []

        def handle_starttag(self, tag, attrs):
            if tag == "img" and dict(attrs)["src"].startswith("data:image/png;base64,"):
                self.images += 1

        def handle_data(self, data):
            if self.lasttag == "h2":
                self.headings.append(data)

    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.images >= 2  # ROC curves + the fast path's layer candidates
    assert {"Accuracies", "Gates", "Membership attack", "Rungs tried"} <= set(checker.headings)
    assert summary["certificate_status"] in page


@pytest.fixture(scope="session")
def demo_batch(tmp_path_factory):
    """The default demo data and model (5000 digits, params.yaml as shipped) with a 30-subject request,
    cut into a new dataset version, ready for any method."""
    from unlearnops.demo import demo_subjects
    from unlearnops.intake import submit
    from unlearnops.project import init_workspace, train_base
    from unlearnops.flow.dataset_version import dataset_version as cut_dataset_version
    from unlearnops.flow.locate import locate as locate_pending
    from unlearnops.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("demo-data") / "ws")
    init_workspace(ws)
    ws.activate()
    train_base(ws)
    submit(ws, {"subject_ids": demo_subjects(ws, 30), "reason": "gate power check"})
    batch = locate_pending(ws)
    cut_dataset_version(ws, batch)
    return ws, batch


def _gates_for(ws, batch, method):
    from unlearnops.flow.gates import gates as run_gates
    from unlearnops.flow.unlearn import unlearn_rung as unlearn

    batch = batch.model_copy(deep=True)
    batch.method, batch.method_config = method, {}
    unlearn(ws, batch)
    run_gates(ws, batch)
    return batch


def test_identity_is_refused_on_the_default_demo_data(demo_batch):
    from noop_plugin import NoOpPlugin
    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, batch = demo_batch
    register_plugin(NoOpPlugin(), "noop-plugin")
    try:
        identity = _gates_for(ws, batch, "noop")
    finally:
        unregister_plugin("noop-plugin")
    gates = {g.name: g for g in identity.gates}
    assert gates["forget_accuracy"].status == "fail"
    # MNIST generalizes too well for the population attack to see the parent's membership: it must say so
    # (inconclusive, no power) rather than pass the identity.
    assert gates["membership_inference"].status != "pass"
    assert identity.status == "fail"


def test_retraining_is_certified_on_the_default_demo_data(demo_batch):
    ws, batch = demo_batch
    retrained = _gates_for(ws, batch, "retrain")
    gates = {g.name: g for g in retrained.gates}
    assert gates["forget_accuracy"].status == "pass" and gates["forget_accuracy"].metrics["power"]
    assert gates["membership_inference"].status in {"pass", "inconclusive"}
    assert retrained.status == "pass", [(g.name, g.status, g.summary) for g in retrained.gates]
