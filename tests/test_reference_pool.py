"""The reference pool on real digits: subject-keyed parts, complementary pairs, per-sample "out" masks.

One small workspace (1200 real digits: classes 0, 1 and a part of 2; 20 training labels flipped 0 <-> 1;
8 epochs) and one pool of K = 4 references trained through ``api.references_train``. The gate layer is
driven directly with real models (parent, parent + tiny noise, a model retrained without the samples) on
five kinds of deletion; two real flow batches show a subject deletion leaving the references that never
held the subject valid and reused by the next batch, the stale ones deleted.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import pytest

from conftest import pin_subject_key
from unlearnops import api, audit
from unlearnops.datasets import SourceData, mnist_5k

LIMIT = 1200
N_FLIPPED = 20
K = 4


@pytest.fixture(scope="module")
def pool_ws(tmp_path_factory):
    began = time.perf_counter()
    features, manifest = mnist_5k(limit=LIMIT)
    labels = manifest["label"].to_numpy().copy()
    train = np.flatnonzero((manifest["split"].to_numpy() == "train") & (labels < 2))
    flipped = np.random.default_rng(0).choice(train, size=N_FLIPPED, replace=False)
    labels[flipped] = 1 - labels[flipped]
    ws = api.init(tmp_path_factory.mktemp("pool") / "ws", epochs=8, arrays=SourceData(
        features, labels, manifest["sample_id"].tolist(), manifest["subject_id"].tolist(),
        manifest["split"].tolist()))
    pin_subject_key(ws)
    settings = ws.settings.model_copy(update={
        "gates": ws.settings.gates.model_copy(update={"references": K})})
    ws.write_settings(settings, ws.params)
    started = time.perf_counter()
    api.train(ws)
    trained_at = time.perf_counter()
    trained = api.references_train(ws, k=K, device="cpu")
    print(f"\nfixture: init {started - began:.1f} s, train {trained_at - started:.1f} s, references "
          f"{time.perf_counter() - trained_at:.1f} s (training {trained['seconds_per_reference']} s)", file=sys.stderr)
    return ws, manifest["sample_id"].to_numpy()[flipped].tolist(), trained


def test_pool_is_balanced_and_keyed(pool_ws, capsys):
    ws, _, trained = pool_ws
    assert trained["trained"] == K and trained["reused"] == 0
    print("seconds per reference:", trained["seconds_per_reference"])
    status = api.references_status(ws)
    assert status["valid"] == K and status["stale"] == 0 and status["missing"] == 0
    # complementary pairs: every part is left out by exactly K/2 references
    assert {p["valid_out_references"] for p in status["by_part"]} == {K // 2}
    # parts are keyed by subject: all of a subject's samples share one, and no raw subject id is written
    from unlearnops.data import load_dataset

    manifest = load_dataset(ws.data_dir).manifest
    parts = audit.sample_parts(ws, manifest)
    assert manifest.assign(part=parts).groupby("subject_id")["part"].nunique().max() == 1
    some_subject = str(manifest["subject_id"].iloc[0])
    assert not any(some_subject in p.read_text() for p in audit.references_dir(ws).glob("*/*.json"))
    # a second call trains nothing
    again = api.references_train(ws, k=K, device="cpu")
    assert again["trained"] == 0 and again["reused"] == K


def test_references_cli_status_and_refused_train_as_json(pool_ws):
    """`references status --json` is the pool's status document; `references train --k 0 --json` is
    refused (exit 1) with one JSON error document on stdout and trains nothing."""
    from typer.testing import CliRunner

    from unlearnops.cli import app

    ws, _, _ = pool_ws
    runner = CliRunner()
    result = runner.invoke(app, ["references", "status", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status == api.references_status(ws)
    assert (status["k"], status["valid"], status["stale"], status["missing"]) == (K, K, 0, 0)
    assert [m["status"] for m in status["models"]] == ["valid"] * K
    before = sorted(p.name for p in audit.references_dir(ws).rglob("*.pt"))
    for command in (["references", "train", "--k", "0"], ["references", "status", "--k", "9"]):
        result = runner.invoke(app, [*command, "-w", str(ws.root), "--json"])
        assert result.exit_code == 1, (command, result.output)
        assert json.loads(result.stdout) == {
            "error": f"references {command[1]} refused: k must be between 1 and 8, got {command[-1]}"}
    assert sorted(p.name for p in audit.references_dir(ws).rglob("*.pt")) == before


# -- the gate layer on five kinds of deletion ------------------------------------------------------------


def _judge(ws, forget_mask, candidate, exact=False, whole_class=None):
    """Every forgetting and utility gate on ``candidate`` for the training samples ``forget_mask`` selects,
    with the pool's references masked to the samples each never trained on."""
    from unlearnops import gates, model_registry
    from unlearnops.data import load_dataset
    from unlearnops.flow.samples import split_samples
    from unlearnops.gates import GateEvidence
    from unlearnops.model import evaluate, load_weights
    from unlearnops.plugin_manager import load_plugins

    current = load_dataset(ws.data_dir, mmap=False)
    pool = current.split("train")
    forget = pool.select(forget_mask)
    ids = forget.manifest["sample_id"].astype(str).tolist()
    holdout, test = split_samples(ws, "holdout", part="gate"), split_samples(ws, "test")
    parent = model_registry.load_model(ws, "1")
    refs = sorted(audit._cached(ws), key=lambda r: r.meta["index"])[:K]
    out = np.vstack([~np.isin(ids, r.meta["train_ids"]) for r in refs])
    ref_evals = [evaluate(load_weights(ws.model_factory, r.path, "cpu"), forget.features, forget.labels) for r in refs]

    def three(model):
        return {name: evaluate(model, s.features, s.labels)
                for name, s in (("forget", forget), ("holdout", holdout), ("test", test))}

    manifest = current.manifest
    after = manifest[~manifest["sample_id"].isin(ids)]
    if whole_class is not None:  # a class request deletes the class from every split
        after = after[after["label"] != whole_class]
    evidence = GateEvidence(manifest, after, ids, [""] * len(ids),
                            forget.labels, holdout.labels, three(parent), three(candidate), seed=0,
                            references=ref_evals, reference_out=out, exact=exact)
    results = [entry.obj.check(evidence, ws.settings.gates) for name, entry in load_plugins().entries["gate"].items()
               if name != "data"]
    status, _ = gates.overall_status(results, ws.settings.gates, exact=exact)
    return status, {r.name: r for r in results}


