"""Create a workspace and its base model: dataset version 1, ``dvc repro``, registry version 1 (champion)."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import chdir
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from unlearnops import data, model_registry
from unlearnops.data import Dataset, save_dataset
from unlearnops.keys import create_keys
from unlearnops.datasets import SourceData, SourceError, source_to_dataset
from unlearnops.model import load_weights
from unlearnops.workspace import (
    CONFIG_FILE,
    ConfigError,
    Params,
    Settings,
    Workspace,
    import_object,
    load_settings,
)

WORKSPACE_GITIGNORE = "/.unlearnops/\n/runs/\n"


def init_workspace(
    ws: Workspace,
    settings: Settings | None = None,
    params: Params | None = None,
    limit: int | None = None,
    source: SourceData | None = None,
) -> data.DatasetVersion:
    """Check the project, then make the workspace a git + DVC repo and commit dataset version 1.

    ``settings`` default to the ``unlearnops.toml`` already in the directory (a user may write it first),
    else the demo's; ``params`` likewise from ``params.yaml``. ``source`` gives the data directly (in-memory
    arrays from the Python API) instead of the configured adapter. Everything — settings, imports, data,
    and the model against the data — is checked before the first file is written: a bad configuration
    raises :class:`ConfigError` naming the key and the file, and leaves the directory as it was.
    Safe to call again on an existing workspace: returns the current version and changes nothing.
    """
    if ws.exists() and (ws.root / "data.dvc").is_file():
        return data.current_version(ws)
    config_path = ws.root / CONFIG_FILE
    if settings is None:
        settings = load_settings(config_path) if config_path.is_file() else Settings()
    if params is None:
        params = ws.params if (ws.root / "params.yaml").is_file() else Params.model_validate(
            yaml.safe_load(resources.files("unlearnops.templates").joinpath("params.yaml").read_text())
        )
    features, manifest = build_dataset(ws.root, settings, limit=limit, source=source)
    check_model(ws.root, settings, features, manifest)

    ws.root.mkdir(parents=True, exist_ok=True)
    ws.write_settings(settings, params)
    ws.activate()
    (ws.root / "dvc.yaml").write_text(pipeline_yaml(ws.root, settings))
    (ws.root / ".gitignore").write_text(WORKSPACE_GITIGNORE)
    save_dataset(ws.data_dir, Dataset(features, manifest))
    data.init_repository(ws)
    create_keys(ws)
    return data.commit_dataset_version(
        ws,
        f"dataset version 1: {len(manifest)} samples",
        extra_paths=("dvc.yaml", "params.yaml", "unlearnops.toml", ".dvc", ".dvcignore"),
    )


def build_dataset(
    root: Path, settings: Settings, limit: int | None = None, source: SourceData | None = None
) -> tuple:
    """Run the configured dataset adapter (or take ``source``) and check the result; errors name the key."""
    config_path = Path(root) / CONFIG_FILE
    if source is None:
        from unlearnops.plugin_manager import load_plugins

        adapters = load_plugins().entries["adapter"]
        name = settings.data.adapter
        if name not in adapters:
            raise ConfigError(
                f"{config_path}: data.adapter: unknown dataset adapter {name!r} (known: {', '.join(sorted(adapters))})"
            )
        adapter = adapters[name].obj
        try:
            options = adapter.Options(**settings.data.options)
        except ValidationError as exc:
            problems = "; ".join(
                f"data.options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{config_path}: {problems}") from exc
        try:
            source = adapter.load(options, Path(root), limit)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{config_path}: data (adapter {name!r}): {exc}") from exc
    try:
        return source_to_dataset(source)
    except SourceError as exc:
        raise ConfigError(f"{config_path}: data (adapter {settings.data.adapter!r}): {exc}") from exc


def check_model(root: Path, settings: Settings, features, manifest) -> None:
    """Import the model factory and training function and run the model on two real samples: the output
    must be one row of class logits per sample, with a logit for every label in the data."""
    import torch

    config_path = Path(root) / CONFIG_FILE
    project = settings.project
    loaded = {}
    for key in ("model_factory", "train_function"):
        try:
            loaded[key] = import_object(root, project.python_path, getattr(project, key))
        except ValueError as exc:
            hint = "" if project.python_path else " (modules next to unlearnops.toml need project.python_path = ['.'])"
            raise ConfigError(f"{config_path}: project.{key}: {exc}{hint}") from exc
        if not callable(loaded[key]):
            raise ConfigError(f"{config_path}: project.{key}: {getattr(project, key)!r} is not callable")
    try:
        model = loaded["model_factory"]()
    except Exception as exc:
        raise ConfigError(f"{config_path}: project.model_factory: calling it failed: {exc!r}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{config_path}: project.model_factory returned {type(model).__name__}, not a torch nn.Module")
    sample = torch.as_tensor(features[:2])
    try:
        with torch.no_grad():
            logits = model.eval()(sample)
    except Exception as exc:
        raise ConfigError(
            f"model/data mismatch: {project.model_factory} cannot take features of shape "
            f"{tuple(sample.shape[1:])} from data.adapter {settings.data.adapter!r}: {exc}"
        ) from exc
    n_classes = int(manifest["label"].max()) + 1
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(sample):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model/data mismatch: {project.model_factory} must return (batch, classes) logits, got {shape}")
    if logits.shape[1] < n_classes:
        raise ConfigError(
            f"model/data mismatch: {project.model_factory} outputs {logits.shape[1]} classes but the labels "
            f"go up to {n_classes - 1}"
        )


def reproduce(ws: Workspace) -> None:
    """``dvc repro`` in the workspace (stages run with this interpreter), then commit ``dvc.lock``."""
    from dvc.repo import Repo

    data.route_dvc_logs_to_stderr()
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with chdir(ws.root), Repo(str(ws.root)) as repo:
        repo.reproduce()
    tracked = [p for p in ("dvc.lock", "metrics.json", ".gitignore", "plots") if (ws.root / p).exists()]
    data.git(ws.root, "add", *tracked)
    if data.git(ws.root, "status", "--porcelain", "--", *tracked):
        data.git(ws.root, "commit", "-q", "-m", "dvc repro: base model")


def train_base(ws: Workspace) -> model_registry.RegisteredVersion | str:
    """Reproduce the base model and register it as version 1 with alias ``champion`` (once)."""
    existing = model_registry.resolve_version(ws, "champion")
    if existing is not None:
        return existing
    reproduce(ws)
    model = load_weights(ws.model_factory, ws.root / "models" / "base.pt")
    metrics = json.loads((ws.root / "metrics.json").read_text())
    version = data.current_version(ws)
    registered = _register_base(
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
    log_train_curve(ws, registered.run_id)
    return registered


def log_train_curve(ws: Workspace, run_id: str) -> None:
    """The train stage's per-epoch loss as MLflow metric ``train_loss`` (step = epoch) on the base run."""
    from mlflow.entities import Metric

    from unlearnops.stages import read_curve

    now = int(time.time() * 1000)
    rows = [Metric("train_loss", loss, now, epoch) for epoch, loss in read_curve(ws.root)]
    if rows:
        model_registry.client(ws).log_batch(run_id, metrics=rows)


