"""Step ``register``: sign the batch's certificate, write its report, and register the unlearned model as a
new MLflow model version (alias ``candidate`` only when every gate passed). An interrupted attempt's version
is completed, never registered twice."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from unlearnops import faults, model_registry, run_metrics
from unlearnops.clock import utc_now
from unlearnops.flow.batch import Batch, certificate_status
from unlearnops.flow.locate import located_summary
from unlearnops.report import SCORES_FILE, searched_groups, write_report
from unlearnops.workspace import Workspace

HOLDOUT_RULE = ("held-out split halved by a salted sha256 of the sample id: 'calibration' given to methods, "
                "'gate' used only by gates and audits (unlearnops.datasets.holdout_part)")


def software_versions() -> dict[str, str]:
    """The installed versions of the packages a certificate's result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("unlearnops", "torch", "mlflow", "dvc", "prefect", "great-expectations", "onnx",
                 "onnxruntime-gpu", "pluggy", "numpy", "scikit-learn"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def build_certificate(ws: Workspace, batch: Batch) -> dict[str, Any]:
    """The certificate's contents (unsigned): what was forgotten, how it was found, how it was forgotten,
    what every gate measured, and the hashes of every file the version ships."""
    record = batch.unlearn
    return {
        "issued_at": utc_now(),
        "run_id": batch.run_id,
        "status": certificate_status(batch.status),
        "grounds": batch.grounds,
        "requests": batch.request_ids,
        "subjects_hmac_sha256": batch.subject_hashes,
        "samples_removed": len(batch.forget_ids),
        "located": located_summary(batch),
        "samples_used": {**batch.samples_used, "holdout_rule": HOLDOUT_RULE},
        "dataset_before": batch.dataset_before,
        "dataset_after": batch.dataset_after,
        "parent_model_version": batch.parent_version,
        "request_kind": batch.kind,
        "ladder": batch.ladder,
        "rungs": batch.rungs,
        "method": {
            "name": batch.method,
            "version": record.method_version if record else None,
            "source": record.source if record else None,
            "config": batch.method_config,
            "changed_parameters": record.changed_parameters if record else None,
        },
        "device": batch.device,
        "gates": [g.model_dump() for g in batch.gates],
        "caveats": batch.caveats,
        "gate_settings": ws.settings.gates.model_dump(),
        "seed": ws.settings.unlearn.seed,
        "software": software_versions(),
        "metrics": batch.metrics,
        "weights_sha256": batch.weights_sha256,
        "onnx": {k: v for k, v in (batch.onnx or {}).items() if k != "path"},
        # Other exporters' files (the ONNX one above): name -> record with the file's name and sha256.
        "exports": {name: {("file" if k == "path" else k): v for k, v in record.items()}
                    for name, record in batch.exports.items() if name != "onnx"},
    }


