"""The DVC stages of a workspace (``python -m unlearnops.stages prepare|train|evaluate``, run by
``dvc repro`` in the workspace root): prepare the splits, train the base model, evaluate it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from unlearnops.data import load_dataset
from unlearnops.datasets import SPLITS
from unlearnops.method_runner import Samples, call_training
from unlearnops.progress import epoch_progress
from unlearnops.workspace import Workspace

PREPARED = Path("prepared")
BASE_WEIGHTS = Path("models/base.pt")  # safetensors bytes (model.save_weights); the name is the DVC output
METRICS = Path("metrics.json")
#: Per-epoch training loss of the base model (a DVC plot of the train stage; also MLflow metric ``train_loss``).
TRAIN_CURVE = Path("plots/train.csv")


def prepare(ws: Workspace) -> None:
    dataset = load_dataset(ws.data_dir, mmap=False)
    out = ws.root / PREPARED
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        part = dataset.split(split)
        np.savez(out / f"{split}.npz", features=part.features, labels=part.labels,
                 sample_ids=part.manifest["sample_id"].to_numpy(dtype=str))


def _load_split(ws: Workspace, split: str) -> Samples:
    with np.load(ws.root / PREPARED / f"{split}.npz") as arrays:
        return Samples(arrays["features"], arrays["labels"], arrays["sample_ids"].tolist())


def train(ws: Workspace) -> None:
    """Train a fresh model from the configured factory with the configured training function."""
    from unlearnops.model import pick_device, save_weights, seed_everything

    params = ws.params.train
    samples = _load_split(ws, "train")
    started = time.perf_counter()
    curve: list[str] = ["epoch,loss,seconds"]

    with epoch_progress(params.epochs, "train") as report:
        def progress(epoch: int, loss: float) -> None:
            curve.append(f"{epoch},{loss:.6f},{time.perf_counter() - started:.2f}")
            report(epoch, loss)

        seed_everything(params.seed)  # before the factory draws the initial weights
        model = call_training(ws.train_function, ws.model_factory(), samples, device=pick_device(),
                              progress=progress, **params.model_dump())
    save_weights(model, ws.root / BASE_WEIGHTS)
    (ws.root / TRAIN_CURVE).parent.mkdir(parents=True, exist_ok=True)
    (ws.root / TRAIN_CURVE).write_text("\n".join(curve) + "\n")
    print(f"train: {time.perf_counter() - started:.1f} s", file=sys.stderr)


def evaluate(ws: Workspace) -> None:
    from unlearnops.model import evaluate as evaluate_model
    from unlearnops.model import load_weights

    model = load_weights(ws.model_factory, ws.root / BASE_WEIGHTS)
    metrics = {}
    for split in SPLITS:
        samples = _load_split(ws, split)
        metrics[f"{split}_accuracy"] = evaluate_model(model, samples.features, samples.labels).accuracy
    (ws.root / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")


def read_curve(root: Path) -> list[tuple[int, float]]:
    """The ``(epoch, loss)`` rows of the train stage's curve (empty when the stage has not run)."""
    path = Path(root) / TRAIN_CURVE
    if not path.is_file():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    return [(int(epoch), float(loss)) for epoch, loss, *_ in rows]


STAGES = {"prepare": prepare, "train": train, "evaluate": evaluate}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m unlearnops.stages {{{'|'.join(STAGES)}}}")
    STAGES[argv[0]](Workspace(Path.cwd()))


if __name__ == "__main__":
    main()
