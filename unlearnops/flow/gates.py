"""Step ``gates``: judge one rung's model — data (Great Expectations), membership inference, forget
accuracy and utility gates, each a registered gate plugin — and record before/after metrics. The ``unlearn``
step runs it after every rung of its ladder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from unlearnops import data, model_registry
from unlearnops import gates as gate_statistics
from unlearnops.flow.batch import Batch
from unlearnops.flow.samples import forget_samples, split_samples, unlearned_model
from unlearnops.gates import GateEvidence, GateResult
from unlearnops.plugin_manager import PluginError
from unlearnops.report import SCORES_FILE
from unlearnops.workspace import Workspace


def gates(ws: Workspace, batch: Batch) -> Batch:
    """Run every registered gate on the parent and the rung's model; sets the batch's metrics, gate
    results, status and caveats."""
    import dvc.api

    from unlearnops.model import evaluate
    from unlearnops.plugin_manager import load_plugins

    with batch.timed(ws, "gates"):
        settings = ws.settings.gates
        parent = model_registry.load_model(ws, batch.parent_version)
        unlearned = unlearned_model(ws, batch)
        forget = forget_samples(ws, batch)
        holdout = split_samples(ws, "holdout", part="gate")  # disjoint from the methods' calibration part
        test = split_samples(ws, "test")
        batch.samples_used["gates"] = {"forget": len(forget), "nonmembers": len(holdout), "test": len(test)}

        with dvc.api.open(f"data/{data.MANIFEST_FILE}", repo=str(ws.root), rev=batch.dataset_before["git_rev"],
                          mode="rb") as fh:
            manifest_before = pd.read_parquet(fh)
        manifest_after = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)

        metrics: dict[str, float] = {}
        evaluations = {}
        for tag, model in (("before", parent), ("after", unlearned)):
            ev = {name: evaluate(model, s.features, s.labels) for name, s in
                  (("forget", forget), ("holdout", holdout), ("test", test))}
            evaluations[tag] = ev
            for name, e in ev.items():
                metrics[f"{name}_accuracy_{tag}"] = e.accuracy
                metrics[f"{name}_loss_{tag}"] = float(np.mean(e.loss)) if len(e.loss) else float("nan")
            auc = gate_statistics.class_matched_auc(ev["forget"].phi, forget.labels, ev["holdout"].phi,
                                                    holdout.labels) if len(forget) else None
            if auc is not None and np.isfinite(auc):  # NaN: no held-out sample shares a class with the forget set
                metrics[f"mia_auc_{tag}"] = auc
        np.savez(batch.run_dir(ws) / SCORES_FILE,
                 **{f"{split}_phi_{tag}": evaluations[tag][split].phi
                    for tag in ("before", "after") for split in ("forget", "holdout")})
        references, reference_out, note = None, None, {"why": "exact method: not needed"}
        if not batch.exact and len(forget):
            from unlearnops.audit import gate_references
            from unlearnops.progress import model_progress

            references, reference_out, note = gate_references(
                ws, forget.sample_ids, forget.features, forget.labels, settings.references,
                train_missing=settings.train_references,
                progress=model_progress("gates", ws.params.train.epochs))
        batch.samples_used["gates"]["reference_models"] = note
        evidence = GateEvidence(
            manifest_before=manifest_before, manifest_after=manifest_after, forget_ids=batch.forget_ids,
            forget_hashes=batch.forget_hashes, forget_labels=forget.labels, holdout_labels=holdout.labels,
            before=evaluations["before"], after=evaluations["after"], seed=ws.settings.unlearn.seed,
            references=references, reference_out=reference_out, references_note=note, exact=batch.exact,
        )
        results = []
        for name, entry in load_plugins().entries["gate"].items():
            try:
                result = entry.obj.check(evidence, settings)
            except Exception as exc:
                raise PluginError(f"gate {name!r} ({entry.source}) raised: {exc!r}") from exc
            if not isinstance(result, GateResult):
                raise PluginError(f"gate {name!r} ({entry.source}) returned {type(result).__name__}, "
                                  "not a GateResult")
            results.append(result)
        for artifact, content in evidence.artifacts.items():
            (batch.run_dir(ws) / artifact).write_text(json.dumps(content, indent=2, default=str))
        batch.metrics = metrics
        batch.gates = results
        batch.status, batch.caveats = gate_statistics.overall_status(results, settings, exact=batch.exact)
        batch.grounds = gate_statistics.certification_grounds(results, batch.status, batch.exact)
    return batch
