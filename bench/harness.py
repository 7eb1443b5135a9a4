"""The benchmark harness: every method against retraining from scratch, side by side in one run.

For each (model, seed) an original model is trained on the training split; for each scenario the forget set
is drawn, a model is retrained without it (the reference, timed), and every method starts from the
original. One JSON row per (method, scenario, model, seed) records wall time, the ratio to retraining,
forget/retain/test accuracy, the membership-attack AUC, and the absolute gap of each to the retrained model.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from unlearnops.data import Dataset
from unlearnops.datasets import mnist_5k, sklearn_digits
from unlearnops.gates import class_matched_auc
from unlearnops.methods import Samples, UnlearnInputs, load_methods, parse_config, run_method
from unlearnops.model import ResNetSmall, SmallCNN, TabularMLP, evaluate, pick_device, train_model

SCENARIOS = ("random_1pct", "random_10pct", "subjects_10", "class")
METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_auc")


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


def forget_mask(train: Dataset, scenario: str, rng: np.random.Generator) -> np.ndarray:
    """Which training samples a scenario forgets."""
    n = len(train)
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
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


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


def run(
    models: Iterable[str] = ("cnn",),
    scenarios: Iterable[str] = SCENARIOS,
    methods: Iterable[str] = ("slug", "retrain"),
    seeds: Iterable[int] = (0,),
    quick: bool = False,
    device: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    registry = load_methods()
    methods = [m for m in methods if m != "retrain"]
    for name in methods:
        registry.get(name)  # fail before any training on an unknown method
    torch_device = pick_device(device)
    rows: list[dict[str, Any]] = []
    for model_name in models:
        spec = MODELS[model_name]
        features, manifest = spec.dataset()
        data = Dataset(features, manifest)
        train, holdout, test = data.split("train"), _samples(data.split("holdout")), _samples(data.split("test"))
        epochs = spec.quick_epochs if quick else spec.epochs

        def fit(samples: Samples, seed: int):
            return train_model(spec.factory(), samples.features, samples.labels, epochs=epochs,
                               batch_size=spec.batch_size, lr=spec.lr, seed=seed, device=torch_device)

        for seed in seeds:
            progress(f"{model_name} seed {seed}: training the original model ({epochs} epochs)")
            original = fit(_samples(train), seed)
            for scenario in scenarios:
                rng = np.random.default_rng(seed * 1000 + SCENARIOS.index(scenario))
                mask = forget_mask(train, scenario, rng)
                forget, retain = _samples(train.select(mask)), _samples(train.select(~mask))
                forgotten_class = int(forget.labels[0]) if scenario == "class" else None
                base = {"scenario": scenario, "model": model_name, "seed": seed, "n_forget": len(forget),
                        "n_train": len(train), "device": str(torch_device), "epochs": epochs}

                progress(f"{model_name} seed {seed} {scenario}: retraining without {len(forget)} samples")
                started = time.perf_counter()
                retrained = fit(retain, seed)
                retrain_seconds = time.perf_counter() - started
                reference = measure(retrained, forget, retain, holdout, test, forgotten_class)
                rows.append({**base, "method": "retrain", "wall_seconds": retrain_seconds,
                             "time_ratio_to_retrain": 1.0, **reference,
                             **{f"gap_to_retrain_{k}": 0.0 for k in METRICS}, "avg_gap_to_retrain": 0.0})

                idx = np.random.default_rng(seed).choice(len(retain), size=min(512, len(retain)), replace=False)
                inputs = UnlearnInputs(
                    forget=forget,
                    retain=Samples(retain.features[idx], retain.labels[idx]),
                    holdout=holdout,
                    utility_max_drop=0.02,
                    retain_full=retain,
                    model_factory=spec.factory,
                    train_params={"epochs": epochs, "batch_size": spec.batch_size, "lr": spec.lr, "seed": seed},
                )
                for name in methods:
                    method = registry.get(name)
                    config = parse_config(method, {"seed": seed})
                    progress(f"{model_name} seed {seed} {scenario}: {name}")
                    started = time.perf_counter()
                    result = run_method(method, copy.deepcopy(original), inputs, config, torch_device)
                    seconds = time.perf_counter() - started
                    measured = measure(result.model, forget, retain, holdout, test, forgotten_class)
                    gaps = {f"gap_to_retrain_{k}": abs(measured[k] - reference[k]) for k in METRICS}
                    rows.append({**base, "method": name, "wall_seconds": seconds,
                                 "time_ratio_to_retrain": retrain_seconds / seconds if seconds else float("inf"),
                                 **measured, **gaps, "avg_gap_to_retrain": float(np.mean(list(gaps.values()))),
                                 "changed_parameters": len(result.changed_parameters)})
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (model, scenario, method); accuracies and gaps in [0, 1]."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["scenario"], row["method"]), []).append(row)
    header = ("| model | scenario | method | n forget | seconds | speed-up vs retrain | forget acc | retain acc "
              "| test acc | MIA AUC | avg gap to retrain | max gap |")
    lines = [header, "|" + "---|" * 12]
    for (model, scenario, method), group in groups.items():
        def col(key):
            return _mean_std([r[key] for r in group])

        max_gap = max(max(r[f"gap_to_retrain_{k}"] for k in METRICS if k != "mia_auc") for r in group)
        lines.append(
            f"| {model} | {scenario} | {method} | {group[0]['n_forget']} | {col('wall_seconds')} "
            f"| {_mean_std([r['time_ratio_to_retrain'] for r in group]).replace('.000', '')}× "
            f"| {col('forget_accuracy')} | {col('retain_accuracy')} | {col('test_accuracy')} | {col('mia_auc')} "
            f"| {col('avg_gap_to_retrain')} | {max_gap:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Time vs average gap to retrain, one point per (method, scenario, model, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
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
    table.write_text(markdown_table(rows))
    return {"json": out, "table": table, "plot": plot(rows, out.with_suffix(".png"))}
