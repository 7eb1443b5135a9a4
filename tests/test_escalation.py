"""The escalation ladder end to end on real data: the fast path certifies what it can prove forgotten in
one rung, a forget set it cannot prove forgotten escalates to retraining, the identity method never
certifies, every rung is in the certificate, in nested MLflow runs and in `unlearnops explain`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearnops import api
from unlearnops.cli import app
from unlearnops.datasets import SourceData, mnist_5k

LIMIT = 900  # the first 900 digits of the mnist_5k file: 500 zeros and 400 ones
N_ODD = 12


@pytest.fixture(scope="module")
def odd_workspace(tmp_path_factory):
    """Real digits where 12 training samples carry a label no other sample has (5–9): a model cannot fit
    them from the other samples, and a retrained model never predicts them."""
    features, manifest = mnist_5k(limit=LIMIT)
    labels = manifest["label"].to_numpy().copy()
    rng = np.random.default_rng(0)
    train = np.flatnonzero(manifest["split"].to_numpy() == "train")
    odd = rng.choice(train, size=N_ODD, replace=False)
    labels[odd] = 5 + np.arange(N_ODD) % 5
    ws = api.init(tmp_path_factory.mktemp("ladder") / "ws", epochs=6, arrays=SourceData(
        features, labels, manifest["sample_id"].tolist(), manifest["subject_id"].tolist(),
        manifest["split"].tolist()))
    api.train(ws)
    return ws, manifest["sample_id"].to_numpy()[odd].tolist(), manifest


def _configure(ws, **unlearn):
    """Change ``[unlearn]`` settings of the workspace, as a user editing unlearnops.toml would."""
    settings = ws.settings.model_copy(update={"unlearn": ws.settings.unlearn.model_copy(update=unlearn)})
    ws.write_settings(settings, ws.params)


def _certificate(ws, run_id):
    return json.loads((ws.runs_dir / run_id / "certificate.json").read_text())


def test_identity_never_certifies(odd_workspace, tmp_path):
    """A no-op on a subject the model fit: refused, and nothing gets the candidate alias."""
    from noop_plugin import NoOpPlugin

    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, odd_ids, manifest = odd_workspace
    register_plugin(NoOpPlugin(), "identity-for-test")
    try:
        owners_of_odd = set(manifest.loc[manifest["sample_id"].isin(odd_ids), "subject_id"])
        train = manifest[(manifest["split"] == "train") & ~manifest["subject_id"].isin(owners_of_odd)]
        train_subjects = train["subject_id"].value_counts().index[:6]
        api.submit(ws, subjects=list(train_subjects))
        summary = api.run(ws, method="noop", prefect=False)
    finally:
        unregister_plugin("identity-for-test")
    assert summary["certificate_status"] != "certified"
    assert "candidate" not in next(v for v in api.status(ws)["versions"] if v["version"] == summary["registered_version"])["aliases"]


def test_unprovable_forget_set_escalates_and_is_certified_by_retraining(odd_workspace, tmp_path):
    ws, odd_ids, _ = odd_workspace
    _configure(ws, rung_config={"retrain": {"epochs": 4}})  # a per-rung budget, through the method's config
    api.submit(ws, samples=odd_ids)
    summary = api.run(ws, prefect=False)
    assert summary["request_kind"] == "class"  # their labels vanish with them: unsupported by any other sample
    assert summary["rungs"][0] != "slug: pass" and summary["rungs"][-1] == "retrain: pass", summary["rungs"]
    assert summary["certificate_status"] == "certified"
    certificate = _certificate(ws, summary["run_id"])
    assert [r["method"] for r in certificate["rungs"]] == ["slug", "retrain"]
    assert certificate["rungs"][1]["config"]["epochs"] == 4 and certificate["ladder"] == ["slug", "retrain"]
    first = certificate["rungs"][0]
    assert first["gates"]["class_forgetting"] == "inconclusive"  # the parent never fit them: nothing to prove
    assert any("exact method" in c for c in certificate["caveats"])

    # explain: every rung, why it stopped, the fast path's candidates and plots
    result = CliRunner().invoke(app, ["explain", summary["registered_version"], "--out", str(tmp_path),
                                      "--workspace", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    story = json.loads(result.stdout)
    assert [r["method"] for r in story["rungs"]] == ["slug", "retrain"]
    assert "class_forgetting: inconclusive" in story["rungs"][0]["why"]
    assert story["rungs"][1]["why"].startswith("passed every gate")
    # the parent never fit them: the fast path has nothing to search for their request and says so (the
    # batch also carries the subjects the identity test left open, which it does search)
    groups = first["details"]["groups"]
    (odd_group,) = [g for g in groups if g["n_forget"] == len(odd_ids)]
    assert odd_group["already_at_target"]["reached"] and odd_group["candidates"] == []
    assert story["rungs"][0]["already_at_target"] is (len(groups) == 1)
    # every request group's search is told, not only the first one's
    told = story["rungs"][0]["groups"]
    assert [g["n_forget"] for g in told] == [g["n_forget"] for g in groups]
    (odd_told,) = [g for g in told if g["n_forget"] == len(odd_ids)]
    assert odd_told["already_at_target"] and odd_told["candidates"] == []
    if len(groups) > 1:
        assert story["rungs"][0]["candidates"] == [] and any(g["candidates"] for g in told)
        text = CliRunner().invoke(app, ["explain", summary["registered_version"], "--workspace", str(ws.root)])
        assert text.exit_code == 0 and text.output.count("request group") == len(groups), text.output
        # the report explains the group that searched, by its number; the one at its target searched nothing
        page = (ws.runs_dir / summary["run_id"] / "report.html").read_text()
        searched = [n for n, g in enumerate(told, start=1) if g["candidates"]]
        assert all(f"request group {n} (" in page for n in searched)
        assert f"request group {told.index(odd_told) + 1} (" not in page

    # one nested MLflow run per rung under the version's run
    from unlearnops import model_registry

    client = model_registry.client(ws)
    version = client.get_model_version(ws.settings.project.model_name, summary["registered_version"])
    children = client.search_runs([client.get_run(version.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{version.run_id}'")
    assert sorted(r.data.tags["unlearnops.status"] for r in children) == ["inconclusive", "pass"]
    refused = CliRunner().invoke(app, ["explain", "999", "--workspace", str(ws.root)])
    assert refused.exit_code == 1 and "no version 999" in refused.output


def test_whole_class_forgetting_is_certified_by_the_fast_path_in_one_rung(odd_workspace, tmp_path):
    ws, _, _ = odd_workspace
    from unlearnops.data import load_dataset

    dataset = load_dataset(ws.data_dir)
    ones = dataset.manifest.loc[dataset.manifest["label"] == 1, "sample_id"].astype(str).tolist()
    _configure(ws, ladders={"class": ["slug", "retrain"], "samples": ["retrain"]})
    api.submit(ws, samples=ones)
    summary = api.run(ws, prefect=False)
    assert summary["request_kind"] == "class"
    assert summary["rungs"] == ["slug: pass"], summary
    assert summary["certificate_status"] == "certified"
    gates = {g["name"]: g for g in _certificate(ws, summary["run_id"])["gates"]}
    assert gates["class_forgetting"]["status"] == "pass" and gates["class_forgetting"]["metrics"]["power"]
    assert gates["forget_accuracy"]["metrics"]["applicable"] is False

    # explain: the fast path's candidates, searched on cached activations, and their plots
    result = CliRunner().invoke(app, ["explain", summary["registered_version"], "--out", str(tmp_path),
                                      "--workspace", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    (rung,) = json.loads(result.stdout)["rungs"]
    assert not rung["already_at_target"]
    assert rung["candidates"] and all(c["cached_activations"] for c in rung["candidates"])
    assert sum(c["chosen"] for c in rung["candidates"]) == 1
    assert rung["plots"] and all((tmp_path / p.split("/")[-1]).is_file() for p in rung["plots"])
    text = CliRunner().invoke(app, ["explain", summary["registered_version"], "--workspace", str(ws.root)])
    assert text.exit_code == 0 and "★" in text.output and "request group" not in text.output, text.output
