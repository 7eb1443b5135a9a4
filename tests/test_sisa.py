"""SISA (sharded exact unlearning): stable shards, only the shards that held forgotten samples are retrained,
the result is exactly the ensemble trained without them, single networks are refused, ONNX export works."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unlearnops.export import export_onnx
from unlearnops.method_runner import Samples, parse_config, run_method
from unlearnops.plugin_manager import PluginError, load_plugins
from unlearnops.plugins.sisa import SISA, ShardedEnsemble, shard_assignment, shard_of, train_sharded
from unlearnops.testing import tiny_task


@pytest.fixture(scope="module")
def task():
    return SISA.conformance_task(0)


def _single_shard_request(task, shard: int, n: int = 5):
    """Forget ``n`` training samples that all live in ``shard``."""
    inputs = task.inputs
    train = Samples(np.concatenate([inputs.forget.features, inputs.retain.features]),
                    np.concatenate([inputs.forget.labels, inputs.retain.labels]),
                    inputs.forget.sample_ids + inputs.retain.sample_ids)
    shards = shard_assignment(train.sample_ids, task.model.n_shards)
    chosen = np.flatnonzero(shards == shard)[:n]
    mask = np.zeros(len(train), dtype=bool)
    mask[chosen] = True

    def pick(m):
        return Samples(train.features[m], train.labels[m], [s for s, k in zip(train.sample_ids, m) if k])

    forget, retain = pick(mask), pick(~mask)
    return dataclasses.replace(inputs, forget=forget, retain=retain, retain_full=retain)


def _run(model, inputs, **config):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_method(SISA(), model, inputs, parse_config(SISA(), config), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)


def test_shards_are_stable_per_sample_id():
    ids = [f"sample-{i}" for i in range(1000)]
    shards = shard_assignment(ids, 5)
    assert np.array_equal(shard_assignment(ids[:10], 5), shards[:10])  # independent of the other samples
    assert shard_of("sample-3", 5) == shards[3] == shard_of("sample-3", 5)
    assert np.bincount(shards, minlength=5).min() > 150  # roughly balanced (200 each on average)


def test_only_the_affected_shard_is_retrained_and_the_result_is_exact(task):
    inputs = _single_shard_request(task, shard=1)
    result = _run(task.model, inputs)
    assert result.details["retrained_shards"] == [1]
    assert result.details["kept_shards"] == [0, 2, 3]
    parent, after = task.model.state_dict(), result.model.state_dict()
    for key in parent:
        if key.startswith("members.1."):
            assert not torch.equal(parent[key], after[key]), key
        else:
            assert torch.equal(parent[key], after[key]), key  # bit-identical
    assert set(result.changed_parameters) == {k for k in parent if k.startswith("members.1.")}
    # Exactly the ensemble trained from scratch on the remaining data, shard by shard.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scratch = train_sharded(inputs.model_factory, inputs.retain_full, task.model.n_shards,
                                train_params=inputs.train_params)
    finally:
        torch.set_num_threads(threads)
    for key, value in scratch.state_dict().items():
        assert torch.equal(value, after[key]), key
    # And the forgotten samples' shard no longer holds them.
    assert result.details["retained_per_shard"][1] == int((shard_assignment(inputs.retain.sample_ids, 4) == 1).sum())


def test_a_single_network_is_refused_and_ids_are_required(task):
    plain = tiny_task()
    with pytest.raises(PluginError, match=r"'sisa' handles model families \['ShardedEnsemble'\], not Sequential"):
        _run(plain.model, plain.inputs)
    no_ids = dataclasses.replace(task.inputs, forget=Samples(task.inputs.forget.features, task.inputs.forget.labels))
    with pytest.raises(PluginError, match="needs the sample id of every forgotten sample"):
        _run(task.model, no_ids)


def test_registered_as_exact_with_its_family():
    method = load_plugins().get("sisa")
    assert method.exact is True and method.model_families == ("ShardedEnsemble",)


def test_the_ensemble_exports_to_onnx_with_parity(task, tmp_path):
    sample = task.inputs.holdout.features[:64]
    exported = export_onnx(task.model, sample, tmp_path / "sisa.onnx")
    assert exported.max_abs_diff < 1e-4
    # Its output are logits: softmax gives the constituents' mean probability.
    x = torch.as_tensor(sample[:8])
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in task.model.members]).mean(0)
        assert torch.allclose(torch.softmax(task.model(x), 1), mean, atol=1e-6)


def test_an_empty_ensemble_is_an_error():
    with pytest.raises(ValueError, match="at least one constituent"):
        ShardedEnsemble([])


def test_training_function_gets_sample_ids_only_when_it_names_them():
    from unlearnops.method_runner import call_training

    seen = {}

    def plain(model, features, labels, *, device, progress, **params):
        seen["plain"] = sorted(params)
        return model

    def by_id(model, features, labels, *, sample_ids, device, progress, **params):
        seen["by_id"] = sample_ids
        return model

    samples = Samples(np.zeros((2, 3), np.float32), np.array([0, 1]), ["a", "b"])
    net = torch.nn.Linear(3, 2)
    call_training(plain, net, samples, epochs=1)
    call_training(by_id, net, samples, epochs=1)
    assert seen == {"plain": ["epochs"], "by_id": ["a", "b"]}
    with pytest.raises(ValueError, match="takes sample_ids"):
        call_training(by_id, net, Samples(samples.features, samples.labels), epochs=1)


def test_reinitialized_refuses_parameters_that_no_layer_redraws():
    from unlearnops.method_runner import reinitialized

    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    fresh = reinitialized(plain)
    assert all(not torch.equal(a, b) for a, b in zip(plain.parameters(), fresh.parameters()))

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.scale = torch.nn.Parameter(torch.full((2,), 3.0))  # trained, and no reset_parameters

    with pytest.raises(ValueError, match="scale"):
        reinitialized(Scaled())
