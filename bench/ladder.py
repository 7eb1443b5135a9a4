"""The escalation ladder measured through the real deletion flow: per scenario, the time from a pending
request to a certified (or refused) model version, and which rung won.

    python -m unlearnops.bench.ladder [--epochs 15] [--workspace DIR] [--out bench/results/ladder.json]

One demo workspace (the 5000 MNIST digits, base CNN trained by ``dvc repro``) takes the scenarios one after
another, each as its own request and batch from the same champion; the dataset shrinks by each scenario's
samples, in this order: random 1 % of the training samples, 10 subjects, one whole class.
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


def _scenario_request(ws, scenario: str, rng: np.random.Generator) -> dict[str, list[str]]:
    from unlearnops.data import load_dataset

    manifest = load_dataset(ws.data_dir).manifest
    train = manifest[manifest["split"] == "train"]
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


def run(workspace: Path, epochs: int = 15, scenarios=("random_1pct", "subjects_10", "class"),
        progress=print) -> list[dict[str, Any]]:
    ws = api.init(workspace, epochs=epochs)
    started = time.perf_counter()
    api.train(ws)
    progress(f"base model trained in {time.perf_counter() - started:.0f} s")
    rows = []
    rng = np.random.default_rng(0)
    for scenario in scenarios:
        request = _scenario_request(ws, scenario, rng)
        api.submit(ws, reason=f"bench: {scenario}", **request)
        started = time.perf_counter()
        summary = api.run(ws, prefect=False)
        seconds = time.perf_counter() - started
        rungs = summary["rungs"]
        rows.append({
            "scenario": scenario,
            "n_forget_trained": summary["forget_samples_trained"],
            "seconds_to_version": round(seconds, 1),
            "status": summary["certificate_status"],
            "rungs": rungs,
            "winning_rung": rungs[-1].split(":")[0] if rungs and rungs[-1].endswith("pass") else None,
            "step_seconds": summary["step_seconds"],
            "test_accuracy_before": summary["test_accuracy_before"],
            "test_accuracy_after": summary["test_accuracy_after"],
            "epochs": epochs,
        })
        progress(json.dumps(rows[-1]))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | forgotten training samples | rungs tried | won | status | seconds to version | test acc before → after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['n_forget_trained']} | {', '.join(r['rungs'])} | {r['winning_rung'] or '—'} "
                     f"| {r['status']} | {r['seconds_to_version']} | {r['test_accuracy_before']:.3f} → "
                     f"{r['test_accuracy_after']:.3f} |")
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
