"""Cost growth of the fast path against retraining: wall time vs the size of the training set (at a fixed
1 % forget share) and vs the size of the forget set (on the full training set).

    python -m unlearnops.bench.cost_growth [--quick] [--out bench/results/cost-growth.json]

Retraining grows with the data it retrains on; the fast path computes one gradient over the forget set and a
retain sample of fixed size, then searches a step with forward passes over the forget and held-out sets, so
it should stay nearly flat in the training-set size and grow with the forget set only.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from unlearnops.bench.harness import MODELS, _samples, conditions, conditions_line
from unlearnops.data import Dataset
from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import pick_device, train_model
from unlearnops.plugin_manager import load_plugins


def _timed_pair(original, spec, epochs, forget: Samples, retain: Samples, holdout: Samples, device, seed=0):
    """Seconds of slug and of retraining for one forget set."""
    method = load_plugins().get("slug")
    idx = np.random.default_rng(seed).choice(len(retain), size=min(512, len(retain)), replace=False)
    inputs = UnlearnInputs(forget=forget, retain=Samples(retain.features[idx], retain.labels[idx]),
                           holdout=holdout, utility_max_drop=0.02)
    started = time.perf_counter()
    result = run_method(method, copy.deepcopy(original), inputs, parse_config(method, {"seed": seed}), device)
    slug_seconds = time.perf_counter() - started
    started = time.perf_counter()
    train_model(spec.factory(), retain.features, retain.labels, epochs=epochs, batch_size=spec.batch_size,
                lr=spec.lr, seed=seed, device=device)
    retrain_seconds = time.perf_counter() - started
    evaluations = sum(c["evaluations"] for c in result.details.get("candidates", []))
    return slug_seconds, retrain_seconds, evaluations


def _row(axis: str, original, spec, epochs: int, train, mask: np.ndarray, holdout: Samples, device) -> dict:
    slug_s, retrain_s, evals = _timed_pair(original, spec, epochs, _samples(train.select(mask)),
                                           _samples(train.select(~mask)), holdout, device)
    return {"axis": axis, "n_train": len(train), "n_forget": int(mask.sum()), "slug_seconds": slug_s,
            "retrain_seconds": retrain_s, "ratio": retrain_s / slug_s, "slug_evaluations": evals,
            "epochs": epochs, "device": str(device), **conditions()}


def run(sizes=(1000, 2500, 5000), forget_sizes=(10, 50, 200, 800), quick: bool = False,
        device: str | None = None, progress=print) -> list[dict[str, Any]]:
    spec = MODELS["cnn"]
    epochs = spec.quick_epochs if quick else spec.epochs
    torch_device = pick_device(device)
    features, manifest = spec.dataset()
    order = np.random.default_rng(0).permutation(len(manifest))  # the file is sorted by label
    rows = []
    originals = {}
    for n in sizes:
        subset = np.sort(order[:n])
        data = Dataset(features[subset], manifest.iloc[subset].reset_index(drop=True))
        train, holdout = data.split("train"), _samples(data.split("holdout"))
        progress(f"n={n}: training the original CNN ({epochs} epochs)")
        original = train_model(spec.factory(), np.asarray(train.features), train.labels, epochs=epochs,
                               batch_size=spec.batch_size, lr=spec.lr, seed=0, device=torch_device)
        originals[n] = (original, train, holdout)
        rng = np.random.default_rng(n)
        mask = np.zeros(len(train), dtype=bool)
        mask[rng.choice(len(train), size=max(1, len(train) // 100), replace=False)] = True
        rows.append(_row("dataset_size", original, spec, epochs, train, mask, holdout, torch_device))
        progress(json.dumps(rows[-1]))
    original, train, holdout = originals[max(sizes)]
    for k in forget_sizes:
        rng = np.random.default_rng(k)
        mask = np.zeros(len(train), dtype=bool)
        mask[rng.choice(len(train), size=min(k, len(train) - 1), replace=False)] = True
        rows.append(_row("forget_size", original, spec, epochs, train, mask, holdout, torch_device))
        progress(json.dumps(rows[-1]))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| axis | n train | n forget | slug s | retrain s | retrain / slug | slug evaluations |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['axis']} | {r['n_train']} | {r['n_forget']} | {r['slug_seconds']:.2f} | "
                     f"{r['retrain_seconds']:.1f} | {r['ratio']:.1f}× | {r['slug_evaluations']} |")
    conditions = conditions_line(rows)
    return "\n".join(lines + ([f"\n{conditions}"] if conditions else [])) + "\n"


def write_results(rows: list[dict[str, Any]], out: Path, to_markdown) -> str:
    """``out`` (JSON rows) and ``out`` with ``.md`` (the table); returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    table = to_markdown(rows)
    out.with_suffix(".md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training epochs (15 instead of 40)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cost-growth.json"))
    args = parser.parse_args(argv)
    print(write_results(run(quick=args.quick, device=args.device), args.out, markdown))


if __name__ == "__main__":
    main()
