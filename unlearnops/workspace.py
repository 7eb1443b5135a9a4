"""A workspace: one git + DVC repository that holds the dataset versions, the model registry, the request
store and the orchestration state of one project.

Every location derives from the workspace root; the settings live in ``unlearnops.toml`` (pipeline, gates)
and ``params.yaml`` (training, read by ``dvc repro``). ``UNLEARNOPS_WORKSPACE`` names the default workspace;
``UNLEARNOPS_TRACKING_URI`` (MLflow; not ``MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` itself
rewrites) and ``PREFECT_API_URL`` switch the embedded defaults to real servers.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal

import tomlkit
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_WORKSPACE = Path("workspace")
CONFIG_FILE = "unlearnops.toml"
PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A settings file is unreadable or invalid; the message names the file and the key to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class ProjectSettings(_Strict):
    model_name: str = Field(
        "unlearnops-demo", min_length=1, pattern=r"^[\w.-]+$", description="Registered model name in MLflow."
    )
    model_factory: str = Field(
        "unlearnops.model:SmallCNN",
        pattern=IMPORT_PATH,
        description="Import path 'module:callable' returning an untrained nn.Module that maps a float32 batch "
        "of features to class logits.",
    )
    train_function: str = Field(
        "unlearnops.model:train_model",
        pattern=IMPORT_PATH,
        description="Import path of the training function, called as fn(model, features, labels, device=..., "
        "progress=..., **params.yaml[train]) and returning the trained module (plus sample_ids=[...] when its "
        "signature has a sample_ids parameter); used by `dvc repro`, the retraining method and audits.",
    )
    python_path: list[str] = Field(
        [],
        description="Directories (relative to the workspace root) put on sys.path before importing the user's "
        "model factory, training function or dataset adapter, e.g. ['.'] for modules kept in the workspace.",
    )


class DataSettings(_Strict):
    adapter: str = Field(
        "mnist_5k",
        min_length=1,
        description="Dataset adapter used by `init` to build dataset version 1 (`unlearnops plugins list` "
        "shows them: image_folder, tabular, arrays, mnist_5k, sklearn_digits, or one from a plugin).",
    )
    options: dict[str, Any] = Field(
        {}, description="Options of the adapter (paths relative to the workspace root); validated by the adapter."
    )


#: Prefect's setting for how long its temporary (ephemeral) server may take to start, in seconds.
PREFECT_STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


class LocationSettings(_Strict):
    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking/registry URI; empty: sqlite in .unlearnops/ [env UNLEARNOPS_TRACKING_URI wins]."
    )
    prefect_api_url: str = Field(
        "", description="Prefect API URL; empty: a temporary local server per run [env PREFECT_API_URL wins]."
    )
    prefect_startup_seconds: int = Field(
        180, ge=1, description="Seconds the temporary local Prefect server may take to start (Prefect's own default, "
        "20, is too short on a loaded machine) [env PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS wins]."
    )
    signing_key_dir: str = Field(
        "", description="Directory of the Ed25519 signing key, the subject HMAC key and the bearer tokens; relative "
        "to the workspace or absolute (keep it outside the workspace in production); empty: .unlearnops/keys "
        "[env UNLEARNOPS_KEY_DIR wins]."
    )


class UnlearnSettings(_Strict):
    ladder: list[str] = Field(
        ["slug", "retrain"],
        min_length=1,
        description="Methods tried in order, each from the parent's weights, until one passes every gate.",
    )
    ladders: dict[Literal["samples", "subjects", "class"], list[str]] = Field(
        {},
        description="Per request kind, a ladder that replaces `ladder`: 'class' (the batch removes whole classes), "
        "'subjects' (some request names subjects), 'samples' (ids, hashes, near-duplicates only).",
    )
    rung_config: dict[str, dict[str, Any]] = Field(
        {},
        description="Per method, config used when it runs as a rung of a ladder, e.g. a time budget: "
        "{ ft = { max_seconds = 60 } }; validated against the method's Config.",
    )
    seed: int = Field(0, description="Seed of every method's config and of the retain sample.")
    retain_sample: int = Field(512, ge=1, description="Retain samples used for gradients and utility checks.")


class GateSettings(_Strict):
    utility_max_drop: float = Field(0.02, ge=0, le=1, description="Allowed test-accuracy drop vs the parent.")
    mia_margin: float = Field(
        0.1, gt=0, le=0.5, description="Allowed |AUC - reference| for forget set vs held-out non-members."
    )
    forget_accuracy_margin: float = Field(
        0.01, ge=0, le=1, description="Allowed distance of forget accuracy from held-out accuracy."
    )
    certify_without_mia_power: bool = Field(
        True,
        description="Certify when the only open gate is a membership attack that could not detect the parent's "
        "membership either, and forget accuracy passed with power (recorded as a caveat).",
    )
    bootstrap: int = Field(500, ge=50, description="Bootstrap resamples for confidence intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the gates' intervals and tests.")
    label_kl_max: float = Field(
        0.01, ge=0, description="Allowed KL divergence of the label distribution from the previous version."
    )
    min_samples: int = Field(
        10, ge=1, description="Fewest forgotten samples a forgetting gate's statistic judges; below it the gate "
        "is inconclusive (no power), never pass or fail.",
    )
    references: int = Field(
        4, ge=0, le=8, description="Reference models (never trained on the forgotten samples) the "
        "retrain-equivalence gate compares an approximate method's model with; 0: none (approximate methods "
        "are then at most inconclusive, unless heldout_proxy).",
    )
    train_references: bool = Field(
        False, description="Train missing reference models in the gates step of approximate rungs (each on "
        "half of the reference_parts of the new dataset version's training split); false: use only the valid "
        "ones cached in the workspace (`unlearnops references train` or the reference-pool Prefect flow tops "
        "the pool up between batches) (none: approximate rungs on samples or subjects are "
        "inconclusive and the ladder's exact rung certifies, the cheaper proof).",
    )
    reference_parts: int = Field(
        16, ge=2, le=256, description="Parts the training data is split into for reference models, by a keyed "
        "hash of the subject id (all of a subject's samples share a part); each reference trains on half of "
        "them, so deleting one subject makes only the references holding its part stale.",
    )
    equivalence_margin: float = Field(
        0.5, gt=0, description="Allowed mean gap, in reference-model standard deviations, between the "
        "candidate's and the reference models' confidence on the forgotten samples.",
    )
    agreement_margin: float = Field(
        0.05, ge=0, le=1, description="Allowed shortfall of the candidate's label agreement with the reference "
        "models below the reference models' agreement among themselves.",
    )
    heldout_proxy: bool = Field(
        False, description="Opt-in: certify an approximate method without retrain-equivalence evidence on the "
        "held-out proxy gates alone (the certificate states it as a caveat).",
    )


class LocateSettings(_Strict):
    locators: list[str] = Field(
        ["sample_id", "subject_id", "content_sha256", "phash", "embedding"],
        min_length=1,
        description="Registered locators the flow asks, in order of precedence. Near-duplicate locators run only "
        "for requests whose policy is `expand`.",
    )
    min_score: dict[str, float] = Field(
        default_factory=dict,
        description="Per near-duplicate locator, the lowest score that counts as a match (default: the locator's "
        "own `default_min_score`).",
    )
    max_per_seed: int = Field(
        10, ge=1,
        description="A located sample with more near-duplicates than this (from one locator) is ambiguous: the "
        "locator cannot tell copies from look-alikes there, so none of them is taken (and a note says so).",
    )


class ExportSettings(_Strict):
    exporters: list[str] = Field(
        ["onnx"],
        min_length=1,
        description="Registered exporters the flow runs on every unlearned model, in order; each writes "
        "model<suffix> into the run, its sha256 goes into the certificate and the file is attached to the MLflow "
        "run. `onnx` must be among them: promotion checks ONNX parity and `unlearnops serve` serves that file.",
    )

    @field_validator("exporters")
    @classmethod
    def _onnx_included(cls, exporters: list[str]) -> list[str]:
        if "onnx" not in exporters:
            raise ValueError("must include 'onnx' (promotion and serving use the ONNX file)")
        if len(set(exporters)) != len(exporters):
            raise ValueError("lists an exporter twice")
        return exporters


class RequestSettings(_Strict):
    due_days: int = Field(
        30, ge=1, le=3650,
        description="Days from receipt until a deletion request is due (GDPR Art. 12(3): one month); "
        "`unlearnops status --overdue` exits 1 when an open request is past its due date.",
    )


class Settings(_Strict):
    project: ProjectSettings = ProjectSettings()
    data: DataSettings = DataSettings()
    locations: LocationSettings = LocationSettings()
    unlearn: UnlearnSettings = UnlearnSettings()
    gates: GateSettings = GateSettings()
    locate: LocateSettings = LocateSettings()
    export: ExportSettings = ExportSettings()
    requests: RequestSettings = RequestSettings()


class TrainParams(BaseModel):
    """The ``train`` section of ``params.yaml``: passed as keywords to the training function. Keys beyond
    these four are allowed and passed on, for a user's own training function."""

    model_config = ConfigDict(extra="allow")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class Params(BaseModel):
    """``params.yaml``: read by the DVC stages, so a change of any of them re-runs ``dvc repro``."""

    model_config = ConfigDict(extra="allow")
    train: TrainParams = TrainParams()


