"""Audit mode (offline LiRA and RMIA with cached reference models) and the calibration/gate split of the
held-out data, on a tiny workspace of its own: base model, one retraining batch (v2), K = 2 references."""

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from unlearnops import audit, model_registry
from unlearnops.cli import app
from unlearnops.datasets import HOLDOUT_PARTS, holdout_part
from unlearnops.workspace import GateSettings

K = 2


@pytest.fixture(scope="module")
def deleted(tmp_path_factory):
    """A tiny trained workspace after one deletion batch by retraining (v2, parent v1)."""
    from conftest import TEST_SUBJECTS, make_workspace

    from unlearnops.demo import demo_subjects
    from unlearnops.intake import submit
    from unlearnops.project import train_base
    from unlearnops.flow.run import process_pending

    ws = make_workspace(tmp_path_factory.mktemp("audit") / "ws")
    train_base(ws)
    submit(ws, {"subject_ids": demo_subjects(ws, TEST_SUBJECTS), "reason": "audit test"})
    batch = process_pending(ws, method="retrain")
    assert batch.registered_version == "2"
    return ws, batch


@pytest.fixture(scope="module")
def audits(deleted):
    """The same forget set audited with the identity (parent unchanged) and with the retrained model."""
    ws, _ = deleted
    _, certificate = audit._version_context(ws, "2")
    forget = audit._forget_set(ws, certificate, "2")
    parent, retrained = model_registry.load_model(ws, "1"), model_registry.load_model(ws, "2")
    identity = audit.run_audit(ws, parent, parent, forget, references=K)
    retrain = audit.run_audit(ws, parent, retrained, forget, references=K)
    return identity, retrain, forget


# -- calibration / gate split -------------------------------------------------------------------------------


def test_holdout_parts_are_deterministic_and_balanced():
    ids = [f"sample-{i}" for i in range(4000)]
    parts = [holdout_part(i) for i in ids]
    assert parts == [holdout_part(i) for i in ids] and set(parts) == set(HOLDOUT_PARTS)
    assert 0.45 < parts.count("calibration") / len(ids) < 0.55


def test_methods_and_gates_use_disjoint_holdout_halves(deleted):
    from unlearnops.data import load_dataset
    from unlearnops.flow.samples import holdout_split

    ws, batch = deleted
    calibration = set(holdout_split(ws, "calibration").manifest["sample_id"])
    gate = set(holdout_split(ws, "gate").manifest["sample_id"])
    holdout = set(load_dataset(ws.data_dir).split("holdout").manifest["sample_id"])
    assert calibration and gate and not calibration & gate and calibration | gate == holdout
    used = batch.samples_used
    assert used["methods"]["calibration"] == len(calibration) and used["gates"]["nonmembers"] == len(gate)
    gate_result = next(g for g in batch.gates if g.name == "membership_inference")
    assert gate_result.metrics["n_nonmembers"] == len(gate)
    # the certificate states what each used
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "2")
    (path,) = ws.mlflow_artifacts.glob(f"**/{mv.run_id}/artifacts/certificate.json")
    certificate = json.loads(path.read_text())
    assert certificate["samples_used"]["methods"]["calibration"] == len(calibration)
    counted = {k: v for k, v in certificate["samples_used"]["gates"].items() if k != "reference_models"}
    assert counted == {"forget": used["gates"]["forget"], "nonmembers": len(gate), "test": used["gates"]["test"]}
    assert "reference_models" in certificate["samples_used"]["gates"]  # where the references came from
    assert "calibration" in certificate["samples_used"]["holdout_rule"]


# -- the attacks on known scores ------------------------------------------------------------------------------


def test_lira_and_rmia_rank_memorized_examples_high():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    difficulty = rng.normal(2, 2, n)  # per-example OUT level: what LiRA calibrates away
    reference = difficulty + rng.normal(0, 0.5, (k, n))
    member = np.arange(n) < 200
    target = difficulty + rng.normal(0, 0.5, n) + 1.5 * member
    z = audit.lira_offline(target, reference, ~member)
    population_difficulty = rng.normal(2, 2, 300)
    rmia = audit.rmia_offline(target, reference, population_difficulty + rng.normal(0, 0.5, 300),
                              population_difficulty + rng.normal(0, 0.5, (k, 300)))
    for scores in (z, rmia):
        assert scores[member].mean() > scores[~member].mean()
    from unlearnops.gates import class_matched_auc

    labels = np.zeros(n)
    assert class_matched_auc(z[member], labels[member], z[~member], labels[~member]) > 0.85
    raw = class_matched_auc(target[member], labels[member], target[~member], labels[~member])
    assert raw < 0.75  # without the references the per-example difficulty hides membership
    assert 0 <= rmia.min() and rmia.max() <= 1
    # K = 1: the spread comes from the known non-members
    assert np.isfinite(audit.lira_offline(target, reference[:1], ~member)).all()


def test_audit_verdict_rules():
    def attack(status, power):
        return {"status": status, "power": power, "summary": status}

    assert audit.combine({"lira": attack("fail", True), "rmia": attack("pass", True)})[0] == "fail"
    assert audit.combine({"lira": attack("pass", True), "rmia": attack("inconclusive", False)})[0] == "pass"
    # an attack with power whose interval is too wide keeps the audit open
    assert audit.combine({"lira": attack("pass", True), "rmia": attack("inconclusive", True)})[0] == "inconclusive"
    assert audit.combine({"lira": attack("inconclusive", False), "rmia": attack("inconclusive", False)})[0] \
        == "inconclusive"


# -- on real models ------------------------------------------------------------------------------------------


