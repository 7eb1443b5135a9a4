"""The demo: build a workspace, train and register the base model, ask to forget a few subjects, run the
deletion flow, and return its summary."""

from __future__ import annotations

import time

import pandas as pd

from unlearnops import data
from unlearnops.intake import submit
from unlearnops.project import init_workspace, train_base
from unlearnops.workspace import Params, Workspace


def demo_subjects(ws: Workspace, count: int) -> list[str]:
    """The first ``count`` subjects (by id) that still own training samples in the current dataset."""
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE, columns=["subject_id", "split"])
    owners = manifest.loc[manifest["split"] == "train", "subject_id"].astype(str)
    return sorted(owners.unique())[:count]


def run_demo(
    ws: Workspace, subjects: int = 30, limit: int | None = None, epochs: int | None = None, progress: bool = True,
    planted_copies: bool = False,
) -> dict:
    """``planted_copies``: the data carries a near-duplicate (shifted, noised or re-encoded, under another
    sample and subject id) of every sample of the first 10 subjects, and the request's policy is ``expand``."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    params = None
    if epochs is not None:
        params = Params()
        params.train.epochs = epochs
    with console.status("creating the workspace (dataset version 1 under DVC)"):
        settings = None
        if planted_copies:
            from unlearnops.workspace import DataSettings, Settings

            settings = Settings(data=DataSettings(adapter="mnist_5k_planted"))
        init_workspace(ws, settings=settings, params=params, limit=limit)
        ws.activate()
    seconds["init"] = round(time.perf_counter() - started, 3)
    console.print(f"workspace {ws.root}")

    started = time.perf_counter()
    console.print("training the base model with `dvc repro` (progress below) ...")
    champion = train_base(ws)
    seconds["train_and_register_base"] = round(time.perf_counter() - started, 3)
    console.print(f"champion: version {champion if isinstance(champion, str) else champion.version}")

    chosen = demo_subjects(ws, subjects)
    stored, _ = submit(ws, {"subject_ids": chosen, "reason": "demo: right to erasure",
                            "policy": "expand" if planted_copies else "exact"})
    console.print(f"request {stored.id}: forget {len(chosen)} subjects (policy {stored.request.policy})")

    from unlearnops.pipelines.deletion import deletion_flow

    with console.status("running the deletion flow (Prefect)"):
        summary = deletion_flow(str(ws.root))
    summary["step_seconds"] = {**seconds, **summary["step_seconds"]}
    summary["workspace"] = str(ws.root)
    return summary
