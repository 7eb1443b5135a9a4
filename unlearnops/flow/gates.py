"""Step ``gates``: judge one rung's model — data (Great Expectations), membership inference, forget
accuracy and utility gates, each a registered gate plugin — and record before/after metrics. The ``unlearn``
step runs it after every rung of its ladder."""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

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


#: Set by :func:`ladder_evidence` for one climb of a batch's ladder: what every rung's gates share (the parent's
#: evaluations, both manifests) by what it was computed from, computed by the first rung's gates.
_shared_by_rungs: ContextVar[dict | None] = ContextVar("shared_by_rungs", default=None)


@contextmanager
def ladder_evidence() -> Iterator[None]:
    """While active, the gates of a batch's rungs compute the parent's side of their evidence once."""
    token = _shared_by_rungs.set({})
    try:
        yield
    finally:
        _shared_by_rungs.reset(token)


def _parent_side(ws: Workspace, batch: Batch, forget, holdout, test) -> dict:
    """The parent model's evaluations of the forget, held-out and test samples, and the manifests before and
    after the deletion: the same for every rung of one batch."""
    import dvc.api

    from unlearnops.model import evaluate

    key = (str(ws.root), batch.run_id, batch.parent_version, json.dumps(batch.dataset_before, sort_keys=True),
           json.dumps(batch.dataset_after, sort_keys=True), tuple(batch.forget_ids))
    shared = _shared_by_rungs.get()
    if shared is not None and key in shared:
        return shared[key]
    parent = model_registry.load_model(ws, batch.parent_version)
    with dvc.api.open(f"data/{data.MANIFEST_FILE}", repo=str(ws.root), rev=batch.dataset_before["git_rev"],
                      mode="rb") as fh:
        manifest_before = pd.read_parquet(fh)
    side = {"manifest_before": manifest_before,
            "manifest_after": pd.read_parquet(ws.data_dir / data.MANIFEST_FILE),
            "before": {name: evaluate(parent, s.features, s.labels)
                       for name, s in (("forget", forget), ("holdout", holdout), ("test", test))}}
    if shared is not None:
        shared[key] = side
    return side


def gates(ws: Workspace, batch: Batch) -> Batch:
    """Run every registered gate on the parent and the rung's model; sets the batch's metrics, gate
    results, status and caveats."""
    from unlearnops.model import evaluate
    from unlearnops.plugin_manager import load_plugins

    with batch.timed(ws, "gates"):
        settings = ws.settings.gates
        unlearned = unlearned_model(ws, batch)
        forget = forget_samples(ws, batch)
        holdout = split_samples(ws, "holdout", part="gate")  # disjoint from the methods' calibration part
        test = split_samples(ws, "test")
        batch.samples_used["gates"] = {"forget": len(forget), "nonmembers": len(holdout), "test": len(test)}

        side = copy.deepcopy(_parent_side(ws, batch, forget, holdout, test))  # a gate may alter its evidence
        manifest_before, manifest_after = side["manifest_before"], side["manifest_after"]

        metrics: dict[str, float] = {}
        evaluations = {"before": side["before"],
                       "after": {name: evaluate(unlearned, s.features, s.labels)
                                 for name, s in (("forget", forget), ("holdout", holdout), ("test", test))}}
        for tag, ev in evaluations.items():
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
