"""The classic unlearning methods (issue 5): registration, what each one changes, the shared early stop,
utility guard, epoch-level checks and time budget, class forgetting (their conformance is run by
test_plugins for every built-in)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.plugin_manager import load_plugins
from unlearnops.plugins.boundary import BoundaryShrink
from unlearnops.plugins.ft import FT
from unlearnops.plugins.ga import GA
from unlearnops.plugins.rl import RL
from unlearnops.plugins.salun import SalUn
from unlearnops.plugins.scrub import SCRUB
from unlearnops.plugins.ssd import SSD
from unlearnops.testing import check_method, tiny_task

REGISTERED = ("ft", "ga", "l1sparse", "scrub", "ssd", "rl", "salun", "boundary", "sisa", "upcore")


def _run(method, task=None, **overrides):
    task = task or tiny_task()
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_method(method, task.model, task.inputs, parse_config(method, overrides), torch.device("cpu")), task
    finally:
        torch.set_num_threads(with_threads)


def test_zoo_methods_are_builtin_with_sources():
    sources = load_plugins().sources
    for name in REGISTERED:
        assert sources[name] == "built-in"


def test_rl_with_per_step_checks_is_stopped_by_its_first_dip():
    """Why RL checks per epoch: the forget pass knocks held-out accuracy down before the retain pass brings it
    back, so the per-step guard stops it early (and the conformance check fails), the epoch check does not."""
    per_step = check_method(RL(), {"check": "step"})
    assert [c.name for c in per_step.failures] == ["forgets"], str(per_step)
    result, _ = _run(RL())
    d = result.details
    assert d["target_reached_at_step"] is not None and d["checks_over_utility_budget"] >= 1
    assert d["forget_accuracy_after"] <= d["holdout_accuracy_after"]


def test_epoch_checks_keep_the_best_state_within_the_utility_budget():
    # lr 0.01 for 2 epochs never reaches the target within the budget: the original weights come back.
    result, task = _run(RL(), lr=0.01, epochs=2)
    assert result.details["target_reached_at_step"] is None
    assert result.details["restored_checkpoint_of_step"] == 0
    assert result.changed_parameters == {}


def test_boundary_relabels_only_samples_whose_neighbour_crossed():
    from unlearnops.plugins.boundary import neighbour_labels
    from unlearnops.plugins.zoo_common import Data

    task = tiny_task()
    forget = Data(task.inputs.forget, "cpu")
    epsilon = 0.15 * forget.x.std(0, keepdim=True)  # the default: 0.15 feature standard deviations
    keep, crossed = neighbour_labels(task.model, forget, epsilon, "keep")
    nearest, crossed_again = neighbour_labels(task.model, forget, epsilon, "nearest")
    assert crossed == crossed_again and 0 < crossed < len(forget)
    assert int((keep != forget.y).sum()) == crossed       # the reference: own label unless the step crossed
    assert bool((nearest != forget.y).all())              # class forgetting: always another class
    result, _ = _run(BoundaryShrink())
    assert result.details["uncrossed"] == "keep" and result.details["neighbours_across_boundary"] == crossed


def test_salun_changes_only_masked_weights():
    result, task = _run(SalUn(), sparsity=0.05, per_tensor=True)
    kept = result.details["mask_kept_share_per_tensor"]
    assert result.details["mask_kept_share"] <= 0.06
    original = dict(task.model.named_parameters())
    for name, p in result.model.named_parameters():
        moved = (p.detach() != original[name].detach()).float().mean().item()
        assert moved <= kept[name] + 1e-9, name


def test_ssd_only_dampens():
    result, task = _run(SSD())
    original = dict(task.model.named_parameters())
    assert result.details["selected_weights"] > 0
    for name, p in result.model.named_parameters():
        old, new = original[name].detach(), p.detach()
        assert torch.all(new.abs() <= old.abs() + 1e-12), name
        assert torch.all((new == 0) | (torch.sign(new) == torch.sign(old))), name


def test_ssd_search_bisects_to_the_edge_of_the_utility_budget():
    """Short of the target, SSD keeps the least selective alpha within the utility budget, found between the
    grid's last good alpha and the first bad one (not one grid step ×0.8 away from it)."""
    result, _ = _run(SSD())
    trace, alpha = result.details["search"], result.details["alpha"]
    kept = next(e for e in trace if e["alpha"] == alpha)
    assert kept["utility_ok"] and not any(e["reached"] for e in trace)
    broke = [e["alpha"] for e in trace if not e["utility_ok"]]
    assert broke and all(a < alpha for a in broke)
    assert not [e for e in trace if e["alpha"] < alpha and e["utility_ok"]]
    assert max(broke) / alpha > 0.8 ** (1 / 2 ** 3)  # four bisections: within a 16th of a grid step
    coarse, _ = _run(SSD(), bisect_steps=0)
    assert coarse.details["alpha"] > alpha
    assert coarse.details["selected_weights"] < result.details["selected_weights"]


def test_ga_stops_at_the_held_out_level_or_the_utility_guard():
    result, _ = _run(GA())
    d = result.details
    assert d["target_reached_at_step"] is not None or d["utility_guard_stopped_at_step"] is not None
    assert d["forget_accuracy_after"] < d["forget_accuracy_before"]
    # Never far below the held-out level: it stops when it gets there.
    assert d["forget_accuracy_after"] >= d["holdout_accuracy_after"] - 0.05
    assert d["holdout_accuracy_before"] - d["holdout_accuracy_after"] <= 0.1 * 0.8 + 1e-9


