"""The conformance suite plugin authors run against their unlearning method, from pytest or a script::

    from unlearnops.plugin import assert_conformant
    from my_plugin import MyMethod

    def test_my_method_conforms():
        assert_conformant(MyMethod())

It runs the method the way the pipeline does (:func:`unlearnops.method_runner.run_method`) on a tiny real task —
an MLP that memorized its 600 training points of four overlapping Gaussian classes (training accuracy 1.0,
held-out about 0.7) — and checks that the method

* declares the contract (name, version, ``Config`` with ``seed``, needs, families, GPU support);
* returns a well-formed result with every parameter on the requested device (``result_and_device``);
* forgets: the gap between forget-set and held-out accuracy closes by at least half, without falling
  more than ``OVERSHOOT`` below held-out (over-forgetting is detectable too);
* keeps utility: test accuracy drops by at most the ``utility_max_drop`` it was given;
* is deterministic: the same seed gives bit-identical weights;
* leaves its inputs untouched: the caller's model and the sample arrays.

A method that changes nothing fails ``forgets``. Takes a few seconds on a CPU.

A method limited to other model families (``model_families``) can offer its own task of the same kind — a
model of its family that memorized its forget set — as ``conformance_task(seed) -> ConformanceTask``; the
checks are the same.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import evaluate, seed_everything, train_model
from unlearnops.plugin_manager import PluginError, contract_problems

#: Share of the forget/held-out accuracy gap a method must close.
FORGET_FRACTION = 0.5
#: Smallest forget/held-out accuracy gap a task must show before unlearning to measure forgetting.
MIN_GAP = 0.1
#: How far below held-out accuracy the forget accuracy may fall (further is over-forgetting).
OVERSHOOT = 0.15


@dataclass
class ConformanceTask:
    """A trained model that memorized its training set, the inputs a method gets, and a test split."""

    model: nn.Module
    inputs: UnlearnInputs
    test: Samples


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class ConformanceReport:
    method: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def __str__(self) -> str:
        lines = [f"conformance of method {self.method!r}: {'pass' if self.passed else 'FAIL'}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


@contextmanager
def _one_thread():
    """The same numbers on every machine, and fast for a tiny model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def conformance_mlp(n_features: int, n_classes: int) -> nn.Module:
    """An untrained model of the conformance task's architecture (a three-layer MLP)."""
    return nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_classes))


@functools.lru_cache(maxsize=4)
def _trained_task(seed: int) -> ConformanceTask:
    n_features, n_classes, separation = 16, 4, 2.0
    rng = np.random.default_rng(seed)
    means = rng.normal(0, separation / np.sqrt(n_features), (n_classes, n_features))

    def draw(n: int) -> Samples:
        labels = rng.integers(0, n_classes, n)
        features = (means[labels] + rng.normal(0, 1, (n, n_features))).astype(np.float32)
        return Samples(features, labels.astype(np.int64), [f"s{i}" for i in range(n)])

    train, holdout, test = draw(600), draw(1000), draw(2000)
    seed_everything(seed)
    with _one_thread():
        model = train_model(conformance_mlp(n_features, n_classes), train.features, train.labels, epochs=300,
                            batch_size=len(train), lr=1e-2, seed=seed)
    n_forget = 150
    forget = Samples(train.features[:n_forget], train.labels[:n_forget], train.sample_ids[:n_forget])
    retain = Samples(train.features[n_forget:], train.labels[n_forget:], train.sample_ids[n_forget:])
    return ConformanceTask(model, UnlearnInputs(forget, retain, holdout, utility_max_drop=0.1), test)


def tiny_task(seed: int = 0) -> ConformanceTask:
    """A fresh copy of the conformance task (trained once per process and seed)."""
    return copy.deepcopy(_trained_task(seed))


def _fingerprint(task: ConformanceTask) -> str:
    digest = hashlib.sha256()
    for _, tensor in sorted(task.model.state_dict().items()):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    for samples in (task.inputs.forget, task.inputs.retain, task.inputs.holdout):
        digest.update(np.ascontiguousarray(samples.features).tobytes())
        digest.update(np.ascontiguousarray(samples.labels).tobytes())
    return digest.hexdigest()


