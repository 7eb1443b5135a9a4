"""Step ``export``: run every configured exporter (``[export] exporters``, ONNX required) on the batch's
unlearned model; each writes ``model<suffix>`` into the run directory and reports the file's sha256."""

from __future__ import annotations

import copy
from typing import Any

from unlearnops.flow.batch import Batch
from unlearnops.flow.samples import split_samples, unlearned_model
from unlearnops.plugin_manager import PluginError
from unlearnops.workspace import Workspace


def configured_exporters(names: list[str], plugins=None) -> dict[str, Any]:
    """The registered exporters called ``names``, in that order (from the loaded plugin set ``plugins``);
    an unknown name or two exporters writing the same suffix is a PluginError."""
    from unlearnops.plugin_manager import load_plugins

    exporters = (plugins or load_plugins()).named("exporter", names)
    suffixes = [e.suffix for e in exporters.values()]
    if len(set(suffixes)) != len(suffixes):
        raise PluginError(f"exporters {names} write the same file suffix twice ({suffixes})")
    return exporters


def export(ws: Workspace, batch: Batch) -> Batch:
    """Export the unlearned model with every configured exporter; a reported sha256 that is not the file's
    is a PluginError. The ONNX file carries the model name, run, parent version, method and dataset
    revision in its metadata."""
    from unlearnops.export import onnx_metadata
    from unlearnops.model import file_sha256

    with batch.timed(ws, "export"), onnx_metadata({
        "model_name": ws.settings.project.model_name, "unlearnops_run": batch.run_id,
        "parent_version": batch.parent_version, "method": batch.method,
        "dataset_rev": (batch.dataset_after or {}).get("git_rev"), "requests": ",".join(batch.request_ids),
    }):
        holdout = split_samples(ws, "holdout", limit=256)
        model = unlearned_model(ws, batch).cpu().eval()
        exports = {}
        for name, exporter in configured_exporters(ws.settings.export.exporters).items():
            path = batch.run_dir(ws) / f"model{exporter.suffix}"
            path.unlink(missing_ok=True)  # a resumed attempt must not find the last one's file
            try:
                record = dict(exporter.export(copy.deepcopy(model), holdout.features, path))
            except Exception as exc:
                raise PluginError(f"exporter {name!r} failed: {exc!r}") from exc
            if not path.is_file():
                raise PluginError(f"exporter {name!r} wrote no {path.name}")
            actual = file_sha256(path)
            if record.get("sha256") != actual:
                raise PluginError(f"exporter {name!r} reported sha256 {record.get('sha256')!r} but "
                                  f"{path.name} has {actual}")
            exports[name] = {**record, "path": path.name}
        batch.exports = exports
    return batch
