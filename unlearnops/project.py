"""Create a workspace and its base model: dataset version 1, ``dvc repro``, registry version 1 (champion)."""

from __future__ import annotations

import json
import os
import secrets
import sys
from contextlib import chdir
from importlib import resources
from pathlib import Path

import yaml

from unlearnops import data, registry
from unlearnops.data import Dataset, save_dataset
from unlearnops.model import load_weights, resolve
from unlearnops.workspace import Params, Settings, Workspace

WORKSPACE_GITIGNORE = "/.unlearnops/\n/runs/\n"


def init_workspace(
    ws: Workspace, settings: Settings | None = None, params: Params | None = None, limit: int | None = None
) -> data.DatasetVersion:
    """Build the dataset, make the workspace a git + DVC repo and commit dataset version 1.

    Safe to call again on an existing workspace: returns the current version and changes nothing.
    """
    if ws.exists() and (ws.root / "data.dvc").is_file():
        return data.current_version(ws)
    ws.root.mkdir(parents=True, exist_ok=True)
    if settings is None:
        settings = Settings()
    if params is None:
        params = Params.model_validate(
            yaml.safe_load(resources.files("unlearnops.templates").joinpath("params.yaml").read_text())
        )
    ws.write_settings(settings, params)
    ws.activate()
    (ws.root / "dvc.yaml").write_text(resources.files("unlearnops.templates").joinpath("dvc.yaml").read_text())
    (ws.root / ".gitignore").write_text(WORKSPACE_GITIGNORE)
    builder = resolve(settings.project.dataset)
    features, manifest = builder(limit=limit) if limit is not None else builder()
    save_dataset(ws.data_dir, Dataset(features, manifest))
    data.init_repository(ws)
    ensure_keys(ws)
    return data.commit_dataset_version(
        ws,
        f"dataset version 1: {len(manifest)} samples",
        extra_paths=("dvc.yaml", "params.yaml", "unlearnops.toml", ".dvc", ".dvcignore"),
    )


def ensure_keys(ws: Workspace) -> None:
    from unlearnops.certificate import load_or_create_signing_key

    load_or_create_signing_key(ws.keys_dir)
    subject_key = ws.keys_dir / "subject-hmac.key"
    if not subject_key.is_file():
        subject_key.touch(mode=0o600)
        subject_key.write_bytes(secrets.token_bytes(32))


def subject_key(ws: Workspace) -> bytes:
    ensure_keys(ws)
    return (ws.keys_dir / "subject-hmac.key").read_bytes()


def reproduce(ws: Workspace) -> None:
    """``dvc repro`` in the workspace (stages run with this interpreter), then commit ``dvc.lock``."""
    from dvc.repo import Repo

    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with chdir(ws.root), Repo(str(ws.root)) as repo:
        repo.reproduce()
    data.git(ws.root, "add", "dvc.lock", "metrics.json", ".gitignore")
    if data.git(ws.root, "status", "--porcelain", "--", "dvc.lock", "metrics.json"):
        data.git(ws.root, "commit", "-q", "-m", "dvc repro: base model")


def train_base(ws: Workspace) -> registry.RegisteredVersion | str:
    """Reproduce the base model and register it as version 1 with alias ``champion`` (once)."""
    existing = registry.resolve_version(ws, "champion")
    if existing is not None:
        return existing
    reproduce(ws)
    model = load_weights(ws.settings.project.model_factory, ws.root / "models" / "base.pt")
    metrics = json.loads((ws.root / "metrics.json").read_text())
    version = data.current_version(ws)
    return registry.register_model(
        ws,
        model,
        run_name="base-model",
        params=ws.params.train.model_dump(),
        metrics=metrics,
        tags={
            "kind": "base",
            "dataset_rev": version.git_rev,
            "dataset_md5": version.dvc_md5,
            "certificate_status": "base",
        },
        aliases=("champion",),
    )
