"""The promotion flow CI runs for each candidate: check everything the certificate claims, then move
``champion`` (or, with ``check_only``, only report)."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from unlearnops import promote
from unlearnops.workspace import Workspace


@task(name="check-and-promote", cache_policy=NO_CACHE, persist_result=False)
def promote_task(workspace: str, version: str | None, check_only: bool) -> dict:
    return promote.promote(Workspace(workspace), version, check_only=check_only).to_dict()


@flow(name="promote-candidate", log_prints=False)
def promote_flow(workspace: str, version: str | None = None, check_only: bool = False) -> dict:
    """Returns the decision: ``promotable``, ``promoted``, the ``reasons`` for a refusal, what was checked."""
    return promote_task(workspace, version, check_only)
