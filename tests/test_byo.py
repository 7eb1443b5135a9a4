"""Bring your own model and data: two user projects the package knows nothing about (tests/user_projects)
go through the whole deletion flow with `unlearnops init` + configuration only, and bad configuration
fails before anything is written."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from unlearnops.cli import app

PROJECTS = Path(__file__).parent / "user_projects"
runner = CliRunner()

CANCER_TOML = """\
[project]
model_name = "cancer-mlp"
model_factory = "cancer_project:CancerMLP"
train_function = "cancer_project:train"
python_path = ["."]

[data]
adapter = "tabular"

[data.options]
path = "records.csv"
sample_id_column = "record_id"
subject_id_column = "patient"
label_column = "diagnosis"

[gates]
utility_max_drop = 0.05
"""


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, f"{args}: {result.output}"
    return json.loads(result.stdout)


def user_directory(tmp_path: Path, project: str, module: str) -> Path:
    """An empty directory holding only the user's own module and data export, as a new user starts."""
    directory = tmp_path / project
    directory.mkdir()
    shutil.copy(PROJECTS / project / module, directory / module)
    _load_module(directory / module).write_data(directory)
    return directory


def deleted_subject(directory: Path) -> str:
    manifest = pd.read_parquet(directory / "data" / "manifest.parquet")
    owners = manifest[manifest["split"] == "train"]["subject_id"].value_counts()
    return str(owners.index[0])


def assert_flow_certified(directory: Path, subjects: list[str]) -> dict:
    ws = str(directory)
    before = pd.read_parquet(directory / "data" / "manifest.parquet")
    gone = set(before.loc[before["subject_id"].isin(subjects), "sample_id"])
    assert gone
    invoke("request", "submit", "--subject", ",".join(subjects), "--workspace", ws)
    summary = invoke("run", "--workspace", ws)
    assert summary["certificate_status"] == "certified", summary
    after = pd.read_parquet(directory / "data" / "manifest.parquet")
    assert not gone & set(after["sample_id"]) and len(after) == len(before) - len(gone)
    status = invoke("status", "--workspace", ws)
    versions = {v["version"]: v for v in status["versions"]}
    new = summary["registered_version"]
    assert versions[new]["parent_version"] == "1" and "candidate" in versions[new]["aliases"]
    assert status["requests"] == {"certified": 1}
    verify = runner.invoke(app, ["certificate", "verify", new, "--workspace", ws])
    assert verify.exit_code == 0, verify.output
    decision = invoke("promote", "--workspace", ws)
    assert decision["promoted"] and decision["version"] == new
    return summary


