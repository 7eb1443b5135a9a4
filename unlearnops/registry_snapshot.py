"""A read-only snapshot of the workspace's own MLflow model registry, read straight from its sqlite file.

``unlearnops status`` needs only names, versions, aliases and tags; importing mlflow costs seconds on a small
machine. This reads the same tables MLflow's SQL store writes (``model_versions``, ``model_version_tags``,
``registered_model_aliases``, MLflow 3.x schema) in a read-only connection. Anything unexpected — another
backend, a missing file, a schema this does not know — returns None, and the caller asks MLflow instead
(``tests/test_cli.py`` checks both answers are the same).

:class:`LocalRegistry` reads one version, its run and its artifact files the same way, for
``unlearnops certificate verify VERSION`` (:func:`unlearnops.model_registry.local_registry`)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

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


@dataclass
class LocalModelVersion:
    """What ``certificate verify`` reads of a model version (the fields of MLflow's ``ModelVersion`` it uses)."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    #: MLflow's ``get_model_version_download_uri``: the storage location, else the source.
    download_uri: str


class VersionNotFound(LookupError):
    """No such (live) version; the message is MLflow's."""


class LocalRegistry:
    """The workspace's own sqlite registry and file artifact store, read without mlflow (``certificate
    verify VERSION``). Reads the rows MLflow's SQL store reads for ``get_model_version``, ``get_run`` and
    ``get_model_version_download_uri``; artifacts are the files under the run's ``file://`` artifact URI.
    :meth:`open` returns None for anything it does not know (the caller asks MLflow instead)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    @classmethod
    def open(cls, db: Path) -> LocalRegistry | None:
        db = Path(db)
        if not db.is_file():
            return None
        registry = cls(db)
        try:
            with registry._connect() as conn:
                for table, needed in (("model_versions", {"name", "version", "run_id", "current_stage", "source",
                                                          "storage_location"}),
                                      ("model_version_tags", {"name", "version", "key", "value"}),
                                      ("runs", {"run_uuid", "artifact_uri"})):
                    if not needed <= {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                        return None
        except sqlite3.Error:
            return None
        return registry

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)

    def model_version(self, name: str, version: str) -> LocalModelVersion:
        """Version ``version`` of ``name`` (VersionNotFound, with MLflow's message, when there is none)."""
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise VersionNotFound(f"Parameter 'version' must be an integer, got '{version}'.") from None
        with self._connect() as conn:
            row = conn.execute(
                "SELECT run_id, storage_location, source FROM model_versions WHERE name = ? AND version = ? AND "
                "(current_stage IS NULL OR current_stage != ?)", (name, number, DELETED_STAGE)).fetchone()
            if row is None:
                raise VersionNotFound(f"Model Version (name={name}, version={number}) not found")
            tags = dict(conn.execute("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                                     (name, number)).fetchall())
        run_id, storage_location, source = row
        return LocalModelVersion(name, str(number), run_id, tags, storage_location or source)

    def run_artifact_uri(self, run_id: str) -> str:
        with self._connect() as conn:
            row = conn.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise FileNotFoundError(f"Run with id={run_id} not found")
        return row[0]

    def artifact_path(self, uri: str) -> Path | None:
        """The local file behind ``runs:/RUN_ID/PATH`` or ``file://…``; None for a URI only MLflow resolves.
        A missing file is a FileNotFoundError (as MLflow's download is an error)."""
        wanted = uri
        if uri.startswith("runs:/"):
            run_id, _, wanted = uri[len("runs:/"):].partition("/")
            uri = f"{self.run_artifact_uri(run_id).rstrip('/')}/{wanted}"
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            return None
        if os.name == "nt":
            from urllib.request import url2pathname

            path = Path(url2pathname(parsed.path))
        else:
            path = Path(unquote(parsed.path))
        if not path.is_file():
            raise FileNotFoundError(f"Failed to download artifacts from path '{wanted}', please ensure that the "
                                    "path is correct.")
        return path
