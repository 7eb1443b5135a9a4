"""The scheduled deletion flow: every pending request → located → new dataset version → unlearned and
gated (climbing the method ladder) → exported → certified and registered → finalized.

A thin Prefect layer over :func:`unlearnops.flow.run.process_pending`, the same run loop the in-process path
uses: each step runs as a Prefect task named by its step key (``locate``, ``dataset_version``, ``unlearn``,
``export``, ``register``, ``finalize``), calling the plain step function of :mod:`unlearnops.flow`.

The loop holds the workspace lock for its whole run, so two runs never touch one workspace at once (the
second returns ``{"skipped": ...}`` at once, or after waiting ``wait`` seconds), and it first resumes the
batch an earlier run left unfinished, at its first unfinished step.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from unlearnops.durable import WorkspaceBusy
from unlearnops.flow import run
from unlearnops.flow.batch import STEPS, Batch, NothingToDo
from unlearnops.workspace import Workspace


def _step_task(step: str):
    @task(name=step, cache_policy=NO_CACHE, persist_result=False)
    def run_one(workspace: str, run_id: str) -> str:
        ws = Workspace(workspace)
        run.run_step(ws, Batch.load(ws, run_id), step)
        return run_id

    return run_one


STEP_TASKS = {step: _step_task(step) for step in STEPS if step != "locate"}


@task(name="locate", cache_policy=NO_CACHE, persist_result=False)
def locate_task(workspace: str, method: str | None, method_config: dict | None, device: str | None) -> str | None:
    try:
        return run.open_or_resume(Workspace(workspace), method, method_config, device).run_id
    except NothingToDo:
        return None


def _open_in_task(ws: Workspace, method, method_config, device) -> Batch:
    run_id = locate_task(str(ws.root), method, method_config, device)
    if run_id is None:
        raise NothingToDo("no pending deletion requests")
    return Batch.load(ws, run_id)


def _step_in_task(ws: Workspace, batch: Batch, step: str) -> Batch:
    STEP_TASKS[step](str(ws.root), batch.run_id)
    return Batch.load(ws, batch.run_id)


@flow(name="deletion-requests", log_prints=False)
def deletion_flow(
    workspace: str,
    method: str | None = None,
    method_config: dict[str, Any] | None = None,
    device: str | None = None,
    wait: float = 0.0,
) -> dict[str, Any] | None:
    """Process all pending deletion requests of ``workspace`` as one batch (or finish the batch a crash
    interrupted); returns the batch summary, None when nothing is pending, or ``{"skipped": reason}`` when
    another run holds the workspace."""
    ws = Workspace(workspace)
    try:
        batch = run.process_pending(ws, method, method_config, device, wait,
                                    open_batch=_open_in_task, step_runner=_step_in_task)
    except WorkspaceBusy as exc:
        return {"skipped": str(exc)}
    return None if batch is None else run.summary(batch)
