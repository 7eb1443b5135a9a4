"""What "certified" means: verification of registered versions, tampering, privacy, the report, and the
forgetting gates on the default demo data (identity refused, retraining certified)."""

import html
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
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
    # The embedded registry is read without mlflow (start-up under 1.5 s, issue #20), with every check made.
    from conftest import heavy_imports

    fresh = heavy_imports([["certificate", "verify", "2", "--workspace", str(ws.root)]])
    assert fresh == {"exit": {"certificate verify": 0}, "imported": {"certificate verify": []}}
    missing = heavy_imports([["certificate", "verify", "99", "--workspace", str(ws.root)]])
    assert missing == {"exit": {"certificate verify": 1}, "imported": {"certificate verify": []}}


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
    grounds = json.loads(_run_artifact(ws, "2", "certificate.json").read_text())["grounds"]
    assert html.escape(grounds) in page  # the page says first on what grounds it is (not) certified
    assert "{'" not in page  # no Python dict reprs: thresholds and rung gates read as "key = value"


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



def test_rungs_of_one_ladder_compute_the_parents_side_once_and_alike(demo_batch, monkeypatch):
    from noop_plugin import NoOpPlugin
    from unlearnops import model_registry
    from unlearnops.flow.gates import ladder_evidence
    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, batch = demo_batch
    register_plugin(NoOpPlugin(), "noop-plugin")
    try:
        alone = _gates_for(ws, batch, "noop")
        loads, load = [], model_registry.load_model
        monkeypatch.setattr(model_registry, "load_model", lambda *a, **k: loads.append(1) or load(*a, **k))
        with ladder_evidence():
            rungs = [_gates_for(ws, batch, "noop") for _ in range(2)]
    finally:
        unregister_plugin("noop-plugin")
    assert len(loads) == 3  # the parent for each rung's method, once for the gates
    for rung in rungs:
        assert rung.metrics == alone.metrics and rung.status == alone.status
        assert [g.model_dump() for g in rung.gates] == [g.model_dump() for g in alone.gates]

def test_retraining_is_certified_on_the_default_demo_data(demo_batch):
    ws, batch = demo_batch
    retrained = _gates_for(ws, batch, "retrain")
    gates = {g.name: g for g in retrained.gates}
    assert gates["forget_accuracy"].status == "pass" and gates["forget_accuracy"].metrics["power"]
    assert gates["membership_inference"].status in {"pass", "inconclusive"}
    assert retrained.status == "pass", [(g.name, g.status, g.summary) for g in retrained.gates]


