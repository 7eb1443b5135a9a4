"""Scheduled deletion runs: the deletion flow served with a cron or interval schedule on a real Prefect API.

Prefect's ephemeral API (what a plain flow call starts) does not fire schedules, so when no
``PREFECT_API_URL`` is configured, ``unlearnops schedule`` starts ``prefect server start`` on 127.0.0.1
(:func:`unlearnops.servers.prefect_server`) with its sqlite database in the workspace's Prefect home. Each
scheduled run batches every pending request; the runner starts at most one run at a time, and the workspace
lock keeps any other run off the workspace.

At scale the same flow is a deployment of a work pool instead (:func:`deploy`): Prefect workers started with
``prefect worker start --pool NAME`` (GPU machines, see ``deploy/``) pick its runs up.
"""

from __future__ import annotations

from unlearnops.workspace import Workspace


def serve(ws: Workspace, cron: str | None = None, interval: float | None = None) -> None:
    """Serve the deletion flow for ``ws`` on a schedule until interrupted (uses ``PREFECT_API_URL``)."""
    from prefect.deployments.runner import EntrypointType

    from unlearnops.pipelines.deletion import deletion_flow

    deletion_flow.serve(
        name=f"deletion-{ws.settings.project.model_name}",
        cron=cron,
        interval=interval,
        parameters={"workspace": str(ws.root)},
        limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_starting_message=False,
    )


def deploy(ws: Workspace, work_pool: str, cron: str | None = None, interval: float | None = None) -> dict:
    """Register the deletion flow for ``ws`` as deployment ``deletion-<model>`` of ``work_pool`` on the
    Prefect API (``PREFECT_API_URL``), with the schedule if one is given (else runs start on demand); the
    pool's workers run it. Workers need unlearnops installed and the workspace at the same path. Returns the
    deployment's id, name and pool."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    from unlearnops.pipelines.deletion import deletion_flow

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            raise ValueError(f"no work pool {work_pool!r} on the Prefect server: create it first "
                             f"(prefect work-pool create {work_pool} --type process)") from None
    name = f"deletion-{ws.settings.project.model_name}"
    deployment = deletion_flow.to_deployment(
        name=name,
        cron=cron,
        interval=interval,
        parameters={"workspace": str(ws.root)},
        concurrency_limit=1,
        work_pool_name=work_pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id = deployment.apply(work_pool_name=work_pool)
    return {"deployment_id": str(deployment_id), "deployment": f"{deletion_flow.name}/{name}", "work_pool": work_pool}
