"""A workspace: one git + DVC repository that holds the dataset versions, the model registry, the request
store and the orchestration state of one project.

Every location derives from the workspace root; the settings live in ``unlearnops.toml`` (pipeline, gates)
and ``params.yaml`` (training, read by ``dvc repro``). ``UNLEARNOPS_WORKSPACE`` names the default workspace;
``UNLEARNOPS_TRACKING_URI`` (MLflow; not ``MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` itself
rewrites) and ``PREFECT_API_URL`` switch the embedded defaults to real servers.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import tomlkit
import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_WORKSPACE = Path("workspace")
CONFIG_FILE = "unlearnops.toml"
PARAMS_FILE = "params.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectSettings(_Strict):
    model_name: str = Field("unlearnops-demo", description="Registered model name in MLflow.")
    model_factory: str = Field(
        "unlearnops.model:SmallCNN", description="Import path of a callable returning an untrained nn.Module."
    )
    dataset: str = Field(
        "unlearnops.datasets:mnist_5k", description="Import path of the dataset builder used by `init`."
    )


class UnlearnSettings(_Strict):
    ladder: list[str] = Field(
        ["slug", "retrain"],
        min_length=1,
        description="Methods tried in order, each from the parent's weights, until one passes every gate.",
    )
    seed: int = 0
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
    confidence: float = Field(0.95, gt=0.5, lt=1)
    label_kl_max: float = Field(
        0.01, ge=0, description="Allowed KL divergence of the label distribution from the previous version."
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


class Settings(_Strict):
    project: ProjectSettings = ProjectSettings()
    unlearn: UnlearnSettings = UnlearnSettings()
    gates: GateSettings = GateSettings()
    locate: LocateSettings = LocateSettings()


class TrainParams(_Strict):
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class Params(BaseModel):
    """``params.yaml``: read by the DVC stages, so a change of any of them re-runs ``dvc repro``."""

    model_config = ConfigDict(extra="allow")
    train: TrainParams = TrainParams()


class Workspace:
    """Paths and settings of one workspace; cheap to construct, creates nothing by itself."""

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("UNLEARNOPS_WORKSPACE") or DEFAULT_WORKSPACE
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
        return self.state_dir / "keys"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("UNLEARNOPS_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    def exists(self) -> bool:
        return (self.root / CONFIG_FILE).is_file() and (self.root / ".git").is_dir()

    # -- settings ----------------------------------------------------------------------------------
    @cached_property
    def settings(self) -> Settings:
        path = self.root / CONFIG_FILE
        if not path.is_file():
            return Settings()
        return Settings.model_validate(tomlkit.parse(path.read_text()).unwrap())

    @cached_property
    def params(self) -> Params:
        path = self.root / PARAMS_FILE
        if not path.is_file():
            return Params()
        return Params.model_validate(yaml.safe_load(path.read_text()) or {})

    def write_settings(self, settings: Settings, params: Params) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        doc = tomlkit.document()
        doc.add(tomlkit.comment("unlearnops workspace settings; see README 'Configuration'."))
        for key, value in settings.model_dump().items():
            doc.add(key, value)
        (self.root / CONFIG_FILE).write_text(tomlkit.dumps(doc))
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
        }
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        os.environ["UNLEARNOPS_WORKSPACE"] = str(self.root)