def find_workspace(start: Path) -> Path | None:
    """The nearest directory from ``start`` upward that is a workspace (an ``unlearnops.toml`` in a git
    repository's root), as git finds its repository; None when there is none."""
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file() and (directory / ".git").is_dir():
            return directory
    return None


class Workspace:
    """Paths and settings of one workspace; cheap to construct, creates nothing by itself."""

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("UNLEARNOPS_WORKSPACE") or find_workspace(Path.cwd()) or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()

    # -- locations -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def state_dir(self) -> Path:
        """Git-ignored local state: request store, registry DB, keys, caches."""
        return self.root / ".unlearnops"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        """Per-run scratch: unlearned weights, ONNX files, certificates before registration."""
        return self.state_dir / "runs"

    @property
    def requests_db(self) -> Path:
        return self.state_dir / "requests.db"

    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def dvc_remote(self) -> Path:
        return self.state_dir / "dvc-remote"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def keys_dir(self) -> Path:
        """Where the keys live: ``UNLEARNOPS_KEY_DIR``, else ``[locations] signing_key_dir`` (relative to the
        workspace or absolute), else ``.unlearnops/keys``."""
        configured = os.environ.get("UNLEARNOPS_KEY_DIR") or self.settings.locations.signing_key_dir
        return (self.root / Path(configured).expanduser()).resolve() if configured else self.state_dir / "keys"

    @property
    def tracking_uri(self) -> str:
        return (
            os.environ.get("UNLEARNOPS_TRACKING_URI")
            or self.settings.locations.mlflow_tracking_uri
            or f"sqlite:///{self.mlflow_db}"
        )

    def exists(self) -> bool:
        return (self.root / CONFIG_FILE).is_file() and (self.root / ".git").is_dir()

    # -- settings ----------------------------------------------------------------------------------
    @cached_property
    def settings(self) -> Settings:
        """``unlearnops.toml`` validated; a :class:`ConfigError` names the file and the bad key."""
        path = self.root / CONFIG_FILE
        if not path.is_file():
            return Settings()
        return load_settings(path)

    @cached_property
    def params(self) -> Params:
        path = self.root / PARAMS_FILE
        if not path.is_file():
            return Params()
        try:
            return Params.model_validate(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            raise ConfigError(validation_message(path, exc)) from exc

    def import_object(self, import_path: str) -> Callable:
        """Resolve ``module:name`` after putting the configured ``project.python_path`` on ``sys.path``."""
        return import_object(self.root, self.settings.project.python_path, import_path)

    @property
    def model_factory(self) -> Callable:
        """The configured callable that builds an untrained model."""
        return self.import_object(self.settings.project.model_factory)

    @property
    def train_function(self) -> Callable:
        """The configured training function (see ``ProjectSettings.train_function``)."""
        return self.import_object(self.settings.project.train_function)

    def write_settings(self, settings: Settings, params: Params) -> None:
        """Write ``unlearnops.toml`` (every key preceded by its description) and ``params.yaml``."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / CONFIG_FILE).write_text(documented_toml(settings))
        (self.root / PARAMS_FILE).write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
        self.__dict__.pop("settings", None)
        self.__dict__.pop("params", None)

    # -- process environment ----------------------------------------------------------------------
    def activate(self) -> None:
        """Point MLflow, Prefect, DVC and GX at this workspace and switch off their telemetry.

        Must run before Prefect is imported: Prefect reads ``PREFECT_HOME`` when its settings load.
        Values already set in the environment win, so real servers can be configured from outside.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        defaults = {
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "GX_ANALYTICS_ENABLED": "false",
            PREFECT_STARTUP_ENV: str(self.settings.locations.prefect_startup_seconds),
        }
        if self.settings.locations.prefect_api_url:
            defaults["PREFECT_API_URL"] = self.settings.locations.prefect_api_url
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        os.environ["UNLEARNOPS_WORKSPACE"] = str(self.root)
        # Registered models are pickled modules: unpickling needs the user's model code importable.
        add_python_path(self.root, self.settings.project.python_path)


def validation_message(path: Path, exc: ValidationError) -> str:
    """One line per invalid key: ``file: section.key: problem (got value)``."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        got = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
        lines.append(f"{path}: {key}: {error['msg']}{got}")
    return "\n".join(lines)


def load_settings(path: Path) -> Settings:
    """Read and validate an ``unlearnops.toml``; every problem raises :class:`ConfigError` naming the key."""
    try:
        document = tomlkit.parse(path.read_text()).unwrap()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # tomlkit raises its own ParseError subclasses
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from exc


def add_python_path(root: Path, python_path: list[str]) -> None:
    """Put the ``python_path`` directories (relative to ``root``) at the front of ``sys.path``, once."""
    for entry in reversed(python_path):
        directory = str((Path(root) / entry).resolve())
        if directory not in sys.path:
            sys.path.insert(0, directory)


def import_object(root: Path, python_path: list[str], import_path: str) -> Callable:
    """Resolve ``module:name`` with the ``python_path`` directories (relative to ``root``) on ``sys.path``."""
    from unlearnops.model import resolve

    add_python_path(root, python_path)
    return resolve(import_path)


def documented_toml(settings: Settings) -> str:
    """``settings`` as TOML text in which a comment with its description precedes every key."""
    import textwrap

    doc = tomlkit.document()
    doc.add(tomlkit.comment("unlearnops workspace settings; README 'Use it on your own model' lists them all."))
    for section, section_field in Settings.model_fields.items():
        table = tomlkit.table()
        values = getattr(settings, section)
        fields = type(values).model_fields.items()
        # Plain keys first, then tables: a key written after a [sub.table] header would belong to that
        # table, and its comment with it. A table's comment goes under its own header.
        for key, field in sorted(fields, key=lambda item: isinstance(getattr(values, item[0]), dict)):
            value = getattr(values, key)
            comments = [tomlkit.comment(line) for line in textwrap.wrap(field.description or "", 100)]
            if isinstance(value, dict):
                sub = tomlkit.table()
                for comment in comments:
                    sub.add(comment)
                for name, item in value.items():
                    sub.add(name, item)
                table.add(key, sub)
                continue
            for comment in comments:
                table.add(comment)
            if value is None:  # TOML has no null: say so, and keep the comment off the next key
                table.add(tomlkit.comment(f"{key} = (not set)"))
                table.add(tomlkit.nl())
            else:
                table.add(key, value)
        doc.add(section, table)
    return tomlkit.dumps(doc)
