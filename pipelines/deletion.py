"""The scheduled deletion flow: every pending request → located → new dataset version → unlearned →
gated → exported → certified and registered. Each task calls one plain function of ``unlearnops.steps``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from unlearnops import steps
from unlearnops.workspace import Workspace


def _step(name: str, function):
    @task(name=name, cache_policy=NO_CACHE, persist_result=False)
    def run(workspace: str, run_id: str) -> str:
        ws = Workspace(workspace)
        function(ws, steps.Batch.load(ws, run_id))
        return run_id

    return run


@task(name="locate", cache_policy=NO_CACHE, persist_result=False)
def locate_task(workspace: str, method: str | None, method_config: dict | None) -> str | None:
    try:
        return steps.locate_pending(Workspace(workspace), method, method_config).run_id
    except steps.NothingToDo:
        return None


cut_dataset_version_task = _step("dataset-version", steps.cut_dataset_version)


@task(name="unlearn-and-gate", cache_policy=NO_CACHE, persist_result=False)
def unlearn_task(workspace: str, run_id: str, device: str | None = None) -> str:
    ws = Workspace(workspace)
    steps.unlearn_with_escalation(ws, steps.Batch.load(ws, run_id), device=device)
    return run_id


export_task = _step("export-onnx", steps.export)
register_task = _step("certify-register", steps.certify_and_register)
finalize_task = _step("finalize", steps.finalize)


@flow(name="deletion-requests", log_prints=False)
def deletion_flow(
    workspace: str, method: str | None = None, method_config: dict[str, Any] | None = None, device: str | None = None
) -> dict[str, Any] | None:
    """Process all pending deletion requests of ``workspace`` as one batch; returns the batch summary,
    or None when nothing is pending."""
    ws = Workspace(workspace)
    run_id = locate_task(workspace, method, method_config)
    if run_id is None:
        return None
    try:
        cut_dataset_version_task(workspace, run_id)
        unlearn_task(workspace, run_id, device=device)
        export_task(workspace, run_id)
        register_task(workspace, run_id)
        finalize_task(workspace, run_id)
    except BaseException as exc:
        steps.mark_failed(ws, steps.Batch.load(ws, run_id), exc)
        raise
    return steps.summary(steps.Batch.load(ws, run_id))