def model_code_files(root: Path, settings: Settings) -> list[str]:
    """The files (relative to ``root``) of the modules that define the model factory and the training
    function, when they live inside the workspace: the train stage depends on them."""
    import importlib.util

    from unlearnops.workspace import add_python_path

    add_python_path(root, settings.project.python_path)
    files = []
    for import_path in (settings.project.model_factory, settings.project.train_function):
        module = (import_path or "").partition(":")[0]
        try:
            spec = importlib.util.find_spec(module) if module else None
        except (ImportError, ValueError):
            spec = None
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin and origin.is_relative_to(Path(root).resolve()):
            relative = origin.relative_to(Path(root).resolve()).as_posix()
            if relative not in files:
                files.append(relative)
    return files


def pipeline_yaml(root: Path, settings: Settings) -> str:
    """The workspace's ``dvc.yaml``: the template, with the model's own code files as train deps."""
    template = resources.files("unlearnops.templates").joinpath("dvc.yaml").read_text()
    extra = model_code_files(root, settings)
    if not extra:
        return template
    header = "".join(line + "\n" for line in template.splitlines() if line.startswith("#"))
    pipeline = yaml.safe_load(template)
    pipeline["stages"]["train"]["deps"] += extra
    return header + yaml.safe_dump(pipeline, sort_keys=False)


