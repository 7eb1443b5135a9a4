"""The run loop: resume the workspace's unfinished batch or open a new one over the pending requests, then
run its remaining steps in order, all under the workspace lock. The in-process path calls
:func:`process_pending` as it is; the Prefect flow (``pipelines/deletion.py``) calls the same loop with each
step wrapped in a task of the same name."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from unlearnops.durable import workspace_lock
from unlearnops.flow.batch import Batch, NothingToDo, certificate_status, open_batches
from unlearnops.flow.dataset_version import dataset_version
from unlearnops.flow.export import export
from unlearnops.flow.finalize import finalize
from unlearnops.flow.locate import locate, located_summary
from unlearnops.flow.register import register
from unlearnops.flow.unlearn import unlearn
from unlearnops.requests import RequestStore
from unlearnops.workspace import Workspace

#: Step key -> its function, for every step after ``locate`` (which opens the batch: :func:`open_or_resume`).
STEP_FUNCTIONS: dict[str, Callable[[Workspace, Batch], Batch]] = {
    "dataset_version": dataset_version,
    "unlearn": unlearn,
    "export": export,
    "register": register,
    "finalize": finalize,
}

#: Called with ``(batch, step)`` after each step of :func:`process_pending` (``unlearnops run`` prints a line).
StepListener = Callable[[Batch, str], None]
_listeners: list[StepListener] = []


@contextmanager
def step_listener(listener: StepListener) -> Iterator[None]:
    """While active, ``listener(batch, step)`` is called after every step a run completes (both paths)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _notify(batch: Batch, step: str) -> None:
    for listener in list(_listeners):
        listener(batch, step)


OpenBatch = Callable[[Workspace, "str | None", "dict | None", "str | None"], Batch]
RunStep = Callable[[Workspace, Batch, str], Batch]


def open_or_resume(ws: Workspace, method: str | None = None, method_config: dict | None = None,
                   device: str | None = None) -> Batch:
    """The unfinished batch of the workspace if there is one, else a new batch over the pending requests
    (step ``locate``; :class:`~unlearnops.flow.batch.NothingToDo` when none). A method or config asked for
    explicitly replaces a resumed batch's as long as its model is not registered yet (e.g. to retry a batch
    whose method failed)."""
    unfinished = open_batches(ws)
    if not unfinished:
        batch = locate(ws, method, method_config)
    else:
        batch = unfinished[0]
        batch.resumed += 1
        ladder = [method] if method else batch.ladder
        config = batch.requested_config if method_config is None else method_config
        if "register" not in batch.completed and (ladder, config) != (batch.ladder, batch.requested_config):
            batch.ladder, batch.requested_config, batch.method = ladder, config, ladder[0]
            batch.completed = [s for s in batch.completed if s in ("locate", "dataset_version")]
    batch.requested_device = device
    batch.save(ws)
    return batch


def run_step(ws: Workspace, batch: Batch, step: str) -> Batch:
    """Run one step of an open batch unless it is already complete; record its completion."""
    if step in batch.completed:
        return batch
    batch = STEP_FUNCTIONS[step](ws, batch)
    batch.complete(ws, step)
    return batch


def process_pending(
    ws: Workspace,
    method: str | None = None,
    method_config: dict | None = None,
    device: str | None = None,
    wait: float = 0.0,
    *,
    open_batch: OpenBatch = open_or_resume,
    step_runner: RunStep = run_step,
) -> Batch | None:
    """Resume the unfinished batch or open a new one over the pending requests, and run its remaining
    steps, all under the workspace lock (:class:`~unlearnops.durable.WorkspaceBusy` when another run holds
    it longer than ``wait`` seconds). Returns the finished batch, or None when nothing is pending.
    ``open_batch`` and ``step_runner`` let an orchestrator wrap the steps (the Prefect flow runs each as a
    task); a failure marks the batch's requests failed (retryable) and propagates."""
    with workspace_lock(ws.state_dir, wait=wait):
        try:
            batch = open_batch(ws, method, method_config, device)
        except NothingToDo:
            return None
        _notify(batch, "locate")
        try:
            for step in batch.remaining():
                batch = step_runner(ws, batch, step)
                _notify(batch, step)
        except BaseException as exc:
            mark_failed(ws, batch, exc)
            raise
        return batch


def mark_failed(ws: Workspace, batch: Batch | None, error: BaseException) -> None:
    """Record a failed attempt on the batch's requests (retryable: the batch stays open and resumes)."""
    store = RequestStore(ws.requests_db)
    ids = batch.request_ids if batch else [r.id for r in store.pending()]
    store.mark_failed(ids, f"{type(error).__name__}: {error}")


