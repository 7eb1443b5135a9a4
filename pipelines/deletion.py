"""The scheduled deletion flow: every pending request → located → new dataset version → unlearned and
gated (climbing the method ladder) → exported → certified and registered → finalized.

A thin Prefect layer over :func:`unlearnops.flow.run.process_pending`, the same run loop the in-process path
uses: each step runs as a Prefect task named by its step key (``locate``, ``dataset_version``, ``unlearn``,
``export``, ``register``, ``finalize``), calling the plain step function of :mod:`unlearnops.flow`; inside
``unlearn`` every ladder rung (``rung-<method>``) and its gate group (``gates``) is a task of its own. Each
task logs what it decided (:func:`unlearnops.flow.run.step_decision`); once the batch is open the flow run
is renamed and tagged after it (workspace, run, request kind, methods, requests), and a finished run leaves
a markdown artifact (verdict, gate table, MLflow version, report) and a table artifact of its requests.
Idempotent steps (``export``, ``finalize``) are retried once.

The loop holds the workspace lock for its whole run, so two runs never touch one workspace at once (the
second returns ``{"skipped": ...}`` at once, or after waiting ``wait`` seconds), and it first resumes the
batch an earlier run left unfinished, at its first unfinished step.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from unlearnops.durable import WorkspaceBusy
from unlearnops.flow import run
from unlearnops.flow import unlearn as unlearn_step
from unlearnops.flow.batch import STEPS, Batch, NothingToDo, certificate_status
from unlearnops.workspace import Workspace

#: Steps safe to run again after a failure: they rewrite the same files and settle the same requests.
RETRIED_STEPS = {"export": 1, "finalize": 1}
#: At most this many request ids become tags of a flow run (the table artifact lists them all).
MAX_REQUEST_TAGS = 10


def _step_task(step: str):
    @task(name=step, cache_policy=NO_CACHE, persist_result=False, retries=RETRIED_STEPS.get(step, 0),
          retry_delay_seconds=2)
    def run_one(workspace: str, run_id: str) -> str:
        ws = Workspace(workspace)
        batch = Batch.load(ws, run_id)
        if step == "unlearn":
            with unlearn_step.rung_runner(_part_in_task):
                batch = run.run_step(ws, batch, step)
        else:
            batch = run.run_step(ws, batch, step)
        get_run_logger().info(run.step_decision(batch, step))
        return run_id

    return run_one


STEP_TASKS = {step: _step_task(step) for step in STEPS if step != "locate"}


@task(name="rung", cache_policy=NO_CACHE, persist_result=False)
def rung_task(part: str, function, ws: Workspace, batch: Batch) -> Batch:
    """One part of a ladder rung: the method (``rung-<method>``) or the gate group (``gates``)."""
    batch = function(ws, batch)
    if part == "gates":
        get_run_logger().info(run.rung_decision(batch))
    else:
        record = batch.unlearn
        get_run_logger().info(
            f"rung {batch.method}: unlearned {record.n_forget_trained if record else 0} training samples on "
            f"{batch.device}, {len(record.changed_parameters) if record else 0} parameter tensors changed "
            f"in {record.seconds if record else 0:.1f} s")
    return batch


def _part_in_task(part: str, method: str, function, ws: Workspace, batch: Batch) -> Batch:
    name = f"rung-{method}" if part == "rung" else "gates"
    return rung_task.with_options(name=name, task_run_name=f"{name} ({method})")(part, function, ws, batch)


@task(name="locate", cache_policy=NO_CACHE, persist_result=False)
def locate_task(workspace: str, method: str | None, method_config: dict | None, device: str | None) -> str | None:
    try:
        batch = run.open_or_resume(Workspace(workspace), method, method_config, device)
    except NothingToDo:
        get_run_logger().info("locate: no pending deletion requests")
        return None
    get_run_logger().info(run.step_decision(batch, "locate"))
    return batch.run_id


def run_tags(ws: Workspace, batch: Batch) -> list[str]:
    """The flow run's tags for a batch: workspace, run, request kind, ladder methods, requests."""
    return (["unlearnops", f"workspace:{ws.root.name}", f"run:{batch.run_id}", f"kind:{batch.kind}",
             f"requests:{len(batch.request_ids)}"]
            + [f"method:{m}" for m in batch.ladder]
            + [f"request:{r}" for r in batch.request_ids[:MAX_REQUEST_TAGS]])