def test_image_folder_project_with_own_training_loop(tmp_path, prefect_harness):
    directory = user_directory(tmp_path, "digits_images", "digits_project.py")
    # The user's params.yaml, with an extra key (momentum) for their own training function.
    (directory / "params.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 12, "batch_size": 32, "lr": 0.05, "seed": 0, "momentum": 0.9}}))
    created = invoke("init", str(directory), "--model-factory", "digits_project:DigitsCNN",
                     "--train-function", "digits_project:train", "--adapter", "image_folder",
                     "--option", "manifest=manifest.csv", "--python-path", ".", "--model-name", "digits-cnn")
    assert created["dataset"]["n_samples"] == 1797
    # the user's model code is a dep of the train stage: changing the model invalidates training
    assert "digits_project.py" in yaml.safe_load((directory / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    trained = invoke("train", "--workspace", str(directory))
    assert trained["champion_version"] == "1"
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85, metrics  # the user's loop really trained the user's CNN
    summary = assert_flow_certified(directory, [deleted_subject(directory)])
    assert summary["rungs"] and summary["rungs"][-1] in ("slug: pass", "retrain: pass"), summary["rungs"]


@pytest.fixture(scope="module")
def cancer_workspace(tmp_path_factory):
    directory = user_directory(tmp_path_factory.mktemp("byo"), "breast_cancer", "cancer_project.py")
    (directory / "unlearnops.toml").write_text(CANCER_TOML)
    (directory / "params.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 150, "batch_size": 64, "lr": 0.01, "seed": 0}}))
    invoke("init", str(directory))
    return directory


def test_tabular_project_with_imported_model(cancer_workspace, prefect_harness):
    directory = cancer_workspace
    settings = (directory / "unlearnops.toml").read_text()
    assert 'adapter = "tabular"' in settings and "# Import path" in settings  # kept and documented
    # The user trains with their own code on the training split, then imports the weights.
    import torch

    module = _load_module(directory / "cancer_project.py")
    manifest = pd.read_parquet(directory / "data" / "manifest.parquet")
    import numpy as np

    features = np.load(directory / "data" / "features.npy")
    train = (manifest["split"] == "train").to_numpy()
    model = module.train(module.CancerMLP(), features[train], manifest["label"].to_numpy()[train],
                         epochs=150, lr=0.01, seed=0)
    torch.save(model.state_dict(), directory / "net.pt")
    imported = invoke("train", "--weights", str(directory / "net.pt"), "--workspace", str(directory))
    assert imported["champion_version"] == "1"
    status = invoke("status", "--workspace", str(directory))
    assert status["model_name"] == "cancer-mlp" and status["versions"][0]["method"] == "imported"
    subjects = sorted(manifest.loc[train, "subject_id"].unique())[:2]
    assert_flow_certified(directory, subjects)


def test_import_from_mlflow_registry_uri(cancer_workspace, tmp_path):
    """A second workspace starts from the first one's registered model, addressed by an MLflow URI."""
    from unlearnops.workspace import Workspace

    source = Workspace(cancer_workspace)
    if not (cancer_workspace / ".unlearnops" / "mlflow.db").is_file():
        pytest.skip("needs the tabular project's registry")
    directory = tmp_path / "second"
    directory.mkdir()
    for name in ("cancer_project.py", "records.csv", "unlearnops.toml", "params.yaml"):
        shutil.copy(cancer_workspace / name, directory / name)
    invoke("init", str(directory))
    imported = invoke("train", "--from-model", "models:/cancer-mlp/1", "--source-tracking-uri",
                      source.tracking_uri, "--workspace", str(directory))
    assert imported["champion_version"] == "1"
    status = invoke("status", "--workspace", str(directory))
    assert status["versions"][0]["method"] == "imported"
    refused = runner.invoke(app, ["train", "--from-model", "models:/cancer-mlp/1", "--source-tracking-uri",
                                  source.tracking_uri, "--workspace", str(directory)])
    assert refused.exit_code == 2 and "already has a champion" in refused.output


SHARDED_TOML = """\
[project]
model_name = "sharded-records"
model_factory = "sharded_project:make_ensemble"
train_function = "sharded_project:train"
python_path = ["."]

[data]
adapter = "tabular"

[data.options]
path = "records.csv"
sample_id_column = "record_id"
subject_id_column = "patient"
label_column = "diagnosis"

[unlearn]
ladder = ["sisa"]

[gates]
utility_max_drop = 0.05
"""


def test_sisa_workspace_trained_by_dvc_repro(tmp_path, prefect_harness):
    """A SISA ensemble trained shard by shard by `dvc repro` (its training function takes sample ids); a
    deletion inside one shard is certified by the sisa rung, which retrains that constituent only."""
    import torch

    from unlearnops.plugins.sisa import shard_of
    from unlearnops.model_registry import load_model
    from unlearnops.workspace import Workspace

    directory = user_directory(tmp_path, "sharded_records", "sharded_project.py")
    (directory / "unlearnops.toml").write_text(SHARDED_TOML)
    (directory / "params.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 200, "batch_size": 64, "lr": 0.01, "seed": 0}}))
    invoke("init", str(directory))
    assert invoke("train", "--workspace", str(directory))["champion_version"] == "1"
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85, metrics

    manifest = pd.read_parquet(directory / "data" / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    shards = train.assign(shard=[shard_of(s, 3) for s in train["sample_id"]]).groupby("subject_id")["shard"]
    one_shard = shards.nunique()
    patient = str(one_shard[one_shard == 1].index[0])  # a patient whose training records share one shard
    touched = int(shards.first()[patient])
    summary = assert_flow_certified(directory, [patient])
    assert summary["rungs"] == ["sisa: pass"], summary["rungs"]

    ws = Workspace(directory)
    parent, child = load_model(ws, "1"), load_model(ws, summary["registered_version"])
    for k in range(3):
        same = all(torch.equal(a, b) for a, b in zip(parent.members[k].state_dict().values(),
                                                      child.members[k].state_dict().values()))
        assert same == (k != touched), f"constituent {k}: retrained={not same}, shard of the deletion {touched}"


def _assert_untouched(directory: Path, files_before: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == files_before
    assert not (directory / ".git").exists() and not (directory / "data").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"project": {"model_factory": "cancer_project:NoSuchNet"}}, "project.model_factory"),
        ({"project": {"model_factory": "not an import path"}}, "project.model_factory"),
        ({"project": {"python_path": []}}, "python_path"),
        ({"gates": {"utility_max_drop": "lots"}}, "gates.utility_max_drop"),
        ({"gates": {"utility_max_drop": 3.0}}, "gates.utility_max_drop"),
        ({"data": {"options": {"path": "missing.csv"}}}, "missing.csv"),
        ({"data": {"options": {"label_column": "label"}}}, "lacks column"),
        ({"data": {"options": {"colour": "red"}}}, "data.options.colour"),
        ({"data": {"adapter": "excel"}}, "data.adapter"),
        ({"project": {"model_factory": "unlearnops.model:SmallCNN"}}, "model/data mismatch"),
        ({"surprise": {"x": 1}}, "surprise"),
        ({"export": {"exporters": ["torchscript"]}}, "export.exporters"),
    ],
)
def test_bad_configuration_fails_before_any_state_changes(tmp_path, monkeypatch, change, expected):
    import sys

    import tomlkit

    # Other tests import the user's module from their own directories: forget those here.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "cancer_project.py").is_file()])
    monkeypatch.delitem(sys.modules, "cancer_project", raising=False)

    directory = user_directory(tmp_path, "breast_cancer", "cancer_project.py")
    document = tomlkit.parse(CANCER_TOML).unwrap()
    for section, values in change.items():
        target = document.setdefault(section, {})
        for key, value in values.items():
            if key == "options":
                target["options"].update(value)  # records.csv has no 'label' column, say
            else:
                target[key] = value
    (directory / "unlearnops.toml").write_text(tomlkit.dumps(document))
    files_before = {p.name for p in directory.iterdir()}
    result = runner.invoke(app, ["init", str(directory), "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert expected in error, error
    if expected not in ("model/data mismatch", "missing.csv", "lacks column"):
        assert "unlearnops.toml" in error  # names the file as well as the key
    _assert_untouched(directory, files_before)


def test_unreadable_manifest_and_broken_settings_file(tmp_path):
    directory = user_directory(tmp_path, "breast_cancer", "cancer_project.py")
    (directory / "records.csv").write_bytes(b"\x00\x01 not,a\ncsv\"\x00")
    (directory / "unlearnops.toml").write_text(CANCER_TOML)
    files_before = {p.name for p in directory.iterdir()}
    result = runner.invoke(app, ["init", str(directory), "--json"])
    assert result.exit_code == 2 and "records.csv" in json.loads(result.stdout)["error"]
    _assert_untouched(directory, files_before)
    (directory / "unlearnops.toml").write_text("[project\nmodel_name = ")
    result = runner.invoke(app, ["init", str(directory), "--json"])
    assert result.exit_code == 2 and "not valid TOML" in json.loads(result.stdout)["error"]
    _assert_untouched(directory, files_before)


def test_in_memory_arrays_through_the_python_api(tmp_path):
    """A notebook user hands torch tensors to api.init; the workspace holds them as dataset version 1."""
    import torch
    from sklearn.datasets import load_digits

    from unlearnops import api

    digits = load_digits()
    n = len(digits.target)
    ws = api.init(tmp_path / "digits", model_factory="unlearnops.model:TabularMLP", arrays=api.SourceData(
        features=torch.tensor(digits.data / 16, dtype=torch.float32), labels=torch.tensor(digits.target),
        sample_ids=[f"digit-{i}" for i in range(n)], subject_ids=[f"garden-{i % 15}" for i in range(n)]))
    status = api.status(ws)
    assert status["dataset"]["n_samples"] == n and status["versions"] == [] and status["requests"] == {}
    assert ws.settings.data.adapter == "arrays"
    receipt = api.submit(ws, subjects=["garden-3"])
    assert receipt["state"] == "received"
    assert api.status(ws)["requests"] == {"received": 1}
    with pytest.raises(api.ConfigError, match="mismatch"):
        api.init(tmp_path / "bad", model_factory="unlearnops.model:SmallCNN", arrays=api.SourceData(
            features=digits.data, labels=digits.target, sample_ids=list(range(n)), subject_ids=list(range(n))))
    assert not (tmp_path / "bad").exists()