def _kinds(ws, flipped):
    from unlearnops.data import load_dataset
    from unlearnops.model import evaluate, load_weights
    from unlearnops import model_registry

    pool = load_dataset(ws.data_dir, mmap=False).split("train")
    ids = pool.manifest["sample_id"].astype(str).to_numpy()
    is_flipped = np.isin(ids, flipped)
    rng = np.random.default_rng(1)
    kinds = {"mislabeled": is_flipped}
    random = np.zeros(len(ids), bool)
    random[rng.choice(np.flatnonzero(~is_flipped), 40, replace=False)] = True
    kinds["random samples"] = random
    subjects = pool.manifest.loc[~is_flipped, "subject_id"].astype(str).unique()
    chosen = rng.choice(subjects, 5, replace=False)
    kinds["subjects"] = pool.manifest["subject_id"].astype(str).isin(chosen).to_numpy()
    kinds["whole class"] = pool.labels == 2
    # Most memorized: what the parent fits but the references that never saw a sample do not (highest
    # phi_parent - mean phi of its out references), among the correctly labelled samples.
    parent = model_registry.load_model(ws, "1")
    phi_parent = evaluate(parent, pool.features, pool.labels).phi
    refs = sorted(audit._cached(ws), key=lambda r: r.meta["index"])[:K]
    out = np.vstack([~np.isin(ids, r.meta["train_ids"]) for r in refs])
    phi_refs = np.vstack([evaluate(load_weights(ws.model_factory, r.path, "cpu"), pool.features, pool.labels).phi
                          for r in refs])
    gap = phi_parent - (phi_refs * out).sum(0) / out.sum(0)
    gap[is_flipped] = -np.inf
    memorized = np.zeros(len(ids), bool)
    memorized[np.argsort(-gap)[:20]] = True
    kinds["most memorized"] = memorized
    return pool, kinds


