"""The retrain-equivalence gate on real data: deleting mislabeled samples. A model that still predicts their
wrong labels is refused even though held-out accuracy would not see it; retraining is certified (exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import pin_subject_key
from unlearnops import api
from unlearnops.datasets import SourceData, mnist_5k

LIMIT = 900  # 500 zeros and 400 ones
N_FLIPPED = 20


@pytest.fixture(scope="module")
def mislabeled_workspace(tmp_path_factory):
    features, manifest = mnist_5k(limit=LIMIT)
    labels = manifest["label"].to_numpy().copy()
    train = np.flatnonzero(manifest["split"].to_numpy() == "train")
    flipped = np.random.default_rng(0).choice(train, size=N_FLIPPED, replace=False)
    labels[flipped] = 1 - labels[flipped]  # a zero labelled one and vice versa: a class others support
    ws = api.init(tmp_path_factory.mktemp("mislabeled") / "ws", epochs=8, arrays=SourceData(
        features, labels, manifest["sample_id"].tolist(), manifest["subject_id"].tolist(),
        manifest["split"].tolist()))
    pin_subject_key(ws)
    api.train(ws)
    return ws, manifest["sample_id"].to_numpy()[flipped].tolist()


def test_mislabeled_deletion_refuses_identity_and_tiny_noise_and_certifies_retraining(mislabeled_workspace):
    from noop_plugin import NoOpPlugin

    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, flipped = mislabeled_workspace
    settings = ws.settings.model_copy(update={
        "unlearn": ws.settings.unlearn.model_copy(update={"ladder": ["noop", "tiny-noise", "fake-exact", "retrain"], "ladders": {}}),
        "gates": ws.settings.gates.model_copy(update={"references": 3, "train_references": True}),
    })
    ws.write_settings(settings, ws.params)
    register_plugin(NoOpPlugin(), "identity-for-test")
    try:
        api.submit(ws, samples=flipped)
        summary = api.run(ws, prefect=False)
    finally:
        unregister_plugin("identity-for-test")
    certificate = json.loads((ws.runs_dir / summary["run_id"] / "certificate.json").read_text())
    first, noise, fake, last = certificate["rungs"]
    for rung, method in ((first, "noop"), (noise, "tiny-noise"), (fake, "fake-exact")):
        assert rung["method"] == method and rung["status"] == "fail", rung
        assert rung["gates"]["retrain_equivalence"] == "fail", rung
    assert last["method"] == "retrain" and last["status"] == "pass"
    assert summary["certificate_status"] == "certified"
    assert certificate["grounds"] == "certified — retrained without the data (exact)"
    refs = certificate["samples_used"]["gates"]["reference_models"]
    print("reference models:", refs)  # the measured cost, for the README
    # The out references predict the true class, not the flipped label the parent fit.
    from unlearnops.audit import references_dir

    assert len(list(references_dir(ws).glob("*/*.pt"))) == 3
