"""A read-only snapshot of the workspace's own MLflow model registry, read straight from its sqlite file.

``unlearnops status`` needs only names, versions, aliases and tags; importing mlflow costs seconds on a small
machine. This reads the same tables MLflow's SQL store writes (``model_versions``, ``model_version_tags``,
``registered_model_aliases``, MLflow 3.x schema) in a read-only connection. Anything unexpected — another
backend, a missing file, a schema this does not know — returns None, and the caller asks MLflow instead
(``tests/test_cli.py`` checks both answers are the same)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

#: The stage MLflow's SQL store gives a deleted version (the row stays).
DELETED_STAGE = "Deleted_Internal"


def read_registry(db: Path, name: str) -> tuple[dict[str, str], list[dict[str, Any]]] | None:
    """``(aliases, versions)`` of registered model ``name``: ``{alias: version}`` and, per live version in
    order, ``{"version", "tags", "created"}``; nothing registered when there is no database yet (as MLflow
    answers); None when the file cannot be read this way."""
    db = Path(db)
    if not db.exists():
        return {}, []
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            aliases = {alias: str(version) for alias, version in conn.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (name,))}
            rows = conn.execute(
                "SELECT version, creation_time FROM model_versions WHERE name = ? AND "
                "(current_stage IS NULL OR current_stage != ?) ORDER BY version", (name, DELETED_STAGE)).fetchall()
            tags: dict[str, dict[str, str]] = {}
            for version, key, value in conn.execute(
                    "SELECT version, key, value FROM model_version_tags WHERE name = ?", (name,)):
                tags.setdefault(str(version), {})[key] = value
    except sqlite3.Error:
        return None
    return aliases, [{"version": str(v), "tags": tags.get(str(v), {}), "created": created} for v, created in rows]
