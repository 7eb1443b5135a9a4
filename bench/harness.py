"""The benchmark harness: every method against retraining from scratch, side by side in one run.

For each (model, seed) an original model is trained on the training split (``mislabeled`` trains a parent of
its own, see below); for each scenario the forget set is drawn, a model is retrained without it (the
reference, timed), and every method starts from the scenario's parent. One JSON row per (method, scenario,
model, seed) records wall time, the ratio to retraining, forget/retain/test accuracy, the membership-attack
AUC, and the absolute gap of each to the retrained model.
Every row also carries ``floor_seconds``: one forward + backward pass of the parent over the forget set and
the 512-sample retain sample (the least any gradient-based method must spend; the median of three timings
at each of ``FLOOR_BATCH_SIZES``, the fastest batching),
and ``floor_ratio``, the row's seconds over it. Each scenario has a ``noop`` row: the parent itself,
measured like a method's result (the baseline a method must beat; it costs nothing, so no speed-up).

The worst-case scenarios are those in which the parent measurably differs from a retrained model (on a
random forget set of these digits the parent is already nearly a retrained model: the no-op's gap is about
0.01, so methods cannot be told apart there); they are reported in a table of their own:

* ``memorized_10pct`` (in the spirit of "Challenging Forgets") forgets the 10 % of training samples the model
  has most memorized, scored by :func:`memorization_scores`: each sample's loss under a model that never saw
  it (two-fold: each half scored by a model trained on the other half).
* ``mislabeled`` has a parent of its own: it is trained on the training split with ``FLIPPED_SHARE`` of the
  labels moved to another class (seeded, :func:`mislabel`), and forgets exactly the flipped samples, with the
  flipped labels the parent was trained on (forget accuracy is measured against them: the parent fits them,
  all of them with the MLP's full epochs, about 60 % with ``--quick``'s; a retrained model, which sees only
  the correctly labeled rest, almost never predicts them). The attack compares the forget set with held-out
  samples under their true labels, so its AUC is near 0 for any model, the parent included (MLP: 0.05–0.08
  with ``--quick``, 0.18 with the full epochs, against 0.00 retrained). This is the one scenario whose
  training set differs from the other scenarios'; a scenario's training set comes from
  ``TRAINING_TRANSFORMS`` (none: the clean split), and each transformed set gets its own parent (the SISA
  parent too). The memorization scores are always those of the clean split.
* ``subjects_distinct`` forgets the ``DISTINCT_SUBJECTS`` subjects with the most distinctive style: the
  subjects whose training samples have the highest *mean* memorization score, i.e. whose samples a model
  that never saw them finds hardest. Only subjects with at least the median number of training samples per
  subject are eligible, so that one subject's mean is not a single sample's score (the digits' subjects
  have about 7 training samples each: 1–14 on the 8×8 digits, 1–18 on MNIST; 10 subjects are about 90
  samples, about as many as ``subjects_10``'s 70–85). The subject ids of these datasets are a seeded random
  grouping of the digits (``unlearnops.datasets``), not real writers, so "style" here is what a held-out
  model finds atypical, concentrated on 10 whole subjects: the no-op's gap (MLP, ``--quick``, 3 seeds) is
  0.040, against 0.011 on ``random_10pct`` and 0.014 on ``subjects_10``, but below ``memorized_10pct``'s
  0.097 (ranking subjects by the sum or the maximum of their scores, or without the size floor, gave
  0.038–0.044).

A method limited to another model family than the benchmark's network — ``sisa``, whose parent must be a
sharded ensemble — starts from a parent of its family trained on the same training split (``SISA_SHARDS``
constituents of the same network, same epochs); its rows name that parent and its test accuracy, and its
gap to retraining includes the difference between the two model families.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from unlearnops.data import Dataset
from unlearnops.datasets import mnist_5k, sklearn_digits
from unlearnops.gates import class_matched_auc
from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import (ResNetSmall, SmallCNN, TabularMLP, evaluate, pick_device, seed_everything,
                              train_model)
from unlearnops.plugin_manager import load_plugins
from unlearnops.progress import epoch_progress, step_progress

SCENARIOS = ("random_1pct", "random_10pct", "subjects_10", "class", "memorized_10pct", "mislabeled",
             "subjects_distinct")
#: Scenarios in which the parent measurably differs from a retrained model, reported in their own table.
WORST_CASE = ("memorized_10pct", "mislabeled", "subjects_distinct")
#: What each worst-case scenario forgets (the heading of their table).
WORST_CASE_LABELS = {
    "memorized_10pct": "the 10 % most memorized training samples",
    "mislabeled": "the training samples whose label was flipped before the parent was trained",
    "subjects_distinct": "the 10 subjects with the highest mean memorization score",
}
#: Scenarios whose forget set is drawn from :func:`memorization_scores` (computed once per model and seed).
NEEDS_SCORES = ("memorized_10pct", "subjects_distinct")
#: Share of the training labels the ``mislabeled`` parent is trained with flipped to another class: the
#: smallest share for which, on the smallest benchmark dataset (1276 training digits: 51 flipped), one sample
#: moves the forget accuracy by less than ``ENVELOPE`` (1/51 < 0.02), so the envelope can be judged on it;
#: still label noise of a realistic size (the parent's test accuracy drops by about a point).
FLIPPED_SHARE = 0.04
#: Number of subjects ``subjects_distinct`` forgets (as ``subjects_10``).
DISTINCT_SUBJECTS = 10
#: Constituents of the SISA parent the ``sisa`` method starts from.
SISA_SHARDS = 5
#: Largest gap to the retrained model in forget/retain/test accuracy still inside the "retrain envelope".
ENVELOPE = 0.02
METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_auc")
#: The identity baseline every table carries: the parent unchanged.
NOOP = "noop"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dataset: Callable[[], tuple[np.ndarray, Any]]
    factory: Callable[[], torch.nn.Module]
    epochs: int
    quick_epochs: int
    batch_size: int = 64
    lr: float = 1e-3


MODELS = {
    "cnn": ModelSpec("cnn", mnist_5k, SmallCNN, epochs=40, quick_epochs=15),
    "resnet": ModelSpec("resnet", mnist_5k, ResNetSmall, epochs=20, quick_epochs=8),
    "mlp": ModelSpec("mlp", sklearn_digits, TabularMLP, epochs=200, quick_epochs=100),
}


def memorization_scores(train: Samples, fit: Callable[[Samples, int], torch.nn.Module], seed: int) -> np.ndarray:
    """Per training sample, its cross-entropy under a model that never saw it (two folds of the training set,
    each scored by a model trained on the other): high for atypical samples a model fits only by memorizing."""
    order = np.random.default_rng(seed).permutation(len(train))
    folds = (order[: len(order) // 2], order[len(order) // 2 :])
    scores = np.zeros(len(train))
    for scored, trained_on in (folds, folds[::-1]):
        pick = lambda idx: Samples(train.features[idx], train.labels[idx])  # noqa: E731
        reference = fit(pick(trained_on), seed)
        with torch.no_grad():
            device = next(reference.parameters()).device
            logits = reference(torch.as_tensor(train.features[scored], dtype=torch.float32).to(device)).cpu()
            scores[scored] = torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(train.labels[scored], dtype=torch.long), reduction="none").numpy()
    return scores


def flip_labels(labels: np.ndarray, candidates: np.ndarray, share: float, rng: np.random.Generator,
                n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``labels`` with ``share`` of the ``candidates`` (indices, at least one) moved to another class
    (uniformly among the other ``n_classes - 1``), and the flipped indices."""
    labels = np.array(labels, copy=True)
    flipped = rng.choice(candidates, size=max(1, round(len(candidates) * share)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return labels, flipped


def mislabel(train: Dataset, rng: np.random.Generator, share: float = FLIPPED_SHARE) -> Dataset:
    """The training split with ``share`` of its labels flipped to another class (the ``mislabeled``
    scenario's training set); the manifest keeps the true label in ``true_label``."""
    manifest = train.manifest.copy()
    manifest["true_label"] = manifest["label"]
    labels, _ = flip_labels(train.labels, np.arange(len(train)), share, rng, int(train.labels.max()) + 1)
    manifest["label"] = labels
    return Dataset(train.features, manifest)


#: A scenario's own training set, made from the clean training split (scenarios not named: the clean split).
TRAINING_TRANSFORMS: dict[str, Callable[[Dataset, np.random.Generator], Dataset]] = {"mislabeled": mislabel}


def forget_mask(train: Dataset, scenario: str, rng: np.random.Generator,
                scores: np.ndarray | None = None) -> np.ndarray:
    """Which training samples a scenario forgets (``memorized_10pct`` and ``subjects_distinct`` need
    :func:`memorization_scores`, ``mislabeled`` the training set of :func:`mislabel`)."""
    n = len(train)
    if scenario in NEEDS_SCORES and (scores is None or len(scores) != n):
        raise ValueError(f"scenario {scenario!r} needs one memorization score per training sample")
    if scenario.startswith("random_"):
        share = {"random_1pct": 0.01, "random_10pct": 0.10}[scenario]
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=max(1, round(n * share)), replace=False)] = True
        return mask
    if scenario == "subjects_10":
        subjects = train.manifest["subject_id"].astype(str).to_numpy()
        chosen = rng.choice(np.unique(subjects), size=10, replace=False)
        return np.isin(subjects, chosen)
    if scenario == "class":
        return train.labels == int(rng.integers(0, train.labels.max() + 1))
    if scenario == "memorized_10pct":
        mask = np.zeros(n, dtype=bool)
        mask[np.argsort(-scores, kind="stable")[: max(1, round(n * 0.10))]] = True
        return mask
    if scenario == "subjects_distinct":
        return np.isin(train.manifest["subject_id"].astype(str).to_numpy(), distinct_subjects(train, scores))
    if scenario == "mislabeled":
        if "true_label" not in train.manifest:
            raise ValueError("scenario 'mislabeled' needs the training set of mislabel() (a true_label column)")
        return train.manifest["true_label"].to_numpy() != train.labels
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def distinct_subjects(train: Dataset, scores: np.ndarray, count: int = DISTINCT_SUBJECTS) -> list[str]:
    """The ``count`` subjects whose training samples have the highest mean memorization score, among the
    subjects with at least the median number of training samples per subject (ties: by subject id)."""
    frame = pd.DataFrame({"subject": train.manifest["subject_id"].astype(str).to_numpy(), "score": scores})
    per_subject = frame.groupby("subject")["score"].agg(["mean", "size"])
    eligible = per_subject[per_subject["size"] >= per_subject["size"].median()]
    ranked = eligible.reset_index().sort_values(["mean", "subject"], ascending=[False, True], kind="stable")
    return ranked["subject"].head(count).tolist()