def _gate_counts(batch: Batch) -> str:
    return ", ".join(f"{g.name} {g.status}" for g in batch.gates) or "no gates"


def rung_decision(batch: Batch) -> str:
    """One line on the rung just judged: method, verdict, each gate's status, key numbers."""
    m = batch.metrics
    numbers = "; ".join(f"{label} {m[f'{key}_before']:.3f} → {m[f'{key}_after']:.3f}"
                        for label, key in (("forget acc", "forget_accuracy"), ("test acc", "test_accuracy"),
                                           ("MIA AUC", "mia_auc"))
                        if f"{key}_before" in m and f"{key}_after" in m)
    return f"rung {batch.method}: {batch.status} ({_gate_counts(batch)}); {numbers}"


def step_decision(batch: Batch, step: str) -> str:
    """One line saying what ``step`` decided for the batch, with its numbers (logged by the Prefect tasks and
    printed by ``unlearnops run`` on stderr)."""
    seconds = batch.step_seconds.get(step)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    if step == "locate":
        by = ", ".join(f"{k} {v}" for k, v in located_summary(batch)["by_locator"].items()) or "-"
        return (f"locate: {len(batch.request_ids)} request(s) of kind {batch.kind} → {len(batch.forget_ids)} "
                f"samples (by {by}); ladder {' → '.join(batch.ladder)}; parent version {batch.parent_version}{took}")
    if step == "dataset_version":
        after = (batch.dataset_after or {}).get("git_rev") or ""
        return (f"dataset_version: removed {len(batch.forget_ids)} samples; dataset "
                f"{batch.dataset_before['git_rev'][:10]} → {after[:10]}{took}")
    if step == "unlearn":
        tried = "; ".join(f"{r['method']} {r['status']} ({r['seconds']:.1f} s)" for r in batch.rungs)
        return (f"unlearn: {len(batch.rungs)} rung(s) tried ({tried}); kept {batch.method} → "
                f"{certificate_status(batch.status)}" + (f"; caveats: {'; '.join(batch.caveats)}" if batch.caveats else ""))
    if step == "export":
        onnx = batch.onnx or {}
        diff = onnx.get("max_abs_diff")
        parity = f"ONNX max |diff| vs torch {diff:.2e} on {', '.join(onnx.get('providers') or [])}" if diff is not None \
            else "no ONNX export"
        return f"export: {', '.join(batch.exports) or 'nothing'}; {parity}{took}"
    if step == "register":
        return (f"register: model version {batch.registered_version} (parent {batch.parent_version}), "
                f"certificate {certificate_status(batch.status)}{took}")
    if step == "finalize":
        return f"finalize: {len(batch.request_ids)} request(s) settled ({', '.join(batch.request_ids)})"
    return f"{step}: done{took}"


def summary(batch: Batch) -> dict[str, Any]:
    """The flat summary ``run`` and ``demo`` print (and ``--json`` emits)."""
    m = batch.metrics
    record = batch.unlearn
    return {
        "run_id": batch.run_id,
        "requests": batch.request_ids,
        "samples_removed": len(batch.forget_ids),
        "request_kind": batch.kind,
        "located_by": located_summary(batch)["by_locator"],
        "forget_samples_trained": record.n_forget_trained if record else None,
        "method": batch.method,
        "rungs": [f"{r['method']}: {r['status']}" for r in batch.rungs],
        "device": batch.device,
        "changed_parameters": record.changed_parameters if record else None,
        **{key: m.get(key) for split in ("forget_loss", "forget_accuracy", "holdout_accuracy", "test_accuracy",
                                         "mia_auc") for key in (f"{split}_before", f"{split}_after")},
        "gates": {g.name: g.status for g in batch.gates},
        "caveats": batch.caveats,
        "certificate_status": certificate_status(batch.status),
        "onnx_max_abs_diff": (batch.onnx or {}).get("max_abs_diff"),
        "onnx_providers": (batch.onnx or {}).get("providers"),
        "registered_version": batch.registered_version,
        "parent_version": batch.parent_version,
        "dataset_rev_before": batch.dataset_before["git_rev"],
        "dataset_rev_after": (batch.dataset_after or {}).get("git_rev"),
        "step_seconds": batch.step_seconds,
        "hook_errors": batch.hook_errors,
        "resumed": batch.resumed,
    }