def run_name(ws: Workspace, batch: Batch) -> str:
    """The flow run's name for a batch (workspace, how many requests of which kind, run id)."""
    return f"{ws.root.name}: {len(batch.request_ids)} {batch.kind} request(s), run {batch.run_id}"


def _name_flow_run(ws: Workspace, batch: Batch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=run_name(ws, batch),
                               tags=sorted({*(flow_run.tags or []), *run_tags(ws, batch)}))


def _open_in_task(ws: Workspace, method, method_config, device) -> Batch:
    run_id = locate_task(str(ws.root), method, method_config, device)
    if run_id is None:
        raise NothingToDo("no pending deletion requests")
    batch = Batch.load(ws, run_id)
    _name_flow_run(ws, batch)
    return batch


def _step_in_task(ws: Workspace, batch: Batch, step: str) -> Batch:
    STEP_TASKS[step](str(ws.root), batch.run_id)
    return Batch.load(ws, batch.run_id)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def run_markdown(ws: Workspace, batch: Batch) -> str:
    """The run's markdown artifact: verdict, gate table, rungs, MLflow model version and the report's path."""
    name = ws.settings.project.model_name
    lines = [
        f"# Deletion run {batch.run_id}",
        "",
        f"**Verdict: {certificate_status(batch.status)}** — method `{batch.method}` "
        f"({len(batch.rungs)} rung(s) tried: {', '.join(r['method'] + ' ' + r['status'] for r in batch.rungs)}).",
        "",
        f"- requests: {len(batch.request_ids)} ({batch.kind}); samples removed: {len(batch.forget_ids)}",
        f"- MLflow model version: `models:/{name}/{batch.registered_version}` (parent {batch.parent_version})",
        f"- dataset: `{batch.dataset_before['git_rev'][:10]}` → `{((batch.dataset_after or {}).get('git_rev') or '')[:10]}`",
        f"- report: `{batch.run_dir(ws) / 'report.html'}`",
        "",
        "| gate | status | summary |",
        "|---|---|---|",
        *(f"| {g.name} | {g.status} | {_cell(g.summary)} |" for g in batch.gates),
    ]
    for caveat in batch.caveats:
        lines.append(f"\n> caveat: {caveat}")
    return "\n".join(lines) + "\n"


def request_rows(ws: Workspace, batch: Batch) -> list[dict[str, Any]]:
    """The run's table artifact: one row per request (no subject ids: those never leave the workspace)."""
    from unlearnops.requests import RequestStore

    store = RequestStore(ws.requests_db)
    rows = []
    for request_id in batch.request_ids:
        stored = store.get(request_id)
        rows.append({"request": stored.id, "state": stored.state, "received": stored.created_at,
                     "samples": len(stored.located_sample_ids), "dataset_rev": (stored.dataset_rev or "")[:10],
                     "model_version": stored.model_version or "", "attempts": stored.attempts})
    return rows


def _artifacts(ws: Workspace, batch: Batch) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(run_markdown(ws, batch), key="deletion-run",
                             description=f"verdict and gates of deletion run {batch.run_id}")
    create_table_artifact(request_rows(ws, batch), key="deletion-requests",
                          description=f"the requests of deletion run {batch.run_id}")


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
        get_run_logger().info(f"skipped: {exc}")
        return {"skipped": str(exc)}
    if batch is None:
        return None
    _artifacts(ws, batch)
    get_run_logger().info(f"run {batch.run_id}: {certificate_status(batch.status)}; model version "
                          f"{batch.registered_version}; report {batch.run_dir(ws) / 'report.html'}")
    return run.summary(batch)
