"""The scheduled deletion flow: every pending request → located → new dataset version → unlearned and
gated (climbing the method ladder) → exported → certified and registered. Each task runs one plain step of ``unlearnops.steps``.

The flow holds the workspace lock for its whole run, so two runs never touch one workspace at once (the
second returns ``{"skipped": ...}`` at once, or after waiting ``wait`` seconds), and it first resumes the
batch an earlier run left unfinished, at its first unfinished step.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from unlearnops import steps
from unlearnops.durable import WorkspaceBusy, workspace_lock
from unlearnops.workspace import Workspace


TASK_NAMES = {"dataset_version": "dataset-version", "unlearn": "unlearn-and-gate", "export": "export-onnx",
              "register": "certify-register", "finalize": "finalize"}


def _step_task(step: str):
    @task(name=TASK_NAMES[step], cache_policy=NO_CACHE, persist_result=False)
    def run(workspace: str, run_id: str, device: str | None = None) -> str:
        ws = Workspace(workspace)
        steps.run_step(ws, steps.Batch.load(ws, run_id), step, device=device)
        return run_id

    return run


STEP_TASKS = {step: _step_task(step) for step in steps.STEPS if step != "locate"}


@task(name="locate", cache_policy=NO_CACHE, persist_result=False)
def locate_task(workspace: str, method: str | None, method_config: dict | None) -> str | None:
    try:
        return steps.open_or_resume(Workspace(workspace), method, method_config).run_id
    except steps.NothingToDo:
        return None


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
    with ExitStack() as held:
        try:
            held.enter_context(workspace_lock(ws.state_dir, wait=wait))
        except WorkspaceBusy as exc:
            return {"skipped": str(exc)}
        run_id = locate_task(workspace, method, method_config)
        if run_id is None:
            return None
        try:
            for step in steps.Batch.load(ws, run_id).remaining():
                STEP_TASKS[step](workspace, run_id, device=device)
        except BaseException as exc:
            steps.mark_failed(ws, steps.Batch.load(ws, run_id), exc)
            raise
        return steps.summary(steps.Batch.load(ws, run_id))
