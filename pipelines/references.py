"""The reference-pool flow: tops the retrain-equivalence gate's reference pool up to K valid models between
deletion batches (stale ones, trained on deleted data, are deleted; the missing indices are trained on the
current training split), so the gates of the next batch find their evidence cached instead of paying for it.

Schedule it beside the deletion flow, e.g. ``references_flow.serve(name="reference-pool", cron="30 * * * *",
parameters={"workspace": "/srv/unlearnops/ws"})`` or as a deployment with a schedule (see the README,
"Where references come from"). It holds the workspace lock while it trains, so it never overlaps a batch.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


@task(name="references-train", cache_policy=NO_CACHE, persist_result=False)
def references_task(workspace: str, k: int | None, device: str | None, wait: float) -> dict[str, Any]:
    from unlearnops import api

    logger = get_run_logger()
    result = api.references_train(workspace, k=k, device=device, wait=wait, progress=None)
    logger.info("reference pool %s/%s valid: %s reused, %s trained in %s s, %s stale deleted",
                result["status"]["valid"], result["k"], result["reused"], result["trained"],
                result["training_seconds"], result["pruned_stale"])
    return result


@flow(name="reference-pool", log_prints=False)
def references_flow(workspace: str, k: int | None = None, device: str | None = None,
                    wait: float = 600.0) -> dict[str, Any]:
    """Top the reference pool of ``workspace`` up to ``k`` valid models (default ``gates.references``)."""
    return references_task(workspace, k, device, wait)