def _accuracies(model: nn.Module, task: ConformanceTask) -> dict[str, float]:
    parts = {"forget": task.inputs.forget, "holdout": task.inputs.holdout, "test": task.test}
    return {name: evaluate(model, s.features, s.labels).accuracy for name, s in parts.items()}


def check_method(method, config: dict[str, Any] | None = None, device: str = "cpu",
                 task: ConformanceTask | None = None) -> ConformanceReport:
    """Run every conformance check on ``method`` (with ``config`` overrides) and report each.

    ``task`` replaces the built-in tiny task (default: the method's own ``conformance_task(0)`` if it has
    one, for a method limited to other model families); its model must memorize the forget set (accuracy
    gap to held-out of at least ``MIN_GAP``), else ``ValueError``.
    """
    report = ConformanceReport(method=str(getattr(method, "name", method)))
    problems = contract_problems("method", method)
    if not problems:
        try:
            parsed = parse_config(method, config or {})
        except PluginError as exc:
            problems.append(str(exc))
    report.checks.append(Check("declaration", not problems, "; ".join(problems) or "contract attributes valid"))
    if problems:
        return report

    with _one_thread():
        task = task or (method.conformance_task(0) if hasattr(method, "conformance_task") else tiny_task())
        fingerprint = _fingerprint(task)
        target = torch.device(device)
        expected = target if target.type != "cuda" or method.supports_gpu else torch.device("cpu")
        runs = []
        for _ in range(2):
            try:
                runs.append(run_method(method, task.model, task.inputs, parsed, target))
            except PluginError as exc:
                report.checks.append(Check("result_and_device", False, str(exc)))
                return report
        first, second = runs
        report.checks.append(Check("result_and_device", True,
                                   f"UnlearnResult, parameters on {expected.type}, changed "
                                   f"{sorted(first.changed_parameters)} in {first.seconds:.2f} s"))

        before, after = _accuracies(task.model, task), _accuracies(first.model, task)
        report.metrics = {f"{k}_accuracy_before": v for k, v in before.items()}
        report.metrics.update({f"{k}_accuracy_after": v for k, v in after.items()})
        report.metrics["changed_parameters"] = first.changed_parameters
        report.metrics["seconds"] = first.seconds
        gap_before = before["forget"] - before["holdout"]
        gap_after = after["forget"] - after["holdout"]
        if gap_before < MIN_GAP:
            raise ValueError(f"the task's model does not memorize its forget set (gap {gap_before:.3f} < {MIN_GAP})")
        closed = 1 - gap_after / gap_before
        report.metrics["gap_closed"] = closed
        forgets = closed >= FORGET_FRACTION and gap_after >= -OVERSHOOT
        report.checks.append(Check(
            "forgets", forgets,
            f"forget accuracy {before['forget']:.3f} -> {after['forget']:.3f}, held-out {before['holdout']:.3f} -> "
            f"{after['holdout']:.3f}: closed {closed:.0%} of the gap (need >= {FORGET_FRACTION:.0%}, "
            f"no more than {OVERSHOOT} below held-out)"))
        drop = before["test"] - after["test"]
        allowed = task.inputs.utility_max_drop
        report.checks.append(Check("keeps_utility", drop <= allowed,
                                   f"test accuracy {before['test']:.3f} -> {after['test']:.3f} (drop {drop:.3f}, "
                                   f"allowed {allowed})"))

        a, b = first.model.state_dict(), second.model.state_dict()
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        report.checks.append(Check("deterministic", same, f"two runs with seed {parsed.seed} "
                                   + ("gave identical weights" if same else "gave different weights")))
        untouched = _fingerprint(task) == fingerprint
        report.checks.append(Check("inputs_untouched", untouched, "caller's model and sample arrays "
                                   + ("unchanged" if untouched else "were modified")))
    return report


def assert_conformant(method, config: dict[str, Any] | None = None, device: str = "cpu",
                      task: ConformanceTask | None = None) -> ConformanceReport:
    """:func:`check_method`, raising ``AssertionError`` with the full report when any check fails."""
    report = check_method(method, config=config, device=device, task=task)
    if not report.passed:
        raise AssertionError(str(report))
    return report