def registered_version(ws: Workspace, batch: Batch) -> str | None:
    """The model version an earlier, interrupted attempt of this batch registered, if any. MLflow runs of
    the attempt that never got a version are deleted so they cannot be mistaken for results."""
    import mlflow

    mlflow_client = model_registry.client(ws)
    experiment = mlflow.get_experiment_by_name(model_registry.EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{model_registry.TAG_PREFIX}run_id` = '{batch.run_id}'"
    )
    found = None
    for run in runs:
        versions = mlflow_client.search_model_versions(f"run_id = '{run.info.run_id}'")
        if versions:
            found = str(versions[0].version)
        else:
            mlflow_client.delete_run(run.info.run_id)
    return found


def version_tags(batch: Batch) -> dict[str, str]:
    """The model-version tags of the batch's version (informational; decisions read the certificate)."""
    return {
        "kind": "unlearned",
        "parent_version": batch.parent_version,
        "dataset_rev": batch.dataset_after["git_rev"],
        "dataset_md5": batch.dataset_after["dvc_md5"],
        "requests": ",".join(batch.request_ids)[:5000],
        "method": batch.method,
        "certificate_status": certificate_status(batch.status),
        "weights_sha256": batch.weights_sha256 or "",
        "onnx_sha256": (batch.onnx or {}).get("sha256", ""),
        "run_id": batch.run_id,
    }


def version_description(batch: Batch) -> str:
    """The model version's description: what was forgotten, from which parent, and the verdict."""
    failed = [g.name for g in batch.gates if g.status != "pass"]
    return (f"Unlearned from v{batch.parent_version} with {batch.method}: {len(batch.forget_ids)} samples of "
            f"{len(batch.request_ids)} deletion request(s) forgotten (run {batch.run_id}). Verdict: "
            f"{certificate_status(batch.status)}" + (f" (gates not passed: {', '.join(failed)})" if failed else "")
            + ". The signed certificate.json of this version's run is authoritative; tags are informational.")


def register(ws: Workspace, batch: Batch) -> Batch:
    """Sign the certificate and register the unlearned model as a new version. Alias ``candidate`` moves
    to it only when every gate passed. A version that an interrupted attempt already registered is
    completed (tags, alias), never registered twice."""
    from unlearnops.certificate import finite_or_null, sign, write
    from unlearnops.keys import signing_key
    from unlearnops.plugin_manager import load_plugins

    with batch.timed(ws, "register"):
        run_dir = batch.run_dir(ws)
        tags = version_tags(batch)
        version = registered_version(ws, batch)
        mlflow_client = model_registry.client(ws)
        name = ws.settings.project.model_name
        if version is None:
            signed = sign(finite_or_null(build_certificate(ws, batch)), signing_key(ws))  # NaN statistics → null
            write(signed, run_dir / "certificate.json")
            (run_dir / "unlearn.json").write_text(
                json.dumps(batch.unlearn.model_dump() if batch.unlearn else None, indent=2, default=str))
            with np.load(run_dir / SCORES_FILE) as arrays:
                scores = {k: arrays[k] for k in arrays.files}
            explained = next((r["details"] for r in batch.rungs if searched_groups(r.get("details") or {})), {})
            write_report(run_dir / "report.html", signed, scores, explained)
            version = model_registry.register_model(
                ws,
                run_dir / "unlearned.safetensors",
                run_dir / batch.exports["onnx"]["path"],
                run_name=f"unlearn-{batch.run_id}",
                params={"method": batch.method, **{f"config.{k}": v for k, v in batch.method_config.items()}},
                metrics=run_metrics.unlearned_metrics(batch.metrics, batch.gates,
                                                      run_metrics.registered_gate_keys()),
                tags=tags,
                artifacts=[run_dir / n for n in ("certificate.json", "gx_validation.json", "unlearn.json",
                                                 "report.html", *(e["path"] for e in batch.exports.values()))],
                nested_runs=[rung_run(index, rung) for index, rung in enumerate(batch.rungs)],
                description=version_description(batch),
                datasets={"training": batch.dataset_after, "parent_training": batch.dataset_before},
            ).version
            faults.point("register.version_created")
        else:  # the version exists; its tags may not (the attempt died inside the registration)
            for key, value in tags.items():
                mlflow_client.set_model_version_tag(name, version, model_registry.TAG_PREFIX + key, value)
        if batch.certified:
            mlflow_client.set_registered_model_alias(name, "candidate", version)
        batch.registered_version = version
        batch.hook_errors = load_plugins().after_certify({
            "run_id": batch.run_id, "request_ids": batch.request_ids, "registered_version": version,
            "status": tags["certificate_status"], "certificate": json.loads((run_dir / "certificate.json").read_text()),
        })
    return batch


def rung_run(index: int, rung: dict[str, Any]) -> dict[str, Any]:
    """One rung of the ladder as a nested MLflow run: its method, config, verdict, gates and time."""
    return {
        "name": f"rung-{index + 1}-{rung['method']}",
        "params": {"method": rung["method"], **{f"config.{k}": v for k, v in (rung.get("config") or {}).items()}},
        "metrics": {"seconds": rung.get("seconds"), "changed_parameters": rung.get("changed_parameters")},
        "tags": {"rung": index + 1, "status": rung["status"],
                 **{f"gate.{name}": status for name, status in (rung.get("gates") or {}).items()}},
    }
