"""Plugin registry and the single-layer single-gradient method on a tiny task."""

import copy

import numpy as np
import pytest
import torch
from pydantic import BaseModel
from torch import nn

from unlearnops.method_runner import Samples, UnlearnInputs, UnlearnResult, parse_config, run_method
from unlearnops.model import seed_everything, train_model
from unlearnops.plugin import hookimpl
from unlearnops.plugin_manager import PluginError, load_plugins, register_plugin, unregister_plugin
from unlearnops.plugins.slug import pareto_front


def test_builtin_slug_is_registered_like_a_plugin():
    registry = load_plugins()
    assert registry.sources["slug"] == "built-in"
    slug = registry.get("slug")
    assert slug.needs_retain and slug.supports_gpu


def test_bad_config_names_the_field():
    slug = load_plugins().get("slug")
    with pytest.raises(PluginError, match="initial_step"):
        parse_config(slug, {"initial_step": "-1"})
    with pytest.raises(PluginError, match="no_such_option"):
        parse_config(slug, {"no_such_option": "1"})
    with pytest.raises(PluginError, match="unknown unlearning method 'nope'"):
        load_plugins().get("nope")


def test_pareto_front():
    importance = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 2.5}
    alignment = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.95}
    assert pareto_front(importance, alignment) == ["a", "b"]


def _toy_task(seed=0):
    """Two Gaussian blobs; the forget set is 20 training points with flipped labels (memorized)."""
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(-1, 1, (300, 8)), rng.normal(1, 1, (300, 8))].astype(np.float32)
    y = np.r_[np.zeros(300), np.ones(300)].astype(np.int64)
    order = rng.permutation(600)
    x, y = x[order], y[order]
    train, holdout = slice(0, 400), slice(400, 600)
    y_train = y[train].copy()
    y_train[:20] = 1 - y_train[:20]
    return x[train], y_train, x[holdout], y[holdout]


def _mlp():
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


@pytest.fixture(scope="module")
def toy():
    x, y, xh, yh = _toy_task()
    model = train_model(_mlp(), x, y, epochs=150, batch_size=64, lr=3e-3, seed=0)
    inputs = UnlearnInputs(Samples(x[:20], y[:20]), Samples(x[20:], y[20:]), Samples(xh, yh), utility_max_drop=0.1)
    return model, inputs


def _accuracy(model, samples):
    with torch.no_grad():
        return float((model(torch.as_tensor(samples.features)).argmax(1).numpy() == samples.labels).mean())


def test_slug_changes_one_layer_from_the_original_and_forgets(toy):
    model, inputs = toy
    assert _accuracy(model, inputs.forget) > 0.9  # the flipped labels were memorized
    slug = load_plugins().get("slug")
    config = parse_config(slug, {"max_step": 16})
    result = run_method(slug, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    assert len(result.changed_parameters) == 1
    (name,) = result.changed_parameters
    before, after = dict(model.named_parameters()), dict(result.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == [name]
    relative = float((after[name] - before[name]).norm() / before[name].norm())
    assert relative == pytest.approx(result.changed_parameters[name], rel=1e-4)
    assert _accuracy(result.model, inputs.forget) < _accuracy(model, inputs.forget)
    assert result.details["candidates"] and all("importance" in c for c in result.details["candidates"])
    again = run_method(slug, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    assert torch.equal(dict(again.model.named_parameters())[name], after[name])  # deterministic


class _Broken:
    name = "broken"
    version = "0"
    needs_retain = False
    supports_gpu = False

    class Config(BaseModel):
        seed: int = 0

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def unlearn(self, model, inputs, config, device):
        if self.behaviour == "raise":
            raise RuntimeError("kaboom")
        if self.behaviour == "garbage":
            return {"model": model}
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return UnlearnResult(model=model, method=self.name, changed_parameters={}, seconds=0.0)


@pytest.mark.parametrize("behaviour, message", [("raise", "kaboom"), ("garbage", "not an UnlearnResult"),
                                                ("nan", "non-finite")])
def test_misbehaving_method_is_reported_by_name(toy, behaviour, message):
    model, inputs = toy
    method = _Broken(behaviour)
    with pytest.raises(PluginError, match=f"method 'broken'.*{message}"):
        run_method(method, copy.deepcopy(model), inputs, method.Config(), torch.device("cpu"))


def test_plugin_that_raises_at_registration_is_reported_not_fatal():
    class Plugin:
        @hookimpl
        def register_methods(self, register):
            raise ImportError("missing dependency")

    register_plugin(Plugin(), "bad-plugin")
    try:
        registry = load_plugins()
    finally:
        unregister_plugin("bad-plugin")
    assert "slug" in registry.methods
    assert any("bad-plugin" in e and "missing dependency" in e for e in registry.errors)