def _samples(ds: Dataset) -> Samples:
    return Samples(np.asarray(ds.features), ds.labels, ds.manifest["sample_id"].astype(str).tolist())


def measure(model, forget: Samples, retain: Samples, holdout: Samples, test: Samples, forgotten_class):
    """The row's metrics. For class forgetting, retain/test/held-out exclude the forgotten class and the
    attack compares the forget class with its own held-out samples."""
    ev_forget = evaluate(model, forget.features, forget.labels)
    if forgotten_class is not None:
        keep_test = test.labels != forgotten_class
        test_acc = evaluate(model, test.features[keep_test], test.labels[keep_test]).accuracy
        in_class = holdout.labels == forgotten_class
        ev_holdout = evaluate(model, holdout.features[in_class], holdout.labels[in_class])
        holdout_labels = holdout.labels[in_class]
    else:
        test_acc = evaluate(model, test.features, test.labels).accuracy
        ev_holdout = evaluate(model, holdout.features, holdout.labels)
        holdout_labels = holdout.labels
    return {
        "forget_accuracy": ev_forget.accuracy,
        "retain_accuracy": evaluate(model, retain.features, retain.labels).accuracy,
        "test_accuracy": test_acc,
        "mia_auc": class_matched_auc(ev_forget.phi, forget.labels, ev_holdout.phi, holdout_labels),
    }


