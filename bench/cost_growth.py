"""Cost growth of the fast path against retraining: wall time vs the size of the training set (at a fixed
1 % forget share) and vs the size of the forget set (on the full training set).

    python -m unlearnops.bench.cost_growth [--quick] [--out bench/results/cost-growth.json]
    python -m unlearnops.bench.cost_growth --augmented [--epochs 3] [--sizes 3500,14000,52500]

``--augmented``: a scale that matters on CPU — the training split of the 5000 shipped digits extended by
:func:`augment` (15 variants of each training digit: itself, shifts by 1 and 2 pixels along each axis,
rotations by ±8°, ±15°, ±22°; the held-out and test digits stay the originals, so no variant of a held-out
digit is trained on) to ≥ 50 000 training samples, and a wider CNN (:class:`WideCNN`, 32/64 channels and
256 hidden units: about 4× the small CNN's compute). Every size gets its own original model; slug and
retraining are timed side by side at a 1 % forget share, or with ``--forget-count N`` for a request of N
samples at every size (where the ratio to retraining grows with the training set).

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
import torch
from torch import nn
from torch.nn import functional as F

from unlearnops.bench.harness import MODELS, _samples, conditions, conditions_line, retain_sample
from unlearnops.data import Dataset
from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import pick_device, train_model
from unlearnops.plugin_manager import load_plugins


class WideCNN(nn.Module):
    """The small CNN's shape at twice its width: about 0.9M parameters."""

    def __init__(self, n_classes: int = 10, width: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16 * width, 3, padding=1)
        self.conv2 = nn.Conv2d(16 * width, 32 * width, 3, padding=1)
        self.fc1 = nn.Linear(32 * width * 7 * 7, 128 * width)
        self.fc2 = nn.Linear(128 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


#: The augmentation variants: (dy, dx) pixel shifts and rotations in degrees; the first is the digit itself.
VARIANTS = ([("shift", (0, 0))] + [("shift", d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0),
                                                          (0, 2), (0, -2))]
            + [("rotate", a) for a in (8, -8, 15, -15, 22, -22)])


def augment(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image (N, 1, 28, 28) in each of :data:`VARIANTS` (shifts fill with 0, rotations bilinear about
    the centre, clipped to [0, 1]), variant-major: the first N rows are the originals."""
    from scipy import ndimage

    out = []
    for kind, arg in VARIANTS:
        if kind == "shift":
            out.append(ndimage.shift(features, (0, 0, *arg), order=0, mode="constant", cval=0.0))
        else:
            out.append(np.clip(ndimage.rotate(features, arg, axes=(2, 3), reshape=False, order=1,
                                              mode="constant", cval=0.0), 0, 1))
    return np.concatenate(out).astype(np.float32), np.tile(labels, len(VARIANTS))


def run_augmented(sizes=(3500, 14000, 52500), epochs: int = 3, device: str | None = None,
                  progress=print, forget_count: int | None = None) -> list[dict[str, Any]]:
    """Slug against retraining on the augmented digits (see the module docstring), one row per size: a 1 %
    forget share, or ``forget_count`` samples whatever the size (a request of fixed size)."""
    from dataclasses import replace

    spec = replace(MODELS["cnn"], name="wide-cnn", factory=WideCNN)
    torch_device = pick_device(device)
    features, manifest = spec.dataset()
    data = Dataset(features, manifest)
    train, holdout = _samples(data.split("train")), _samples(data.split("holdout"))
    x_all, y_all = augment(np.asarray(train.features), train.labels)
    order = np.random.default_rng(0).permutation(len(y_all))
    rows = []
    for n in sizes:
        pick = np.sort(order[: min(n, len(order))])
        x, y = x_all[pick], y_all[pick]
        progress(f"n={len(y)}: training the original wide CNN ({epochs} epochs)")
        started = time.perf_counter()
        original = train_model(WideCNN(), x, y, epochs=epochs, batch_size=spec.batch_size, lr=spec.lr, seed=0,
                               device=torch_device)
        train_seconds = time.perf_counter() - started
        rng = np.random.default_rng(n)
        mask = np.zeros(len(y), dtype=bool)
        mask[rng.choice(len(y), size=forget_count or max(1, len(y) // 100), replace=False)] = True
        slug_s, retrain_s, evals = _timed_pair(original, spec, epochs, Samples(x[mask], y[mask]),
                                               Samples(x[~mask], y[~mask]), holdout, torch_device)
        rows.append({"axis": "augmented_fixed_request" if forget_count else "augmented_size", "model": "wide-cnn", "n_train": len(y), "n_forget": int(mask.sum()),
                     "slug_seconds": slug_s, "retrain_seconds": retrain_s, "ratio": retrain_s / slug_s,
                     "slug_evaluations": evals, "original_train_seconds": train_seconds, "epochs": epochs,
                     "device": str(torch_device), **conditions()})
        progress(json.dumps(rows[-1]))
    return rows


def _timed_pair(original, spec, epochs, forget: Samples, retain: Samples, holdout: Samples, device, seed=0):
    """Seconds of slug and of retraining for one forget set."""
    method = load_plugins().get("slug")
    inputs = UnlearnInputs(forget=forget, retain=retain_sample(retain, seed), holdout=holdout, utility_max_drop=0.02)
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
    lines = ["| axis | n train | epochs | n forget | slug s | retrain s | retrain / slug | slug evaluations | load 1m |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['axis']} | {r['n_train']} | {r.get('epochs', '')} | {r['n_forget']} | {r['slug_seconds']:.2f} | "
                     f"{r['retrain_seconds']:.1f} | {r['ratio']:.1f}× | {r['slug_evaluations']} | "
                     f"{r.get('load_average_1m', float('nan')):.1f} |")
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
    parser.add_argument("--augmented", action="store_true",
                        help="the digits extended by augmentation to ≥ 50 000 training samples, a wider CNN")
    parser.add_argument("--epochs", type=int, default=3, help="with --augmented: training epochs")
    parser.add_argument("--sizes", default="3500,14000,52500", help="with --augmented: training-set sizes")
    parser.add_argument("--forget-count", type=int, default=None,
                        help="with --augmented: forget this many samples at every size instead of 1 %%")
    args = parser.parse_args(argv)
    if args.augmented:
        rows = run_augmented(tuple(int(n) for n in args.sizes.split(",")), args.epochs, args.device,
                             forget_count=args.forget_count)
    else:
        rows = run(quick=args.quick, device=args.device)
    print(write_results(rows, args.out, markdown))


if __name__ == "__main__":
    main()