class _Payload:
    """A pickle that creates ``marker`` when it is unpickled (what a crafted model.pth would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_in_the_registry_is_never_executed(processed, tamper, tmp_path):
    import pickle

    from unlearnops.deploy.serve import ModelServer
    from unlearnops.promote import check

    ws, *_ = processed
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    run_dir = _run_artifact(ws, "2", "certificate.json").parent
    model_dir = _model_file(ws, "2").parent
    planted = [run_dir / "model.pth", run_dir / "data.pkl", model_dir / "data" / "model.pth", model_dir / "data.pkl"]
    for path in planted:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(payload)
    tamper(_run_artifact(ws, "2", "model.safetensors"), lambda p: p.write_bytes(payload))
    try:
        assert "registered weights differ from the certified weights" in verify_version(ws, "2").problems
        cli = CliRunner().invoke(app, ["certificate", "verify", "2", "--workspace", str(ws.root)])
        assert cli.exit_code == 1
        assert not check(ws, "2").promotable
        with pytest.raises(RuntimeError, match="not served"):
            ModelServer(ws).load("2")
        with pytest.raises(model_registry.IntegrityError):  # the flow's and audit's only way to a model
            model_registry.load_model(ws, "2")
        audit = CliRunner().invoke(app, ["audit", "2", "--workspace", str(ws.root), "--json"])
        assert audit.exit_code == 1 and "differs from the signed sha256" in json.loads(audit.stdout)["error"]
        assert not marker.exists()
    finally:
        for path in planted:
            path.unlink()


def test_no_code_path_unpickles(processed):
    """Structural: nothing in the package loads an MLflow pytorch model or a full pickle."""
    import ast

    import unlearnops

    root = Path(unlearnops.__file__).parent
    offenders = []
    for path in [*root.rglob("*.py"), *(root.parent / "deploy").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "pytorch":
                offenders.append(f"{path.name}: mlflow.pytorch")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = getattr(node.func.value, "id", "")
                weights_only = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                   for k in node.keywords)
                if owner == "pickle" or (owner == "torch" and not weights_only):
                    offenders.append(f"{path.name}:{node.lineno}: {owner}.load")
    assert not offenders, offenders


def test_purged_tag_and_swapped_onnx_are_refused(processed, tamper):
    from unlearnops.deploy.serve import ModelServer
    from unlearnops.promote import check

    ws, *_ = processed
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    other = _run_artifact(ws, "1", "model.onnx").read_bytes()
    tamper(_run_artifact(ws, "2", "model.onnx"), lambda p: p.write_bytes(other))
    tamper(_model_file(ws, "2"), lambda p: p.write_bytes(other))
    client.set_model_version_tag(name, "2", "unlearnops.purged", "true")
    try:
        result = verify_version(ws, "2")
        assert not result.ok and not result.purged
        assert "ONNX file differs from the certified one" in result.problems
        cli = CliRunner().invoke(app, ["certificate", "verify", "2", "--workspace", str(ws.root)])
        assert cli.exit_code == 1 and "purged" not in cli.output
        assert not check(ws, "2").promotable
        with pytest.raises(RuntimeError, match="not served"):
            ModelServer(ws).load("2")
    finally:
        client.delete_model_version_tag(name, "2", "unlearnops.purged")


def test_a_purge_record_signed_by_another_key_is_refused(processed):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from unlearnops.certificate import sign

    ws, *_ = processed
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "2")
    forged = sign({"kind": "unlearnops.purge/v1", "model_name": mv.name, "version": "2",
                   "mlflow_run_id": mv.run_id}, Ed25519PrivateKey.generate())
    model_registry.client(ws).log_dict(mv.run_id, forged, "purge.json")
    try:
        result = verify_version(ws, "2")
        assert not result.ok and not result.purged
        assert any("purge.json" in p and "signed" in p for p in result.problems)
    finally:
        _run_artifact(ws, "2", "purge.json").unlink()


def test_every_lineage_tag_forgery_is_detected(processed):
    from unlearnops.verification import expected_tags

    ws, *_ = processed
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    tags = client.get_model_version(name, "2").tags
    lineage = expected_tags(json.loads(_run_artifact(ws, "2", "certificate.json").read_text()))
    assert len(lineage) == 10 and all(tags[k] == v for k, v in lineage.items())
    for key in lineage:
        client.set_model_version_tag(name, "2", key, "forged")
        try:
            problems = verify_version(ws, "2", files=False).problems
        finally:
            client.set_model_version_tag(name, "2", key, tags[key])
        assert problems == [f"registry tags disagree with the certificate: {key}"], key
    assert verify_version(ws, "2", files=False).ok


PYFUNC_SCRIPT = """
import os, sys
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "unlearnops"))]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
try:
    import unlearnops
    raise SystemExit("unlearnops is importable: " + unlearnops.__file__)
except ImportError:
    pass
import mlflow, numpy as np
mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})
model = mlflow.pyfunc.load_model("models:/{name}@champion")
out = model.predict(np.zeros((3, 1, 28, 28), dtype=np.float32))
out = next(iter(out.values())) if isinstance(out, dict) else np.asarray(out)
assert "unlearnops" not in sys.modules and "torch" not in sys.modules, sorted(sys.modules)[:5]
print("SHAPE", list(np.asarray(out).shape))
"""


def test_champion_loads_by_pyfunc_without_unlearnops_or_pickle(processed, tmp_path):
    import subprocess
    import sys

    ws, *_ = processed
    script = PYFUNC_SCRIPT.format(uri=ws.tracking_uri, name=ws.settings.project.model_name)
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true",
                                            "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SHAPE [3, 10]" in done.stdout
    description = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "2").description
    assert "samples of" in description and "Verdict: certified" in description


def test_mlflow_models_serve_answers_json_for_a_registered_version(processed, tmp_path):
    """MLflow's own scoring server (`mlflow models serve`, no unlearnops code in it) serves a registered
    version: JSON in, the same predictions as the version's weights out."""
    import os
    import sys

    import httpx
    import numpy as np
    import torch

    from unlearnops.data import load_dataset
    from unlearnops.servers import LocalServer, free_port, running

    ws, *_ = processed
    port, bin_dir = free_port(), Path(sys.executable).parent
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # it starts `uvicorn` from PATH
    scoring = LocalServer("MLflow scoring", [str(bin_dir / "mlflow"), "models", "serve", "-m",
                                             f"models:/{ws.settings.project.model_name}/2", "--env-manager",
                                             "local", "-h", "127.0.0.1", "-p", str(port)],
                          url=url, health_url=f"{url}/ping", log=tmp_path / "serve.log", env=env)
    with running(scoring, timeout=240):
        sample = np.asarray(load_dataset(ws.data_dir).split("test").features[:3], dtype=np.float32)
        answer = httpx.post(f"{url}/invocations", json={"inputs": sample.tolist()}, timeout=60)
        assert answer.status_code == 200, answer.text[:500]
        predictions = answer.json()["predictions"]
        served = np.asarray(next(iter(predictions.values())) if isinstance(predictions, dict) else predictions)
        with torch.no_grad():
            expected = model_registry.load_model(ws, "2")(torch.as_tensor(sample)).numpy()
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)