def import_base(ws: Workspace, weights: Path | None = None, model_uri: str | None = None,
                source_tracking_uri: str | None = None) -> model_registry.RegisteredVersion | str:
    """Register an already trained model as version 1 with alias ``champion`` instead of training one.

    ``weights``: a state-dict file for the configured model factory. ``model_uri``: an MLflow model URI
    (``models:/name/3``, ``models:/name@alias``, ``runs:/…``) read from ``source_tracking_uri`` (default:
    the workspace's own tracking URI); its weights are loaded into the configured factory's model, so the
    architectures must match. The model is evaluated on every split of dataset version 1 before it is
    registered; nothing is registered when the weights do not fit.
    """
    from unlearnops.data import load_dataset
    from unlearnops.datasets import SPLITS
    from unlearnops.model import evaluate, file_sha256, state_dict_from_bytes

    if (weights is None) == (model_uri is None):
        raise ConfigError("give exactly one of a weights file or an MLflow model URI to import")
    existing = model_registry.resolve_version(ws, "champion")
    if existing is not None:
        raise ConfigError(f"the workspace already has a champion (version {existing}); import only into a new one")
    if weights is not None:
        if not Path(weights).is_file():
            raise ConfigError(f"weights file {weights} does not exist")
        try:
            state = state_dict_from_bytes(Path(weights).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read weights {weights}: {exc}") from exc
        source, source_sha = str(Path(weights).resolve()), file_sha256(Path(weights))
    else:
        state, source_sha = _state_from_mlflow(model_uri, source_tracking_uri or ws.tracking_uri)
        source = model_uri
    model = ws.model_factory()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the weights do not fit {ws.settings.project.model_factory}: {exc}") from exc
    model.eval()
    dataset = load_dataset(ws.data_dir)
    metrics = {}
    for split in SPLITS:
        part = dataset.split(split)
        metrics[f"{split}_accuracy"] = evaluate(model, part.features, part.labels).accuracy
    version = data.current_version(ws)
    return _register_base(
        ws,
        model,
        run_name="imported-base-model",
        params={"import_source": source},
        metrics=metrics,
        tags={
            "kind": "imported",
            "import_source": source,
            "import_sha256": source_sha,
            "dataset_rev": version.git_rev,
            "dataset_md5": version.dvc_md5,
            "certificate_status": "base",
        },
        aliases=("champion",),
    )



def _state_from_mlflow(model_uri: str, tracking_uri: str) -> tuple[dict, str]:
    """The state dict of the version or run ``model_uri`` names in another registry, read from its
    ``model.safetensors`` run artifact (as unlearnops registers it), never by unpickling an MLflow model;
    also the sha256 of those bytes."""
    import hashlib
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from unlearnops.model import state_dict_from_bytes

    foreign = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        elif model_uri.startswith("models:/"):
            name, _, ref = model_uri.removeprefix("models:/").partition("@")
            if ref:
                run_id = foreign.get_model_version_by_alias(name, ref).run_id
            else:
                name, _, number = name.rpartition("/")
                run_id = foreign.get_model_version(name, number).run_id
        else:
            raise ValueError("expected models:/<name>/<version>, models:/<name>@<alias> or runs:/<run id>")
        mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=model_registry.WEIGHTS_ARTIFACT, dst_path=tmp)).read_bytes()
        return state_dict_from_bytes(data), hashlib.sha256(data).hexdigest()
    except Exception as exc:
        raise ConfigError(f"cannot read {model_registry.WEIGHTS_ARTIFACT} of {model_uri} from {tracking_uri} "
                          f"(only safetensors state dicts are imported, never a pickled model): {exc}") from exc


def _register_base(ws: Workspace, model, *, run_name: str, params: dict, metrics: dict, tags: dict,
                   aliases: tuple[str, ...]) -> model_registry.RegisteredVersion:
    """Register a base or imported model: its safetensors weights and its ONNX export, in one version."""
    import tempfile

    from unlearnops.data import load_dataset
    from unlearnops.export import export_onnx
    from unlearnops.model import save_weights
    from unlearnops.run_metrics import base_metrics, registered_gate_keys

    sample = load_dataset(ws.data_dir).split("holdout").features[:64]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / model_registry.WEIGHTS_ARTIFACT
        save_weights(model, weights)
        onnx_file = export_onnx(model, sample, Path(tmp) / model_registry.ONNX_ARTIFACT).path
        return model_registry.register_model(
            ws, weights, onnx_file, run_name=run_name, params=params,
            metrics=base_metrics(metrics, registered_gate_keys()), tags=tags, aliases=aliases,
            datasets={"training": {"git_rev": tags["dataset_rev"], "dvc_md5": tags["dataset_md5"]}},
            description=f"{tags['kind']} model of dataset revision {tags['dataset_rev'][:10]}: nothing forgotten "
                        "yet; not certified (a base model has no deletion certificate)")
