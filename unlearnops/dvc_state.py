"""What ``dvc status`` says about a workspace's pipeline, and why, read from ``dvc.lock`` and ``data.dvc``
without importing DVC (so ``unlearnops status`` stays fast).

After a deletion run the only change DVC reports is ``prepare: changed deps: modified: data``: the
pipeline in ``dvc.yaml`` rebuilds the *base* model, and ``dvc.lock`` records the dataset version it was
last reproduced on. Deletions commit new dataset versions (``data.dvc``) and register unlearned models in
MLflow instead of re-running that pipeline, so the pipeline is out of date by design; ``dvc repro`` would
retrain the base model from scratch on the current data (an exact retrain, outside the deletion flow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _data_md5(lock: dict) -> str | None:
    for dep in (lock.get("stages", {}).get("prepare", {}) or {}).get("deps", []) or []:
        if dep.get("path") == "data":
            return dep.get("md5")
    return None


def pipeline_state(root: Path) -> dict[str, Any]:
    """``{"clean": bool, "changes": [...], "explanation": str}``: the changes ``dvc status`` reports for the
    workspace's pipeline (only the dataset-driven one is known here) and what they mean."""
    root = Path(root)
    lock_path, pointer = root / "dvc.lock", root / "data.dvc"
    if not lock_path.is_file():
        return {"clean": False, "changes": ["not reproduced yet"],
                "explanation": "the base-model pipeline has not run yet (`unlearnops train` runs `dvc repro`)"}
    reproduced_on = _data_md5(yaml.safe_load(lock_path.read_text()) or {})
    current = ((yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}])[0].get("md5")
    if reproduced_on == current:
        return {"clean": True, "changes": [], "explanation": "the base model was built from the current dataset"}
    return {
        "clean": False,
        "changes": ["prepare: changed deps: modified: data"],
        "explanation": (f"expected after deletions: the base model was built from dataset {reproduced_on}, the "
                        f"current version is {current}; deletions register unlearned models in MLflow instead "
                        "of re-running the base-model pipeline (`dvc repro` would retrain from scratch)"),
    }