def test_identity_looks_member_like_and_is_never_passed(audits):
    """The identity keeps the parent's weights: its forget set scores as the parent's does, higher per example
    than under a model that never saw it, and the audit never passes it (fail with power, else inconclusive).
    On these MNIST digits the gap between the forget set and the non-members is small (AUC about 0.56-0.60
    against about 0.50 for the retrained model), so only the verdict and the paired comparison are asserted."""
    identity, retrain, forget = audits
    lira = identity["attacks"]["lira"]
    assert lira["candidate"]["auc"] == lira["parent"]["auc"]  # the same model
    assert identity["status"] != "pass"
    assert identity["status"] == "fail" or not all(a["power"] for a in identity["attacks"].values())
    identity_z = np.array([e["lira_candidate"] for e in identity["per_example"]["forget"]])
    retrained_z = np.array([e["lira_candidate"] for e in retrain["per_example"]["forget"]])
    assert len(identity_z) == len(forget) == identity["samples"]["forget"]
    assert wilcoxon(identity_z - retrained_z, alternative="greater").pvalue < 1e-4
    for attack in ("lira", "rmia"):
        for tag in ("parent", "candidate"):
            m = identity["attacks"][attack][tag]
            assert 0 <= m["tpr_at_0.1pct_fpr"] <= m["tpr_at_1pct_fpr"] <= 1 and m["auc_ci"][0] <= m["auc_ci"][1]


def test_retrained_model_is_not_failed(audits):
    identity, retrain, _ = audits
    assert retrain["status"] != "fail"
    # the retrained model never saw the forget set: no attack finds it significantly member-like
    for attack in retrain["attacks"].values():
        assert attack["candidate"]["auc_ci"][0] <= 0.5 + GateSettings().mia_margin


def test_reference_models_are_cached_and_reused(audits, deleted):
    ws, _ = deleted
    identity, retrain, _ = audits
    assert identity["references"]["trained"] + identity["references"]["reused"] == K
    assert retrain["references"] == {**retrain["references"], "reused": K, "trained": 0, "pruned": []}
    for ref in retrain["references"]["models"]:
        meta = json.loads((ws.root / ref["path"]).with_suffix(".json").read_text())
        assert meta["n_train"] == len(meta["train_ids"]) and "recipe-" in ref["path"]  # filed by recipe, not version


def test_audit_cli_records_with_the_version(deleted, audits):
    ws, _ = deleted
    result = CliRunner().invoke(app, ["audit", "2", "--references", str(K), "--workspace", str(ws.root), "--json"])
    assert result.exit_code in (0, 1), result.output
    record = json.loads(result.stdout)
    assert record["version"] == "2" and record["parent_version"] == "1"
    assert result.exit_code == (0 if record["status"] == "pass" else 1) and record["status"] != "fail"
    assert record["references"]["reused"] == K and record["signature"]["algorithm"] == "ed25519"
    from unlearnops.certificate import verify
    from unlearnops.keys import public_key as workspace_public_key

    verify(record, workspace_public_key(ws))
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "2")
    assert mv.tags["unlearnops.audit_status"] == record["status"]
    assert float(mv.tags["unlearnops.audit_lira_auc"]) == pytest.approx(record["attacks"]["lira"]["candidate"]["auc"],
                                                                         abs=1e-4)
    artifacts = ws.mlflow_artifacts.glob(f"**/{mv.run_id}/artifacts/{mv.tags['unlearnops.audit_record']}")
    assert json.loads(next(artifacts).read_text())["signature"] == record["signature"]
    (report,) = ws.mlflow_artifacts.glob(f"**/{mv.run_id}/artifacts/report.html")
    page = report.read_text()
    assert page.count("<!-- audit:start -->") == 1 and "<h2>Audit" in page and "audit ROC curves" in page
    # the certificate is untouched: the version still verifies
    from unlearnops.verification import verify_version

    assert verify_version(ws, "2").ok
    # a base model has no forget set; K outside 1-8 is refused
    base = CliRunner().invoke(app, ["audit", "1", "--workspace", str(ws.root), "--json"])
    assert base.exit_code == 1 and "base model" in json.loads(base.stdout)["error"]
    assert CliRunner().invoke(app, ["audit", "2", "--references", "9", "--workspace", str(ws.root)]).exit_code == 2


def test_references_holding_deleted_samples_are_pruned(deleted, audits):
    """A reference model is reusable only while every sample it trained on is still in the data: deleting one
    of its samples (here: a pool without a few of reference 0's ids) evicts it; the other one stays."""
    ws, _ = deleted
    from unlearnops.data import load_dataset
    from unlearnops.model import pick_device

    cached = sorted(audit._cached(ws), key=lambda r: r.meta["index"])[:K]
    pool = load_dataset(ws.data_dir, mmap=False).split("train")
    only_first = sorted(set(cached[0].meta["train_ids"]) - set(cached[1].meta["train_ids"]))[:5]
    smaller = pool.select(~pool.manifest["sample_id"].isin(only_first).to_numpy())
    refs, pruned = audit.reference_models(ws, smaller, "after-more-deletions", K, pick_device("cpu"))
    assert pruned == [str(cached[0].path.relative_to(ws.root))] and not cached[0].path.exists()
    assert [r.reused for r in refs] == [True, False] and refs[0].path == cached[1].path
    assert set(refs[1].meta["train_ids"]) <= set(smaller.manifest["sample_id"])
    assert not set(only_first) & set(refs[1].meta["train_ids"])


def test_bad_reference_count_is_refused(deleted):
    ws, _ = deleted
    with pytest.raises(audit.AuditRefused, match="between 1 and 8"):
        audit.run_audit(ws, None, None, None, references=0)