def retain_sample(retain: Samples, seed: int, size: int = 512) -> Samples:
    """The ``size`` retained samples (all of them when fewer) a method gets, drawn from ``seed``."""
    idx = np.random.default_rng(seed).choice(len(retain), size=min(size, len(retain)), replace=False)
    return Samples(retain.features[idx], retain.labels[idx])


def gaps_to_retrain(measured: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """The absolute gap of each of :data:`METRICS` to the retrained model's, and their mean."""
    gaps = {f"gap_to_retrain_{k}": abs(measured[k] - reference[k]) for k in METRICS}
    return {**gaps, "avg_gap_to_retrain": float(np.mean(list(gaps.values())))}


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously) before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Batch sizes the floor is timed at; the floor is the fastest of them (on a CPU a 1024-sample batch of image
#: activations outgrows the caches and costs up to twice a 128–256-sample one, which would inflate the floor).
FLOOR_BATCH_SIZES = (128, 256, 1024)
#: A method whose first run takes less than this many seconds is timed like the floor, as the median of
#: three runs (the first in a process or on new shapes pays one-time costs: up to 40 % more for the fast
#: path on these CPUs); the first run's time is kept beside it (``first_run_seconds``).
REPEAT_BELOW_SECONDS = 5.0


def floor_seconds(model: torch.nn.Module, inputs: UnlearnInputs, device,
                  batch_sizes: Iterable[int] = FLOOR_BATCH_SIZES, repeats: int = 3) -> float:
    """One forward + backward pass of ``model`` (eval mode, a copy) over the forget set and the retain
    sample, data moved to ``device`` included: the median of ``repeats`` timings at each of ``batch_sizes``,
    the fastest of them."""
    model = copy.deepcopy(model).to(device).eval()
    features = np.concatenate([np.asarray(inputs.forget.features), np.asarray(inputs.retain.features)])
    labels = np.concatenate([np.asarray(inputs.forget.labels), np.asarray(inputs.retain.labels)])
    medians = []
    for batch_size in batch_sizes:
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            x = torch.as_tensor(features, dtype=torch.float32).to(device)
            y = torch.as_tensor(labels, dtype=torch.long).to(device)
            for start in range(0, len(y), batch_size):
                loss = torch.nn.functional.cross_entropy(model(x[start : start + batch_size]),
                                                         y[start : start + batch_size], reduction="sum") / len(y)
                loss.backward()
            synchronize(torch.device(device))
            timings.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        medians.append(statistics.median(timings))
    return min(medians)


def run(
    models: Iterable[str] = ("cnn",),
    scenarios: Iterable[str] = SCENARIOS,
    methods: Iterable[str] = ("slug", "retrain"),
    seeds: Iterable[int] = (0,),
    quick: bool = False,
    device: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """Benchmark rows: every method on every model, scenario and seed, beside retraining from scratch. A
    method is a plugin name, optionally with a preset (``ft:paper``: the reference implementation's defaults;
    the row's ``method`` keeps the spelling, so both presets of a method sit side by side in the tables)."""
    registry = load_plugins()
    methods = [m for m in methods if m != "retrain"]
    for spec_name in methods:
        name, _, preset = spec_name.partition(":")
        parse_config(registry.get(name), {"preset": preset} if preset else {})  # fail before any training
    torch_device = pick_device(device)
    rows: list[dict[str, Any]] = []
    models, scenarios, seeds = list(models), list(scenarios), list(seeds)
    with step_progress(len(models) * len(seeds) * len(scenarios), "bench", "runs") as done:
        for model_name in models:
            _bench_model(model_name, scenarios, methods, seeds, quick, torch_device, registry, rows, progress, done)
    return rows


def _bench_model(model_name: str, scenarios: list[str], methods: list[str], seeds: list[int], quick: bool,
                 torch_device, registry, rows: list[dict[str, Any]], progress, done) -> None:
    """The rows of one model (appended to ``rows``); ``done(message)`` after each scenario of a seed."""
    spec = MODELS[model_name]
    features, manifest = spec.dataset()
    data = Dataset(features, manifest)
    train, holdout, test = data.split("train"), _samples(data.split("holdout")), _samples(data.split("test"))
    epochs = spec.quick_epochs if quick else spec.epochs

    def fit(samples: Samples, seed: int):
        # Seeded before the network is built, so its initial weights follow from the seed alone, not from what
        # ran before it (the scenarios and methods of a run, which may draw from the global generator).
        seed_everything(seed)
        with epoch_progress(epochs, f"{model_name} train") as report:
            return train_model(spec.factory(), samples.features, samples.labels, epochs=epochs,
                               batch_size=spec.batch_size, lr=spec.lr, seed=seed, device=torch_device,
                               progress=report)

    for seed in seeds:
        # Per training set (None: the clean split; else the scenario whose transform made it), the set and
        # its parent, trained when a scenario first needs it; the SISA-family parents likewise.
        trained: dict[str | None, tuple[Dataset, torch.nn.Module]] = {}
        parents: dict[tuple[str | None, str], dict[str, Any]] = {}
        scores = None
        if any(s in NEEDS_SCORES for s in scenarios):
            progress(f"{model_name} seed {seed}: memorization scores (two half-size models)")
            scores = memorization_scores(_samples(train), fit, seed)
        for scenario in scenarios:
            rng = np.random.default_rng(seed * 1000 + SCENARIOS.index(scenario))
            set_name = scenario if scenario in TRAINING_TRANSFORMS else None
            if set_name not in trained:
                scenario_train = TRAINING_TRANSFORMS[set_name](train, rng) if set_name else train
                what = f"the {set_name} parent" if set_name else "the original model"
                progress(f"{model_name} seed {seed}: training {what} ({epochs} epochs)")
                trained[set_name] = (scenario_train, fit(_samples(scenario_train), seed))
            scenario_train, original = trained[set_name]
            mask = forget_mask(scenario_train, scenario, rng, scores)
            forget, retain = _samples(scenario_train.select(mask)), _samples(scenario_train.select(~mask))
            forgotten_class = int(forget.labels[0]) if scenario == "class" else None
            base = {"scenario": scenario, "model": model_name, "seed": seed, "n_forget": len(forget),
                    "n_train": len(train), "device": str(torch_device), "epochs": epochs, **conditions()}
            if set_name:
                base["training_set"] = set_name

            progress(f"{model_name} seed {seed} {scenario}: retraining without {len(forget)} samples")
            started = time.perf_counter()
            retrained = fit(retain, seed)
            retrain_seconds = time.perf_counter() - started
            reference = measure(retrained, forget, retain, holdout, test, forgotten_class)
            rows.append({**base, "method": "retrain", "wall_seconds": retrain_seconds,
                         "time_ratio_to_retrain": 1.0, **reference,
                         **{f"gap_to_retrain_{k}": 0.0 for k in METRICS}, "avg_gap_to_retrain": 0.0})

            inputs = UnlearnInputs(
                forget=forget,
                retain=retain_sample(retain, seed),
                holdout=holdout,
                utility_max_drop=0.02,
                retain_full=retain,
                model_factory=spec.factory,
                train_params={"epochs": epochs, "batch_size": spec.batch_size, "lr": spec.lr, "seed": seed},
            )
            floor = floor_seconds(original, inputs, torch_device)
            base["floor_seconds"] = floor
            rows[-1]["floor_seconds"] = floor
            rows[-1]["floor_ratio"] = retrain_seconds / floor
            measured = measure(original, forget, retain, holdout, test, forgotten_class)
            rows.append({**base, "method": NOOP, "wall_seconds": 0.0, "time_ratio_to_retrain": None,
                         "floor_ratio": 0.0, **measured, **gaps_to_retrain(measured, reference),
                         "changed_parameters": 0})
            for spec_name in methods:
                name, _, preset = spec_name.partition(":")
                method = registry.get(name)
                config = parse_config(method, {"seed": seed, **({"preset": preset} if preset else {})})
                parent, extra = original, {}
                if not {c.__name__ for c in type(original).__mro__} & set(method.model_families):
                    family = method.model_families[0]
                    if (set_name, family) not in parents:
                        parents[(set_name, family)] = _family_parent(family, spec, _samples(scenario_train), epochs,
                                                                     seed, torch_device, test, progress)
                    parent, extra = parents[(set_name, family)]["model"], parents[(set_name, family)]["row"]
                progress(f"{model_name} seed {seed} {scenario}: {spec_name}")
                timings = []
                while not timings or (len(timings) < 3 and timings[0] < REPEAT_BELOW_SECONDS):
                    started = time.perf_counter()
                    result = run_method(method, copy.deepcopy(parent), inputs, config, torch_device)
                    synchronize(torch_device)
                    timings.append(time.perf_counter() - started)
                seconds = statistics.median(timings)
                measured = measure(result.model, forget, retain, holdout, test, forgotten_class)
                rows.append({**base, "method": spec_name, "wall_seconds": seconds, "first_run_seconds": timings[0],
                             "timed_runs": len(timings),
                             "time_ratio_to_retrain": retrain_seconds / seconds if seconds else float("inf"),
                             "floor_ratio": seconds / floor,
                             **measured, **gaps_to_retrain(measured, reference),
                             "changed_parameters": len(result.changed_parameters), **extra})
            done(f"{model_name} seed {seed} {scenario}: {len(methods)} method(s) beside retraining")


def _family_parent(family: str, spec: ModelSpec, train: Samples, epochs: int, seed: int, device, test: Samples,
                   progress) -> dict[str, Any]:
    """The parent of another model family, trained on the same split (only ``ShardedEnsemble`` so far)."""
    if family != "ShardedEnsemble":
        raise ValueError(f"the benchmark cannot build a parent of model family {family!r}")
    from unlearnops.plugins.sisa import train_sharded

    progress(f"{spec.name} seed {seed}: training a {SISA_SHARDS}-shard SISA parent")
    started = time.perf_counter()
    model = train_sharded(spec.factory, train, SISA_SHARDS, device=device,
                          train_params={"epochs": epochs, "batch_size": spec.batch_size, "lr": spec.lr, "seed": seed})
    seconds = time.perf_counter() - started
    return {"model": model, "row": {"parent": f"{SISA_SHARDS}-shard SISA ensemble",
                                    "parent_train_seconds": seconds,
                                    "parent_test_accuracy": evaluate(model, test.features, test.labels).accuracy}}


def conditions() -> dict[str, Any]:
    """What the timings depend on besides the code: CPU cores, torch threads and the 1-minute load average
    when the row was measured (other processes on the machine slow every timing down)."""
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def conditions_line(rows: list[dict[str, Any]]) -> str:
    """One sentence on the machine and its load during the rows' measurement ('' for rows without it)."""
    loads = [r["load_average_1m"] for r in rows if "load_average_1m" in r]
    if not loads:
        return ""
    devices = ", ".join(sorted({str(r.get("device", "?")) for r in rows}))
    return (f"Measured on {rows[0]['cpu_count']} CPU cores ({rows[0]['torch_threads']} torch threads), device "
            f"{devices}; 1-minute load average {min(loads):.1f}–{max(loads):.1f} while rows were measured.")


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _by_method(rows: list[dict[str, Any]]) -> dict[tuple, list[dict]]:
    """The rows grouped by (model, scenario, method), in first-seen order; one row per seed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["scenario"], row["method"]), []).append(row)
    return groups


def _max_accuracy_gap(group: list[dict]) -> float:
    """The largest gap to the retrained model in forget/retain/test accuracy over the group's seeds (what
    the envelope judges; the MIA AUC gap is reported, not judged)."""
    return max(max(r[f"gap_to_retrain_{k}"] for k in METRICS if k != "mia_auc") for r in group)


def _ratio(group: list[dict], key: str) -> str:
    """Mean ± std of a ratio column with a × sign; '–' where the rows lack it (the no-op's speed-up, rows
    measured before the floor was)."""
    values = [r[key] for r in group if r.get(key) is not None]
    if len(values) < len(group) or (key == "floor_ratio" and group[0]["method"] == NOOP):
        return "–"
    return f"{_mean_std(values).replace('.000', '')}×"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (model, scenario, method); accuracies and gaps in [0, 1]. ``envelope``: is
    the largest gap to the retrained model in forget/retain/test accuracy, over all seeds, within
    ``ENVELOPE``. Worst-case scenarios (``WORST_CASE``) follow in a table of their own; each table has the
    no-op row of each of its scenarios. Methods that started from a parent of another family are marked and
    their parent described below."""
    header = ("| model | scenario | method | seeds | n forget | seconds | × floor | speed-up vs retrain | forget acc "
              "| retain acc | test acc | MIA AUC | avg gap to retrain | max gap | envelope |")
    sections: dict[bool, list[str]] = {False: [], True: []}
    notes: dict[str, str] = {}
    for (model, scenario, method), group in _by_method(rows).items():
        def col(key):
            return _mean_std([r[key] for r in group])

        max_gap = _max_accuracy_gap(group)
        label = method
        if "parent" in group[0]:
            label = f"{method}†"
            notes[method] = (f"† `{method}` starts from a {group[0]['parent']} trained on the same split (test "
                             f"accuracy {_mean_std([r['parent_test_accuracy'] for r in group])}, "
                             f"{_mean_std([r['parent_train_seconds'] for r in group])} s to train), not from the "
                             "single network the others start from; its gaps include that difference of model "
                             "family.")
        n_forget = _mean_std([float(r["n_forget"]) for r in group]).replace(".000", "")
        sections[scenario in WORST_CASE].append(
            f"| {model} | {scenario} | {label} | {len(group)} | {n_forget} | {col('wall_seconds')} "
            f"| {_ratio(group, 'floor_ratio')} | {_ratio(group, 'time_ratio_to_retrain')} "
            f"| {col('forget_accuracy')} | {col('retain_accuracy')} | {col('test_accuracy')} | {col('mia_auc')} "
            f"| {col('avg_gap_to_retrain')} | {max_gap:.3f} | {'yes' if max_gap <= ENVELOPE else '**miss**'} |"
        )
    out = []
    for worst in (False, True):
        if not sections[worst]:
            continue
        if worst:
            present = [s for s in WORST_CASE if any(r["scenario"] == s for r in rows)]
            out.append("\nWorst case (scenarios in which the parent measurably differs from a retrained model; "
                       + "; ".join(f"{s}: forget {WORST_CASE_LABELS[s]}" for s in present) + "):\n")
        out += [header, "|" + "---|" * 15, *sections[worst]]
    out += ["", *notes.values()] if notes else []
    conditions = conditions_line(rows)
    out += ["", conditions] if conditions else []
    return "\n".join(out) + "\n"


def summary_matrix(rows: list[dict[str, Any]]) -> str:
    """One line per (model, scenario), one column per method: the average gap to the retrained model (mean over
    seeds), ✓ when the largest gap over all seeds is within ``ENVELOPE``, and the mean speed-up over retraining."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "retrain"))
    cells: dict[tuple, dict[str, str]] = {}
    retrain_seconds: dict[tuple, list[float]] = {}
    for (model, scenario, method), group in _by_method(rows).items():
        key = (model, scenario)
        if method == "retrain":
            retrain_seconds[key] = [r["wall_seconds"] for r in group]
            continue
        max_gap = _max_accuracy_gap(group)
        gap = statistics.mean(r["avg_gap_to_retrain"] for r in group)
        cell = f"{gap:.3f}{' ✓' if max_gap <= ENVELOPE else ''}"
        if method != NOOP:  # the parent unchanged costs nothing: no speed-up to state
            cell += f" · {statistics.mean(r['time_ratio_to_retrain'] for r in group):.0f}×"
        cells.setdefault(key, {})[method] = cell
    header = "| model | scenario | retrain s | " + " | ".join(methods) + " |"
    lines = [header, "|" + "---|" * (3 + len(methods))]
    for key in dict.fromkeys((r["model"], r["scenario"]) for r in rows):
        lines.append(f"| {key[0]} | {key[1]} | {statistics.mean(retrain_seconds.get(key, [float('nan')])):.1f} | "
                     + " | ".join(cells.get(key, {}).get(m, "–") for m in methods) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Time vs average gap to retrain, one point per (method, scenario, model, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows} - {NOOP}):  # the no-op costs 0 s: no point on a log axis
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r["wall_seconds"] for r in pts], [r["avg_gap_to_retrain"] for r in pts], label=method)
    ax.set(xscale="log", xlabel="wall seconds (log)", ylabel="average gap to retrain",
           title="cost vs distance to retraining")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    table = out.with_suffix(".md")
    table.write_text("Average gap to retraining (mean over seeds; ✓: every seed's largest accuracy gap within "
                     f"{ENVELOPE}) · speed-up over retraining:\n\n{summary_matrix(rows)}\n{markdown_table(rows)}")
    return {"json": out, "table": table, "plot": plot(rows, out.with_suffix(".png"))}
