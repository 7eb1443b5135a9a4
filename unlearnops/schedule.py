"""Scheduled deletion runs: the deletion flow served with a cron or interval schedule on a real Prefect API.

Prefect's ephemeral API (what a plain flow call starts) does not fire schedules, so when no
``PREFECT_API_URL`` is configured, ``unlearnops schedule`` starts ``prefect server start`` on 127.0.0.1
(:func:`unlearnops.servers.prefect_server`) with its sqlite database in the workspace's Prefect home. Each
scheduled run batches every pending request; the runner starts at most one run at a time, and the workspace
lock keeps any other run off the workspace.
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
