"""The single-layer single-gradient fast path: step search, class target, joint multi-request update."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import evaluate, seed_everything, train_model
from unlearnops.plugin_manager import load_plugins


def _blobs(n_per_class, centers, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 1.0, (n_per_class, 8)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(len(centers)), n_per_class).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


def _mlp(n_classes):
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_classes))


CENTERS = [np.full(8, -2.0), np.full(8, 0.0), np.full(8, 2.0)]


@pytest.fixture(scope="module")
def class_task():
    x, y = _blobs(200, CENTERS, seed=0)
    xh, yh = _blobs(100, CENTERS, seed=1)
    model = train_model(_mlp(3), x, y, epochs=60, batch_size=64, lr=3e-3, seed=0)
    forget = y == 2
    inputs = UnlearnInputs(Samples(x[forget], y[forget]), Samples(x[~forget], y[~forget]), Samples(xh, yh),
                           utility_max_drop=0.1)
    return model, inputs


def _slug(**overrides):
    method = load_plugins().get("slug")
    return method, parse_config(method, overrides)


def test_class_forgetting_reaches_chance_and_keeps_the_other_classes(class_task):
    model, inputs = class_task
    method, config = _slug()
    result = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    assert result.details["mode"] == "class" and result.details["target_reached"]
    holdout = inputs.holdout
    in_class = holdout.labels == 2
    assert evaluate(result.model, holdout.features[in_class], holdout.labels[in_class]).accuracy <= 1 / 3
    before = evaluate(model, holdout.features[~in_class], holdout.labels[~in_class]).accuracy
    after = evaluate(result.model, holdout.features[~in_class], holdout.labels[~in_class]).accuracy
    assert before - after <= 0.05  # within the search's utility budget (half of 0.1)


def test_step_search_is_bounded_and_doubles_then_narrows(class_task):
    """λ doubles along the grid λ₀·2^k (after one probe of the grid's middle when a candidate has a best
    layer to beat), then the bracket below the first stopping point is bisected; every step stays within
    (0, max_step] and the chosen step is the smallest that reached the target with utility intact."""
    model, inputs = class_task
    method, config = _slug(max_step=2.0, bisect_steps=4)
    result = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    (group,) = result.details["groups"]
    grid_points = int(np.log2(config.max_step / config.initial_step)) + 1
    for position, candidate in enumerate(group["candidates"]):
        steps = [e["step"] for e in candidate["trace"]]
        assert all(0 < s <= config.max_step for s in steps)
        on_grid = [s for s in steps if np.isclose(np.log2(s / config.initial_step) % 1, 0)]
        middle = config.initial_step * 2 ** (grid_points // 2)
        on_grid = [s for i, s in enumerate(on_grid) if i == 0 or s != on_grid[i - 1]]  # a re-scored step once
        doubling = on_grid[1:] if on_grid and np.isclose(on_grid[0], middle) else on_grid
        assert doubling == sorted(doubling)
        assert len(steps) <= grid_points + 2 + config.bisect_steps
        chosen = candidate["chosen"]
        if chosen is not None and chosen["reached"]:
            # The chosen step is the smallest traced step that reached the target with utility intact.
            ok = [e["step"] for e in candidate["trace"] if e["reached"] and e["utility_ok"]]
            assert chosen["step"] == min(ok)


def test_original_model_is_left_untouched(class_task):
    model, inputs = class_task
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method, config = _slug()
    run_method(method, model, inputs, config, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_already_at_the_target_is_left_as_it_is(class_task):
    """Training points given labels the model never learned (a mislabeled request the model did not fit):
    forget accuracy and confidence are already below the held-out level, so the smallest step reaching
    the target is no step — nothing is searched and no weight changes."""
    model, inputs = class_task
    x, y = inputs.retain.features, inputs.retain.labels
    wrong = (y[:20] + 1) % 2  # the retain data holds classes 0 and 1 only: one of them, not the true one
    request = UnlearnInputs(Samples(x[:20], wrong), Samples(x[20:], y[20:]), inputs.holdout,
                            utility_max_drop=0.1)
    method, config = _slug()
    result = run_method(method, copy.deepcopy(model), request, config, torch.device("cpu"))
    (group,) = result.details["groups"]
    assert result.details["mode"] == "sample" and result.details["target_reached"]
    assert group["already_at_target"]["reached"] and group["already_at_target"]["forget_accuracy"] == 0.0
    assert group["candidates"] == [] and group["chosen_layer"] is None
    assert result.changed_parameters == {}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.model.state_dict().values()))


@pytest.fixture(scope="module")
def two_requests():
    """Two requests, each a group of memorized label-flipped points in a different cluster."""
    x, y = _blobs(200, CENTERS[:2], seed=2)
    xh, yh = _blobs(100, CENTERS[:2], seed=3)
    flipped = y.copy()
    group_a = np.flatnonzero(y == 0)[:12]
    group_b = np.flatnonzero(y == 1)[:12]
    flipped[group_a], flipped[group_b] = 1, 0
    model = train_model(_mlp(2), x, flipped, epochs=300, batch_size=64, lr=3e-3, seed=0)
    forget_idx = np.r_[group_a, group_b]
    keep = np.ones(len(y), dtype=bool)
    keep[forget_idx] = False
    masks = [np.r_[np.ones(12), np.zeros(12)].astype(bool), np.r_[np.zeros(12), np.ones(12)].astype(bool)]
    inputs = UnlearnInputs(Samples(x[forget_idx], flipped[forget_idx]), Samples(x[keep], flipped[keep]),
                           Samples(xh, yh), utility_max_drop=0.1, forget_groups=masks)
    return model, inputs


def test_joint_update_applies_one_step_per_request_on_the_original(two_requests):
    model, inputs = two_requests
    assert evaluate(model, inputs.forget.features, inputs.forget.labels).accuracy > 0.9  # memorized
    method, joint_config = _slug(max_step=16)
    joint = run_method(method, copy.deepcopy(model), inputs, joint_config, torch.device("cpu"))
    assert joint.details["joint_groups"] == 2 and len(joint.details["groups"]) == 2
    assert all(g["n_forget"] == 12 for g in joint.details["groups"])
    assert 1 <= len(joint.changed_parameters) <= 2
    merged = run_method(method, copy.deepcopy(model), inputs, parse_config(method, {"max_step": 16, "joint": False}),
                        torch.device("cpu"))
    assert merged.details["joint_groups"] == 1 and len(merged.changed_parameters) == 1
    # Each update ascends the forget loss of its own group (accuracy may not move: the fast path cannot
    # always undo memorized points within the utility budget, which is what the escalation ladder is for).
    before = evaluate(model, inputs.forget.features, inputs.forget.labels).loss
    for result in (joint, merged):
        after = evaluate(result.model, inputs.forget.features, inputs.forget.labels).loss
        assert after.mean() > before.mean()
    for mask in inputs.forget_groups:
        after = evaluate(joint.model, inputs.forget.features[mask], inputs.forget.labels[mask]).loss
        assert after.mean() > before[mask].mean()


def test_log_grid_search_and_off_front_candidates(class_task):
    model, inputs = class_task
    method, config = _slug(search="log-grid", grid_points=8, bisect_steps=3, extra_candidates=1)
    result = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    (group,) = result.details["groups"]
    tried = [c["layer"] for c in group["candidates"]]
    off_front = [name for name in tried if name not in group["front"]]
    assert len(off_front) == min(1, len(group["layers"]) - len(group["front"]))
    for candidate in group["candidates"]:
        steps = [e["step"] for e in candidate["trace"]]
        assert np.allclose(steps[:8], np.geomspace(config.initial_step, config.max_step, 8))
        assert len(steps) <= 8 + config.bisect_steps
        ok = [e["step"] for e in candidate["trace"] if e["reached"] and e["utility_ok"]]
        if ok:
            assert candidate["chosen"]["step"] == min(ok)
    assert result.details["target_reached"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU parity not run")
def test_cpu_and_gpu_choose_the_same_layer_and_step(class_task):
    model, inputs = class_task
    method, config = _slug()
    cpu = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
    gpu = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cuda"))
    assert gpu.changed_parameters.keys() == cpu.changed_parameters.keys()
    for name in cpu.changed_parameters:
        assert gpu.changed_parameters[name] == pytest.approx(cpu.changed_parameters[name], rel=1e-3)
    for (n, p_cpu), (_, p_gpu) in zip(cpu.model.named_parameters(), gpu.model.named_parameters()):
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("factory, shape", [("SmallCNN", (1, 28, 28)), ("ResNetSmall", (1, 28, 28)),
                                            ("TabularMLP", (64,))])
def test_cached_activations_reproduce_the_edited_model_exactly(factory, shape):
    """Each step evaluates only the layers that depend on the edited tensor, on cached inputs (skip
    connections included): the outputs must equal a whole forward pass of the edited model."""
    import unlearnops.model as models
    from unlearnops.plugins.slug import _Tensors, _tail_for

    seed_everything(0)
    model = getattr(models, factory)().eval()
    rng = np.random.default_rng(0)
    data = _Tensors(Samples(rng.random((70, *shape), dtype=np.float32), rng.integers(0, 10, 70)), "cpu")
    for name, param in model.named_parameters():
        if param.dim() < 2:
            continue
        tail = _tail_for(model, name, [data], batch_size=32)
        assert tail is not None, name
        with torch.no_grad():
            original = param.detach().clone()
            param.add_(0.3 * torch.randn_like(param))
            cached = torch.cat([tail(data, start, start + 32) for start in range(0, 70, 32)])
            assert torch.allclose(cached, model(data.x), atol=1e-5), name
            param.copy_(original)


def test_cached_and_uncached_search_agree(class_task):
    model, inputs = class_task
    results = {}
    for cache in (True, False):  # every candidate searched in full, so that the traces can be compared
        method, config = _slug(cache_activations=cache, prune_candidates=False)
        result = run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
        results[cache] = result
        assert all(c["cached_activations"] is cache for c in result.details["candidates"])
    with_cache, without = results[True].details, results[False].details
    assert with_cache["chosen_layer"] == without["chosen_layer"]
    for a, b in zip(with_cache["candidates"], without["candidates"]):
        assert [e["step"] for e in a["trace"]] == [e["step"] for e in b["trace"]]
        assert np.allclose([e["utility_drop"] for e in a["trace"]], [e["utility_drop"] for e in b["trace"]])


def test_class_without_held_out_samples_is_judged_on_the_forget_set(class_task):
    """No held-out sample of the forgotten class: the class target is read on the forget set, and the
    empty group is cached (and never evaluated) like any other."""
    model, inputs = class_task
    keep = inputs.holdout.labels != 2
    no_class = UnlearnInputs(inputs.forget, inputs.retain,
                             Samples(inputs.holdout.features[keep], inputs.holdout.labels[keep]),
                             utility_max_drop=inputs.utility_max_drop)
    method, config = _slug()
    result = run_method(method, copy.deepcopy(model), no_class, config, torch.device("cpu"))
    assert result.details["mode"] == "class"
    assert all(c["cached_activations"] for c in result.details["candidates"])
    assert result.details["target_reached"]
    assert evaluate(result.model, inputs.forget.features, inputs.forget.labels).accuracy <= 1 / 3


def test_rank_auc_equals_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from unlearnops.plugins.slug import _auc

    rng = np.random.default_rng(0)
    for n_pos, n_neg, levels in ((30, 70, 5), (200, 400, 1000), (1, 9, 2)):
        pos, neg = rng.integers(0, levels, n_pos).astype(float), rng.integers(0, levels, n_neg).astype(float)
        expected = roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_neg)], np.r_[pos, neg])
        assert _auc(pos, neg) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("factory", ["SmallCNN", "ResNetSmall"])
def test_steps_along_a_direction_reproduce_the_edited_model(factory):
    """For a convolution or linear layer the step W₀ + c·D is evaluated from z(W₀) + c·op(x, D) on the
    cached input: the outputs must equal a whole forward pass with the weight actually moved."""
    import unlearnops.model as models
    from unlearnops.plugins.slug import _Tensors, _tails_for

    seed_everything(0)
    model = getattr(models, factory)().eval()
    rng = np.random.default_rng(1)
    data = _Tensors(Samples(rng.random((40, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 40)), "cpu")
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    tails, outputs = _tails_for(model, names, [data], batch_size=16)
    with torch.no_grad():
        assert torch.allclose(outputs[id(data)], model(data.x), atol=1e-5)
        linear = 0
        for name, param in model.named_parameters():
            if name not in tails:
                continue
            tail = tails[name]
            assert tail is not None, name
            direction = torch.randn_like(param)
            direction /= direction.norm()
            tail.use_direction(direction)
            linear += tail.linear is not None
            original = param.detach().clone()
            c = 0.2 * float(original.norm())
            param.add_(c * direction)
            cached = torch.cat([tail(data, s, s + 16, c) for s in range(0, 40, 16)])
            assert torch.allclose(cached, model(data.x), atol=1e-4), name
            param.copy_(original)
            tail.use_direction(None)
        assert linear == len(names)  # every weight here is a conv or linear layer called once


@pytest.mark.parametrize("task", ["class_task", "two_requests"])
def test_candidates_that_cannot_win_stop_early_without_changing_the_choice(task, request):
    """Cheapest candidate first, and a candidate's search stops once a completely scored step shows it
    cannot beat the best layer so far: the same layer and step as searching every candidate in full (the
    saving is in the expensive layers' evaluations; on the CNN see README "Fast path against its floor")."""
    model, inputs = request.getfixturevalue(task)
    method, full = _slug(prune_candidates=False, max_step=16)
    _, pruned = _slug(max_step=16)
    results = {name: run_method(method, copy.deepcopy(model), inputs, config, torch.device("cpu"))
               for name, config in (("full", full), ("pruned", pruned))}
    for a, b in zip(results["full"].details["groups"], results["pruned"].details["groups"]):
        assert a["chosen_layer"] == b["chosen_layer"]
        chosen = {g["layer"]: (g["chosen"] or {}).get("step") for g in (a, b) for g in g["candidates"]
                  if g["layer"] == a["chosen_layer"]}
        assert len(set(chosen.values())) == 1
    for (name, p_full), (_, p_pruned) in zip(results["full"].model.named_parameters(),
                                             results["pruned"].model.named_parameters()):
        assert torch.equal(p_full, p_pruned), name
    assert not any(c["stopped_early"] for g in results["full"].details["groups"] for c in g["candidates"])
    if task == "class_task":  # the first layer is out of reach after one completely scored step
        assert any(c["stopped_early"] for g in results["pruned"].details["groups"] for c in g["candidates"])


@pytest.mark.parametrize("factory", ["SmallCNN", "ResNetSmall", "inplace"])
def test_gradient_pass_records_what_a_recording_pass_would(factory, monkeypatch):
    """The forget set's gradient pass keeps the values the search reads (so that no second pass over the
    forget set is needed): the same values as a recording pass of their own, also when a later in-place
    operation (``ReLU(inplace=True)``) overwrites a kept value; past ``RECORDING_BYTES`` nothing is kept."""
    import unlearnops.model as models
    from unlearnops.plugins import slug

    seed_everything(0)
    model = (torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 26 * 26, 10))
             if factory == "inplace" else getattr(models, factory)()).eval()
    rng = np.random.default_rng(0)
    data = slug._Tensors(Samples(rng.random((40, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 40)), "cpu")
    params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    traced = slug._trace(model)
    assert slug._writes_in_place(traced) is (factory == "inplace")
    wanted = slug._search_reads(traced, params)
    grads, kept = slug._gradients(model, data, params, 16, traced, wanted)
    plain, nothing = slug._gradients(model, data, params, 16)
    assert nothing is None and all(torch.equal(grads[n], plain[n]) for n in params)
    recorded = slug._record(traced, wanted, data, 16)
    assert kept.keys() == recorded.keys() and len(kept) > len(params)

    class Copying(torch.fx.Interpreter):  # each value copied as soon as it is computed
        def run_node(self, n):
            value = super().run_node(n)
            seen[n] = value.clone() if isinstance(value, torch.Tensor) else value
            return value

    seen = {}
    with torch.no_grad():
        Copying(traced).run(data.x)
    output = next(n for n in traced.graph.nodes if n.op == "output")
    for node in kept:
        expected = seen[output if node is output else node]
        torch.testing.assert_close(kept[node], expected, msg=node.name, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(recorded[node], expected, msg=node.name, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(slug, "RECORDING_BYTES", 1024)
    assert slug._gradients(model, data, params, 16, traced, wanted)[1] is None


@pytest.mark.parametrize("factory", ["SmallCNN", "ResNetSmall"])
def test_steps_along_a_direction_reproduce_the_edited_model(factory):
    """Along a direction D a linear layer's or convolution's output is z(W₀) + c·op(x, D), both terms
    computed per chunk on first use: a step's outputs equal a whole forward pass with W₀ + c·D."""
    import unlearnops.model as models
    from unlearnops.plugins.slug import _Tensors, _tail_for

    seed_everything(0)
    model = getattr(models, factory)().eval()
    rng = np.random.default_rng(0)
    data = _Tensors(Samples(rng.random((70, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 70)), "cpu")
    linear_tails = 0
    for name, param in model.named_parameters():
        if param.dim() < 2:
            continue
        tail = _tail_for(model, name, [data], batch_size=32)
        if tail.linear is None:
            continue
        linear_tails += 1
        direction = torch.randn_like(param)
        direction /= direction.norm()
        tail.use_direction(direction)
        with torch.no_grad():
            original = param.detach().clone()
            for c in (0.0, 0.5 * float(original.norm()), 0.1):
                param.copy_(original + c * direction)
                stepped = torch.cat([tail(data, start, start + 32, c) for start in range(0, 70, 32)])
                assert torch.allclose(stepped, model(data.x), atol=1e-4), (name, c)
            param.copy_(original)
        tail.use_direction(None)
    assert linear_tails >= 2
