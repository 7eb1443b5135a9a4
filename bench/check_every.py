"""How often the classic methods' target and utility guard should be checked (``check_every``): seconds and
average gap to retraining for a few k, the same parents and retrained references for every k.

    python -m unlearnops.bench.check_every [--methods ft,ga] [--ks 1,4,8,16] [--out bench/results/check-every.json]

The CNN at the harness's quick epochs, random 10 % and one class, seeds 0 and 1; one row per (method,
scenario, seed, k) with the machine's load (see :func:`unlearnops.bench.harness.conditions`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from unlearnops.bench.harness import (
    MODELS,
    SCENARIOS,
    _samples,
    conditions,
    forget_mask,
    gaps_to_retrain,
    measure,
    retain_sample,
)

from unlearnops.data import Dataset
from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import seed_everything, train_model
from unlearnops.plugin_manager import load_plugins


def run(methods=("ft", "ga"), ks=(1, 4, 8, 16), seeds=(0, 1), scenarios=("random_10pct", "class"),
        model: str = "cnn", progress=print) -> list[dict]:
    spec = MODELS[model]
    data = Dataset(*spec.dataset())
    train, holdout, test = data.split("train"), _samples(data.split("holdout")), _samples(data.split("test"))
    registry = load_plugins()

    def fit(samples: Samples, seed: int):
        seed_everything(seed)  # before the network is built, as the harness's fit does
        return train_model(spec.factory(), samples.features, samples.labels, epochs=spec.quick_epochs,
                           batch_size=spec.batch_size, lr=spec.lr, seed=seed)

    rows = []
    for seed in seeds:
        original = fit(_samples(train), seed)
        for scenario in scenarios:
            mask = forget_mask(train, scenario, np.random.default_rng(seed * 1000 + SCENARIOS.index(scenario)))
            forget, retain = _samples(train.select(mask)), _samples(train.select(~mask))
            forgotten_class = int(forget.labels[0]) if scenario == "class" else None
            reference = measure(fit(retain, seed), forget, retain, holdout, test, forgotten_class)
            inputs = UnlearnInputs(forget=forget, retain=retain_sample(retain, seed), holdout=holdout,
                                   utility_max_drop=0.02)
            for name in methods:
                method = registry.get(name)
                for k in ks:
                    config = parse_config(method, {"seed": seed, "check_every": k})
                    started = time.perf_counter()
                    result = run_method(method, copy.deepcopy(original), inputs, config, torch.device("cpu"))
                    seconds = time.perf_counter() - started
                    got = measure(result.model, forget, retain, holdout, test, forgotten_class)
                    rows.append({"model": model, "seed": seed, "scenario": scenario, "method": name, "k": k,
                                 "seconds": seconds,
                                 "avg_gap_to_retrain": gaps_to_retrain(got, reference)["avg_gap_to_retrain"],
                                 "steps": result.details.get("steps"), **conditions()})
                    progress(json.dumps(rows[-1]))
    return rows


def markdown(rows: list[dict]) -> str:
    ks = sorted({r["k"] for r in rows})
    lines = ["| method | scenario | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for method, scenario in dict.fromkeys((r["method"], r["scenario"]) for r in rows):
        cells = []
        for k in ks:
            group = [r for r in rows if (r["method"], r["scenario"], r["k"]) == (method, scenario, k)]
            cells.append(f"{statistics.mean(r['seconds'] for r in group):.1f} s · "
                         f"{statistics.mean(r['avg_gap_to_retrain'] for r in group):.3f}")
        lines.append(f"| `{method}` | {scenario} | " + " | ".join(cells) + " |")
    loads = [r["load_average_1m"] for r in rows]
    return "\n".join(lines) + f"\n\n1-minute load average {min(loads):.1f}–{max(loads):.1f} while rows were measured.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ft,ga")
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--out", type=Path, default=Path("bench/results/check-every.json"))
    args = parser.parse_args(argv)
    from unlearnops.bench.cost_growth import write_results

    rows = run(args.methods.split(","), tuple(int(k) for k in args.ks.split(",")))
    print(write_results(rows, args.out, markdown))


if __name__ == "__main__":
    main()