def test_time_budget_stops_training_and_is_reported():
    result, _ = _run(FT(), max_seconds=1e-6, stop_at_target=False, utility_guard=False)
    assert result.details["stopped_by_time_budget"] is True
    assert result.details["steps"] == 1


def test_class_forgetting_targets_zero_accuracy_on_the_class():
    task = tiny_task()
    inputs = task.inputs
    forgotten = 0
    in_class = inputs.forget.labels == forgotten
    keep = inputs.retain.labels != forgotten
    task.inputs = UnlearnInputs(
        forget=Samples(inputs.forget.features[in_class], inputs.forget.labels[in_class]),
        retain=Samples(inputs.retain.features[keep], inputs.retain.labels[keep]),
        holdout=inputs.holdout,
        utility_max_drop=0.1,
    )
    result, _ = _run(SCRUB(), task=task)
    assert result.details["target_mode"] == "class"
    assert result.details["target_forget_accuracy"] == 0.0
    assert result.details["forget_accuracy_after"] < result.details["forget_accuracy_before"]
    boundary, _ = _run(BoundaryShrink(), task=task)
    assert boundary.details["uncrossed"] == "nearest"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name", REGISTERED)
def test_zoo_methods_run_on_the_gpu(name):
    report = check_method(load_plugins().get(name), device="cuda")
    assert {c.name: c.passed for c in report.checks}["result_and_device"], str(report)


def test_seeds_change_the_random_methods():
    a, _ = _run(GA(), seed=0)
    b, _ = _run(GA(), seed=1)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert np.isfinite(a.details["forget_accuracy_after"])


def test_upcore_prunes_representation_outliers_before_the_base_method():
    """Forget samples far from the rest in the model's hidden space are left out of the core set; the base
    method runs on the core only, and the result names what was pruned."""
    import dataclasses

    task = tiny_task()
    forget = task.inputs.forget
    features = forget.features.copy()
    ids = [f"f-{i}" for i in range(len(forget))]
    outliers = [0, 1, 2]
    features[outliers] *= 25.0  # far outside the data: extreme activations before the last layer
    task.inputs = dataclasses.replace(task.inputs, forget=Samples(features, forget.labels, ids))
    upcore = load_plugins().get("upcore")
    result, _ = _run(upcore, task, contamination=0.1)
    details = result.details
    assert {ids[i] for i in outliers} <= set(details["pruned_ids"])
    assert details["core"] + details["pruned"] == len(forget) and details["base"] == "scrub"
    assert details["base_details"]  # the base method's own account is kept
    with pytest.raises(Exception, match="itself"):
        _run(upcore, tiny_task(), base="upcore")


@pytest.mark.parametrize("every", [1, 8])
def test_guard_checked_every_k_steps_rolls_back_to_the_last_passing_check(every):
    """GA at a learning rate that wrecks the model within a few steps: checked every k steps, the guard trips
    at a multiple of k (or a pass end) and restores the state of the last passing check, so the model kept
    is one that passed — within the utility budget, never collapsed."""
    from unlearnops.plugins.zoo_common import Target

    passed: list[dict] = []
    stop = Target.stop

    def spy(self, model, step):
        stopped = stop(self, model, step)
        if self.guard_at is None:
            passed.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return stopped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Target, "stop", spy)
        result, task = _run(GA(), lr=0.05, batch_size=4, check_every=every, stop_at_target=False)
    d = result.details
    assert d["utility_guard_stopped_at_step"] is not None and d["utility_guard_stopped_at_step"] > 0
    per_pass = -(-len(task.inputs.forget.labels) // 4)  # steps in one pass over the forget set
    assert d["utility_guard_stopped_at_step"] % every == 0 or d["utility_guard_stopped_at_step"] % per_pass == 0
    assert d["holdout_accuracy_before"] - d["holdout_accuracy_after"] <= 0.1 * 0.8 + 1e-9
    kept = result.model.state_dict()
    assert passed and all(torch.equal(kept[k], passed[-1][k]) for k in kept)


def test_a_state_already_measured_is_not_measured_again_and_any_edit_is_seen():
    """The check before the first step and the report after the last check reuse the numbers of an equal
    state (weights compared exactly), so a run takes two held-out and two forget-set passes fewer; an edit the
    autograd version counter does not see (through ``.data``) is still a new state, measured afresh."""
    import unlearnops.plugins.zoo_common as zoo

    task = tiny_task()
    calls = []
    accuracy = zoo.accuracy

    def counting(model, data, *args, **kwargs):
        calls.append(data)
        return accuracy(model, data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zoo, "accuracy", counting)
        config = parse_config(GA(), {})
        forget = zoo.Data(task.inputs.forget, torch.device("cpu"))
        target = zoo.Target(task.model, task.inputs, forget, config, torch.device("cpu"))
        assert len(calls) == 2  # held-out and forget set, once
        target.stop(task.model, 0)
        assert len(calls) == 2 and target.details(task.model)["forget_accuracy_after"] == target.forget_accuracy_before
        assert len(calls) == 2
        with torch.no_grad():
            for p in task.model.parameters():
                p.data.mul_(0.0)  # every output equal: the argmax is class 0 for every sample
        after = target.details(task.model)
    assert len(calls) == 4
    expected = float(np.mean(np.asarray(task.inputs.forget.labels) == 0))
    assert after["forget_accuracy_after"] == pytest.approx(expected)
    assert after["forget_accuracy_after"] != target.forget_accuracy_before
