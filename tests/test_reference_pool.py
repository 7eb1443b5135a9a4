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

import numpy as np
import pytest

from unlearnops import api, audit
from unlearnops.datasets import SourceData, mnist_5k

LIMIT = 1200
N_FLIPPED = 20
K = 4


@pytest.fixture(scope="module")
def pool_ws(tmp_path_factory):
    features, manifest = mnist_5k(limit=LIMIT)
    labels = manifest["label"].to_numpy().copy()
    train = np.flatnonzero((manifest["split"].to_numpy() == "train") & (labels < 2))
    flipped = np.random.default_rng(0).choice(train, size=N_FLIPPED, replace=False)
    labels[flipped] = 1 - labels[flipped]
    ws = api.init(tmp_path_factory.mktemp("pool") / "ws", epochs=8, arrays=SourceData(
        features, labels, manifest["sample_id"].tolist(), manifest["subject_id"].tolist(),
        manifest["split"].tolist()))
    settings = ws.settings.model_copy(update={
        "gates": ws.settings.gates.model_copy(update={"references": K})})
    ws.write_settings(settings, ws.params)
    api.train(ws)
    trained = api.references_train(ws, k=K, device="cpu")
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


def test_most_memorized_retrained_model_is_certified_and_not_like_the_parent(pool_ws):
    """Retraining without the mislabeled samples: certified (exact). Without the most memorized ones the
    population membership gate still blocks the exact path (see README, Not done yet). Judged as if
    approximate, a retrained model's LiRA
    score on them sits far below the parent's (it does not keep what the parent memorized)."""
    from unlearnops.method_runner import Samples, call_training
    from unlearnops.model import seed_everything

    ws, flipped, _ = pool_ws
    pool, kinds = _kinds(ws, flipped)
    for kind in ("most memorized", "mislabeled"):
        keep = ~kinds[kind]
        seed_everything(0)
        retrained = call_training(ws.train_function, ws.model_factory(),
                                  Samples(np.asarray(pool.features[keep]), pool.labels[keep],
                                          pool.manifest["sample_id"].astype(str).to_numpy()[keep].tolist()),
                                  device="cpu", **{**ws.params.train.model_dump(), "seed": 0})
        status, exact_results = _judge(ws, kinds[kind], retrained, exact=True)
        print(kind, "exact verdict:", status, {n: r.status for n, r in exact_results.items()})
        if kind == "mislabeled":
            assert status == "pass", (kind, {n: (r.status, r.summary) for n, r in exact_results.items()})
        _, results = _judge(ws, kinds[kind], retrained)
        equivalence = results["retrain_equivalence"].metrics
        print(kind, "retrained:", results["retrain_equivalence"].status, results["retrain_equivalence"].summary,
              {k: equivalence[k] for k in ("score", "ci", "parent_score", "agreement", "parent_agreement")})
        if kind == "mislabeled":  # the memorized set is selected with these references: biased (README)
            assert equivalence["score"] < equivalence["parent_score"] - 1.0


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
        _, other = subjects_in_one_part(skip={part})
        api.submit(ws, subjects=other)
        second = api.run(ws, prefect=False)
    finally:
        unregister_plugin("identity-for-pool-test")
    note = json.loads((ws.runs_dir / second["run_id"] / "batch.json").read_text())["samples_used"]["gates"][
        "reference_models"]
    print("batch 2 references:", note)
    # reused: the references that held neither batch's subjects; trained: the indices stale after batch 1
    # plus those holding batch 2's part (replaced on today's data before the gate)
    assert note["k"] == K and note["reused"] + note["trained"] == K and 1 <= note["reused"] <= K // 2
    assert note["out_references_per_sample"] >= K // 2
    status = api.references_status(ws)
    assert status["valid"] + status["missing"] == K and status["stale"] == 0