def test_identity_and_tiny_noise_are_refused_on_every_kind(pool_ws):
    from noop_plugin import TinyNoise

    from unlearnops import model_registry

    ws, flipped, _ = pool_ws
    _, kinds = _kinds(ws, flipped)
    parent = model_registry.load_model(ws, "1")
    noisy = TinyNoise().unlearn(copy.deepcopy(parent), None, TinyNoise.Config(), "cpu").model
    table = {}
    for kind, mask in kinds.items():
        for name, candidate in (("identity", parent), ("tiny-noise", noisy)):
            status, results = _judge(ws, mask, candidate, whole_class=2 if kind == "whole class" else None)
            evidence_gate = "class_forgetting" if kind == "whole class" else "retrain_equivalence"
            m = results[evidence_gate].metrics
            table[(kind, name)] = (status, results[evidence_gate].status, m.get("score"), m.get("ci"))
            assert status != "pass", (kind, name, table[(kind, name)])  # refused: the ladder escalates
            if kind in ("mislabeled", "most memorized", "whole class"):  # the parent's imprint is visible
                assert results[evidence_gate].status == "fail", (kind, name, results[evidence_gate])
            else:  # typical samples: refused, and never passed for want of power
                assert results[evidence_gate].status in ("fail", "inconclusive"), (kind, name)
    print(json.dumps({f"{k} / {n}": v for (k, n), v in table.items()}, indent=1))


def test_retrained_model_certified_on_mislabeled_and_most_memorized(pool_ws):
    """A model retrained without the samples, judged by every gate.

    Exact, it is certified on both kinds (forgetting holds by construction). On the most memorized samples
    (selected with these same references) the held-out membership gate finds them member-like — easy digits a
    model that never saw them is still confident on — which the certificate states as a caveat instead of
    blocking. Judged as if approximate, the mislabeled score sits far below the parent's; on the most
    memorized it stays above the band: half-size references are less confident than a full retrain and the
    selection picked where they are least confident — a known miscalibration, pinned (README, Not done yet)."""
    from unlearnops.method_runner import Samples, call_training
    from unlearnops.model import seed_everything

    ws, flipped, _ = pool_ws
    pool, kinds = _kinds(ws, flipped)
    margin = ws.settings.gates.equivalence_margin
    for kind in ("most memorized", "mislabeled"):
        keep = ~kinds[kind]
        seed_everything(0)
        retrained = call_training(ws.train_function, ws.model_factory(),
                                  Samples(np.asarray(pool.features[keep]), pool.labels[keep],
                                          pool.manifest["sample_id"].astype(str).to_numpy()[keep].tolist()),
                                  device="cpu", **{**ws.params.train.model_dump(), "seed": 0})
        status, exact_results = _judge(ws, kinds[kind], retrained, exact=True)
        verdicts = {n: (r.status, r.summary) for n, r in exact_results.items()}
        _, results = _judge(ws, kinds[kind], retrained)
        equivalence = results["retrain_equivalence"].metrics
        seen = {"exact": status, "gates": verdicts, "approximate": results["retrain_equivalence"].status,
                **{k: equivalence[k] for k in ("score", "ci", "parent_score", "agreement", "parent_agreement")}}
        print(kind, json.dumps(seen, default=str))
        assert status == "pass", (kind, seen)
        if kind == "mislabeled":
            assert equivalence["score"] < equivalence["parent_score"] - 1.0, (kind, seen)
        else:  # known miscalibration (README, Not done yet)
            assert equivalence["score"] < equivalence["parent_score"], (kind, seen)  # it did not keep all of it
            assert equivalence["ci"][0] > margin, (kind, seen)  # yet above the band: would fail as approximate


