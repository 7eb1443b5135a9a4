"""The batch record: everything one run of the deletion flow decided and measured, persisted atomically as
``runs/<run_id>/batch.json`` after every step so that a step can be run, tested or retried on its own.

Crash safety: a step's completion is recorded here after its effects are on disk; a run resumes the
workspace's unfinished batch at its first unfinished step (see :mod:`unlearnops.flow.run`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from unlearnops import faults
from unlearnops.durable import atomic_write_text
from unlearnops.gates import GateResult
from unlearnops.workspace import Workspace

#: The steps of a batch, in order; each key is a module of :mod:`unlearnops.flow`, its step function and
#: its Prefect task. ``unlearn`` climbs the method ladder and runs ``gates`` after each rung, so ``gates``
#: has no slot of its own in the batch's completion list.
STEPS = ("locate", "dataset_version", "unlearn", "export", "register", "finalize")
#: Where ``dataset_version`` keeps the deleted samples the unlearning methods need (run directory).
FORGET_FILE = "forget.npz"
#: The deletion run's status meaning "every gate passed".
PASS = "pass"


class NothingToDo(Exception):
    """No pending request has samples left to delete."""


class LocateRecord(BaseModel):
    """How the batch's samples were found: the locators asked, each request's policy, thresholds, notes."""

    #: locator name -> its version.
    locators: dict[str, str] = Field(default_factory=dict)
    #: request id -> its locate policy.
    policies: dict[str, Any] = Field(default_factory=dict)
    #: near-duplicate locator name -> the minimum score it used.
    min_score: dict[str, float] = Field(default_factory=dict)
    max_per_seed: int | None = None
    #: locator name -> what it skipped or dropped, and why.
    notes: dict[str, str] = Field(default_factory=dict)


class UnlearnRecord(BaseModel):
    """What the last ladder rung's method did to the parent's weights."""

    method: str
    method_version: Any = None
    source: str | None = None
    #: Exact methods (retraining) forget by construction.
    exact: bool = False
    #: parameter name -> relative change.
    changed_parameters: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    #: Deleted samples that were in the parent's training split.
    n_forget_trained: int = 0
    details: Any = None


def certificate_status(status: str | None) -> str:
    """The verdict as the certificate, registry tag and summaries spell it."""
    return "certified" if status == PASS else f"not-certified ({status})"


class Batch(BaseModel):
    """Everything one run of the deletion flow decided and measured; persisted after every step."""

    run_id: str
    created_at: str
    request_ids: list[str]
    forget_ids: list[str]
    #: request id -> the sample ids it located (one unlearning group per request).
    forget_groups: dict[str, list[str]] = Field(default_factory=dict)
    forget_hashes: list[str]
    #: Samples of earlier, uncertified batches (already cut) that this batch forgets again: forget sets
    #: accumulate until a certified version covers them. ``carried_runs``: where their copies are.
    carried_ids: list[str] = Field(default_factory=list)
    carried_runs: list[str] = Field(default_factory=list)
    subject_hashes: list[str]
    #: Which locator found which sample: request, sample_id, locator, score, via, locators (see locate.Located).
    located: list[dict[str, Any]] = Field(default_factory=list)
    locate_info: LocateRecord = Field(default_factory=LocateRecord)
    parent_version: str
    #: ``samples``, ``subjects`` or ``class`` (see :func:`unlearnops.flow.locate.request_kind`): picks the ladder.
    kind: str = "samples"
    #: Methods to try in order; each rung starts again from the parent's weights.
    ladder: list[str]
    #: Config overrides asked for the first rung (``unlearnops run --config``).
    requested_config: dict[str, Any] = Field(default_factory=dict)
    #: The rung being (or last) run, and its validated config.
    method: str
    method_config: dict[str, Any] = Field(default_factory=dict)
    #: One record per rung tried: method, config, status, gates, gate_summaries, caveats, seconds (method and
    #: gates), method_seconds (the method's own call), ...
    rungs: list[dict[str, Any]] = Field(default_factory=list)
    #: The device the run asked for (``--device``; None: the GPU when there is one), and the one used.
    requested_device: str | None = None
    device: str | None = None
    dataset_before: dict[str, Any]
    dataset_after: dict[str, Any] | None = None
    unlearn: UnlearnRecord | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[GateResult] = Field(default_factory=list)
    status: str | None = None
    caveats: list[str] = Field(default_factory=list)
    #: On what grounds the verdict certifies or not (:func:`unlearnops.gates.certification_grounds`).
    grounds: str | None = None
    #: exporter name -> its record (``sha256``, ``path`` in the run directory, whatever else it reports).
    exports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    weights_sha256: str | None = None
    registered_version: str | None = None
    #: Failures of after-certification plugin hooks (reported, not fatal: the version is registered).
    hook_errors: list[str] = Field(default_factory=list)
    #: How many samples the method and the gates used, by role (``methods``: forget, retain, calibration;
    #: ``gates``: forget, non-members, test); the two held-out parts are disjoint.
    samples_used: dict[str, Any] = Field(default_factory=dict)
    step_seconds: dict[str, float] = Field(default_factory=dict)
    completed: list[str] = Field(default_factory=list)
    resumed: int = 0

    @property
    def onnx(self) -> dict[str, Any] | None:
        """The ONNX export's record (what promotion checks and serving loads)."""
        return self.exports.get("onnx")

    @property
    def certified(self) -> bool:
        return self.status == PASS

    @property
    def exact(self) -> bool:
        """Whether the last rung's method forgets by construction."""
        return bool(self.unlearn and self.unlearn.exact)

    @property
    def finished(self) -> bool:
        return "finalize" in self.completed

    def remaining(self) -> list[str]:
        return [step for step in STEPS if step not in self.completed]

    def run_dir(self, ws: Workspace) -> Path:
        return ws.runs_dir / self.run_id

    def save(self, ws: Workspace) -> None:
        atomic_write_text(self.run_dir(ws) / "batch.json", self.model_dump_json(indent=2))

    def complete(self, ws: Workspace, step: str) -> None:
        """Record that ``step`` is done (atomically), then honour a fault injected after it."""
        if step not in self.completed:
            self.completed.append(step)
        self.save(ws)
        faults.point(step)

    @contextmanager
    def timed(self, ws: Workspace, step: str):
        """Add the time spent inside the block to ``step_seconds[step]`` and save."""
        started = time.perf_counter()
        yield
        self.step_seconds[step] = round(self.step_seconds.get(step, 0.0) + time.perf_counter() - started, 3)
        self.save(ws)

    @classmethod
    def load(cls, ws: Workspace, run_id: str) -> "Batch":
        return cls.model_validate_json((ws.runs_dir / run_id / "batch.json").read_text())


def open_batches(ws: Workspace) -> list[Batch]:
    """Batches that were started but not finalized (normally none, or the one a crash interrupted)."""
    batches = [Batch.model_validate_json(p.read_text()) for p in sorted(ws.runs_dir.glob("*/batch.json"))]
    return sorted((b for b in batches if not b.finished), key=lambda b: (b.created_at, b.run_id))
