"""The escalation ladder measured through the real deletion flow: per scenario, the time from a pending
request to a certified (or refused) model version, and which rung won.

    python -m unlearnops.bench.ladder [--epochs 15] [--workspace DIR] [--out bench/results/ladder.json]

One workspace of the demo's 5000 MNIST digits (base CNN trained by ``dvc repro``), with 1 % of the training
labels flipped to another class before training (label noise the base model memorizes), takes five kinds of
request one after another, each as its own request and batch; the dataset shrinks by each scenario's samples,
in this order: random 1 % of the training samples, 10 subjects, the mislabeled samples, the 1 % most memorized
samples (highest loss under a model trained on the other half of the data), one whole class.

The flow runs in-process here (``api.run(prefect=False)``): no CLI start-up, no Prefect. The same workspace
through ``unlearnops run --json`` as a fresh process per batch, Prefect server included, with the overhead
beyond the method's compute broken down: :mod:`unlearnops.bench.flow_overhead`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from unlearnops import api
from unlearnops.bench.cost_growth import write_results
from unlearnops.progress import step_progress


SCENARIOS = ("random_1pct", "subjects_10", "mislabeled", "memorized_1pct", "class")
#: Share of training samples whose label is flipped before the base model is trained.
FLIPPED_SHARE = 0.01


def _mislabeled_arrays(seed: int = 0):
    """The demo digits with ``FLIPPED_SHARE`` of the training labels moved to another class; the flipped ids."""
    from unlearnops.bench.harness import flip_labels
    from unlearnops.datasets import SourceData, mnist_5k

    features, manifest = mnist_5k()
    train = np.flatnonzero(manifest["split"].to_numpy() == "train")
    labels, flipped = flip_labels(manifest["label"].to_numpy(), train, FLIPPED_SHARE, np.random.default_rng(seed))
    arrays = SourceData(features, labels, manifest["sample_id"].tolist(), manifest["subject_id"].tolist(),
                        manifest["split"].tolist())
    return arrays, sorted(manifest["sample_id"].to_numpy()[flipped].astype(str))


def _most_memorized(ws, share: float, seed: int = 0) -> list[str]:
    """The training samples with the highest loss under a model trained on the other half (two folds)."""
    from unlearnops.bench.harness import memorization_scores
    from unlearnops.data import load_dataset
    from unlearnops.method_runner import Samples, call_training
    from unlearnops.model import pick_device, seed_everything

    train = load_dataset(ws.data_dir, mmap=False).split("train")
    samples = Samples(np.asarray(train.features), train.labels, train.manifest["sample_id"].astype(str).tolist())

    def fit(part, fold_seed):
        seed_everything(fold_seed)
        return call_training(ws.train_function, ws.model_factory(), part, device=pick_device(),
                             **ws.params.train.model_dump())

    scores = memorization_scores(samples, fit, seed)
    top = np.argsort(scores)[::-1][: max(1, round(len(scores) * share))]
    return sorted(np.asarray(samples.sample_ids)[top])


def _scenario_request(ws, scenario: str, rng: np.random.Generator, flipped: list[str]) -> dict[str, list[str]]:
    from unlearnops.data import load_dataset

    manifest = load_dataset(ws.data_dir).manifest
    train = manifest[manifest["split"] == "train"]
    if scenario == "mislabeled":
        return {"samples": [s for s in flipped if s in set(train["sample_id"].astype(str))]}
    if scenario == "memorized_1pct":
        return {"samples": _most_memorized(ws, 0.01)}
    if scenario == "random_1pct":
        ids = rng.choice(train["sample_id"].astype(str).to_numpy(), size=len(train) // 100, replace=False)
        return {"samples": sorted(ids)}
    if scenario == "subjects_10":
        subjects = rng.choice(np.unique(train["subject_id"].astype(str)), size=10, replace=False)
        return {"subjects": sorted(subjects)}
    if scenario == "class":
        label = int(rng.integers(0, manifest["label"].max() + 1))
        return {"samples": sorted(manifest.loc[manifest["label"] == label, "sample_id"].astype(str))}
    raise ValueError(scenario)


def run(workspace: Path, epochs: int = 15, scenarios=SCENARIOS, progress=print) -> list[dict[str, Any]]:
    arrays, flipped = _mislabeled_arrays()
    ws = api.init(workspace, epochs=epochs, arrays=arrays)
    started = time.perf_counter()
    api.train(ws)
    progress(f"base model trained in {time.perf_counter() - started:.0f} s")
    rows = []
    rng = np.random.default_rng(0)
    with step_progress(len(scenarios), "bench ladder", "scenarios") as done:
        for scenario in scenarios:
            rows.append(_scenario_row(ws, scenario, rng, flipped, epochs))
            done(f"{scenario}: {rows[-1]['status']} in {rows[-1]['seconds_to_version']} s ({', '.join(rows[-1]['rungs'])})")
            progress(json.dumps(rows[-1]))
    return rows


def _scenario_row(ws, scenario: str, rng, flipped, epochs: int) -> dict[str, Any]:
    """Submit one scenario's request, run the flow in-process, and return its row."""
    request = _scenario_request(ws, scenario, rng, flipped)
    api.submit(ws, reason=f"bench: {scenario}", **request)
    started = time.perf_counter()
    summary = api.run(ws, prefect=False)
    seconds = time.perf_counter() - started
    rungs = summary["rungs"]
    return {
        "scenario": scenario,
        "n_forget_trained": summary["forget_samples_trained"],
        "seconds_to_version": round(seconds, 1),
        "status": summary["certificate_status"],
        "grounds": json.loads((ws.runs_dir / summary["run_id"] / "certificate.json").read_text()).get("grounds"),
        "rungs": rungs,
        "winning_rung": rungs[-1].split(":")[0] if rungs and rungs[-1].endswith("pass") else None,
        "step_seconds": summary["step_seconds"],
        "test_accuracy_before": summary["test_accuracy_before"],
        "test_accuracy_after": summary["test_accuracy_after"],
        "epochs": epochs,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | forgotten training samples | rungs tried | won | status | seconds to version | test acc before → after | grounds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['n_forget_trained']} | {', '.join(r['rungs'])} | {r['winning_rung'] or '—'} "
                     f"| {r['status']} | {r['seconds_to_version']} | {r['test_accuracy_before']:.3f} → "
                     f"{r['test_accuracy_after']:.3f} | {(r.get('grounds') or '').split(' (evidence')[0]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workspace", type=Path, default=Path("bench-ladder-workspace"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ladder.json"))
    args = parser.parse_args(argv)
    print(write_results(run(args.workspace, args.epochs), args.out, markdown))


if __name__ == "__main__":
    main()