# -- a subject deletion through the flow leaves half the pool valid -------------------------------------------


def test_subject_deletion_keeps_references_that_never_held_the_subject(pool_ws):
    from noop_plugin import NoOpPlugin

    from unlearnops.data import load_dataset
    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, flipped, _ = pool_ws
    manifest = load_dataset(ws.data_dir).manifest
    parts = audit.sample_parts(ws, manifest)
    train = manifest["split"].to_numpy() == "train"
    clean = ~manifest["sample_id"].isin(flipped).to_numpy()
    by_part = manifest.assign(part=parts)[train & clean & (manifest["label"].to_numpy() < 2)]

    def subjects_in_one_part(skip=()):
        for part, group in by_part.groupby("part"):
            if part in skip:
                continue
            subjects = group["subject_id"].astype(str).unique()[:3]
            if by_part["subject_id"].isin(subjects).sum() >= 15:
                return int(part), subjects.tolist()
        raise AssertionError("no part with 3 subjects")

    before = {r.meta["index"]: r for r in audit._cached(ws)}
    part, subjects = subjects_in_one_part()
    holders = {i for i, r in before.items() if part in r.meta["parts"]}
    assert len(holders) == K // 2
    settings = ws.settings.model_copy(update={
        "unlearn": ws.settings.unlearn.model_copy(update={"ladder": ["noop", "retrain"], "ladders": {}})})
    ws.write_settings(settings, ws.params)
    register_plugin(NoOpPlugin(), "identity-for-pool-test")
    try:
        api.submit(ws, subjects=subjects)
        first = api.run(ws, prefect=False)
        certificate = json.loads((ws.runs_dir / first["run_id"] / "certificate.json").read_text())
        noop, retrain = certificate["rungs"]
        assert noop["method"] == "noop" and noop["status"] != "pass", noop
        assert noop["gates"]["retrain_equivalence"] in ("fail", "inconclusive"), noop
        assert first["certificate_status"] == "certified"
        after = {r.meta["index"]: r for r in audit._cached(ws)}
        assert set(after) == set(before) - holders  # stale ones deleted from disk once the batch finished
        assert all(not before[i].path.exists() for i in holders)
        assert all(after[i].path == before[i].path for i in after)  # the others kept, unchanged
        # the next batch reuses them and trains only the missing indices
        ws.write_settings(ws.settings.model_copy(update={
            "unlearn": ws.settings.unlearn.model_copy(update={"ladder": ["noop"], "ladders": {}}),
            "gates": ws.settings.gates.model_copy(update={"train_references": True})}), ws.params)
        other_part, other = subjects_in_one_part(skip={part})
        api.submit(ws, subjects=other)
        second = api.run(ws, prefect=False)
    finally:
        unregister_plugin("identity-for-pool-test")
    note = json.loads((ws.runs_dir / second["run_id"] / "batch.json").read_text())["samples_used"]["gates"][
        "reference_models"]
    print("batch 2 references:", note)
    # trained: the indices deleted after batch 1 plus those holding batch 2's part (stale through batch 2,
    # replaced on today's data before the gate); reused: the ones that held neither part. Which indices hold
    # a part is fixed by the pair design, so the counts are exact (0..K/2 reused, depending on the parts).
    parts_count = ws.settings.gates.reference_parts
    holders_2 = {i for i in range(K) if other_part in audit.reference_parts_of(i, parts_count)}
    assert len(holders_2) == K // 2
    assert note["k"] == K and note["trained"] == len(holders | holders_2), note
    assert note["reused"] == K - len(holders | holders_2) and note["stale_this_batch"] == 0, note
    assert note["out_references_per_sample"] == K  # every reference used was trained without batch 2's subjects
    status = api.references_status(ws)  # batch 2's stale holders deleted at its finalize; the pool is full again
    assert (status["valid"], status["stale"], status["missing"]) == (K, 0, 0), status
