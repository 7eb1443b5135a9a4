"""Step ``unlearn``: climb the batch's method ladder. Each rung runs one unlearning method from the parent's
weights (:func:`unlearn_rung`) and is judged by the ``gates`` step; the first rung that passes every gate
ends the climb. Which ladder a batch climbs depends on its request kind (``[unlearn] ladders``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import numpy as np

from unlearnops import model_registry
from unlearnops.flow.batch import PASS, Batch, UnlearnRecord
from unlearnops.flow.gates import gates, ladder_evidence
from unlearnops.flow.samples import forget_samples, split_samples
from unlearnops.method_runner import UnlearnInputs
from unlearnops.workspace import Workspace

#: The request kinds a batch can have (see :func:`unlearnops.flow.locate.request_kind`).
REQUEST_KINDS = ("samples", "subjects", "class")


#: How a rung's two parts run: ``(part, method, function, ws, batch) -> batch`` with ``part`` ``"rung"`` (the
#: method) or ``"gates"``. Plain calls by default; the Prefect flow runs each part as a task (:func:`rung_runner`).
PartRunner = Callable[[str, str, Callable[[Workspace, Batch], Batch], Workspace, Batch], Batch]
_part_runner: ContextVar[PartRunner | None] = ContextVar("unlearnops_rung_runner", default=None)


@contextmanager
def rung_runner(runner: PartRunner) -> Iterator[None]:
    """While active, every ladder rung and every gate group of :func:`unlearn` runs through ``runner``."""
    token = _part_runner.set(runner)
    try:
        yield
    finally:
        _part_runner.reset(token)


def _run_part(part: str, ws: Workspace, batch: Batch, function: Callable[[Workspace, Batch], Batch]) -> Batch:
    runner = _part_runner.get()
    return function(ws, batch) if runner is None else runner(part, batch.method, function, ws, batch)


def ladder_for(ws: Workspace, kind: str) -> list[str]:
    """The workspace's ladder for a request kind (``[unlearn] ladders``, else ``ladder``)."""
    unlearn_settings = ws.settings.unlearn
    return list(unlearn_settings.ladders.get(kind) or unlearn_settings.ladder)


def rung_config(ws: Workspace, method: str, requested: dict | None) -> dict[str, Any]:
    """A rung's config overrides: ``[unlearn] rung_config`` for the method, then what the run asked for."""
    return {**ws.settings.unlearn.rung_config.get(method, {}), **(requested or {})}


def method_and_config(ws: Workspace, name: str, overrides: dict | None, plugins=None):
    """The loaded plugins (``plugins``, else loaded now), the method called ``name`` and its validated config
    (workspace seed by default)."""
    from unlearnops.method_runner import parse_config
    from unlearnops.plugin_manager import load_plugins

    plugins = load_plugins() if plugins is None else plugins
    method = plugins.get(name)
    return plugins, method, parse_config(method, {"seed": ws.settings.unlearn.seed, **(overrides or {})})


def validated_ladder(ws: Workspace, kind: str | None, method: str | None = None,
                     method_config: dict | None = None) -> list[str]:
    """The ladder a batch of ``kind`` climbs (just ``method`` when one is asked for), with every rung's method
    loaded and its config validated (``method_config`` applies to the first rung). ``kind=None`` checks the
    ladders of every request kind (what ``unlearnops run`` does before it knows the kind). Raises
    :class:`~unlearnops.plugin.PluginError` for a missing method or an invalid config."""
    from unlearnops.plugin_manager import load_plugins

    kinds = REQUEST_KINDS if kind is None else (kind,)
    ladders = [[method] if method else ladder_for(ws, k) for k in kinds]
    plugins = load_plugins()  # once for every rung of every ladder (each load rebuilds the plugin manager)
    for ladder in ladders:
        for index, name in enumerate(ladder):
            method_and_config(ws, name, rung_config(ws, name, method_config if index == 0 else None), plugins)
    return ladders[0]


def unlearn(ws: Workspace, batch: Batch) -> Batch:
    """Climb the batch's ladder: unlearn with each method from the parent's weights and run the gates,
    stopping at the first rung that passes. Every rung tried is recorded (and certified with the batch)."""
    from unlearnops.flow.run import rung_decision
    from unlearnops.progress import step_progress

    batch.rungs = []
    with step_progress(len(batch.ladder), "ladder", "rungs") as done, ladder_evidence():
        for index, name in enumerate(batch.ladder):
            batch.method = name
            batch.method_config = rung_config(ws, name, batch.requested_config if index == 0 else None)
            started = time.perf_counter()
            batch = _run_part("rung", ws, batch, unlearn_rung)
            batch = _run_part("gates", ws, batch, gates)
            batch.rungs.append(rung_record(batch, seconds=time.perf_counter() - started))
            batch.save(ws)
            done(f"{rung_decision(batch)} in {batch.rungs[-1]['seconds']:.1f} s")
            if batch.status == PASS:
                break
    return batch


def rung_record(batch: Batch, seconds: float) -> dict[str, Any]:
    """The record of the rung just run: method, config, verdict, each gate's status and summary, time
    (``seconds``: the whole rung, method and gates; ``method_seconds``: the method's own ``unlearn`` call)."""
    record = batch.unlearn
    return {
        "method": batch.method,
        "config": batch.method_config,
        "status": batch.status,
        "gates": {g.name: g.status for g in batch.gates},
        "gate_summaries": {g.name: g.summary for g in batch.gates},
        "caveats": batch.caveats,
        "changed_parameters": len(record.changed_parameters) if record else 0,
        "details": record.details if record else None,
        "seconds": round(seconds, 3),
        "method_seconds": round(record.seconds, 3) if record else 0.0,
    }


def unlearn_rung(ws: Workspace, batch: Batch) -> Batch:
    """Run the batch's current method on the parent model; saves ``unlearned.safetensors`` in the run directory."""
    from unlearnops.model import pick_device, save_weights, seed_everything
    from unlearnops.method_runner import run_method

    with batch.timed(ws, "unlearn"):
        plugins, method, config = method_and_config(ws, batch.method, batch.method_config)
        batch.method_config = config.model_dump()
        source = plugins.sources[method.name]
        seed_everything(config.seed)
        torch_device = pick_device(batch.requested_device)
        forget = forget_samples(ws, batch)
        settings = ws.settings
        ids = np.asarray(forget.sample_ids, dtype=str)
        groups = [np.isin(ids, group) for group in batch.forget_groups.values()]
        inputs = UnlearnInputs(
            forget=forget,
            forget_groups=[g for g in groups if g.any()] or None,
            retain=split_samples(ws, "train", settings.unlearn.retain_sample, settings.unlearn.seed),
            holdout=split_samples(ws, "holdout", part="calibration"),
            utility_max_drop=settings.gates.utility_max_drop,
            retain_full=split_samples(ws, "train"),
            model_factory=ws.model_factory,
            train_params=ws.params.train.model_dump(),
            train_function=ws.train_function,
        )
        model = model_registry.load_model(ws, batch.parent_version)
        plugins.before_unlearn({
            "run_id": batch.run_id, "request_ids": batch.request_ids, "method": method.name,
            "method_version": method.version, "method_source": source, "config": config.model_dump(),
            "device": str(torch_device), "n_forget": len(forget), "dataset_after": batch.dataset_after,
        })
        if len(forget) == 0:
            changed, details, seconds = {}, {"skipped": "no forgotten sample was in the training split"}, 0.0
        else:
            result = run_method(method, model, inputs, config, torch_device)
            model, changed, details, seconds = result.model, result.changed_parameters, result.details, result.seconds
        batch.weights_sha256 = save_weights(model, batch.run_dir(ws) / "unlearned.safetensors")
        batch.device = str(torch_device)
        batch.unlearn = UnlearnRecord(
            method=method.name,
            method_version=method.version,
            source=source,
            # A method that claims exactness but returns the parent's weights unchanged cannot have retrained
            # anything: it is judged as approximate (and the evidence gates refuse it).
            exact=bool(getattr(method, "exact", False)) and (bool(changed) or len(forget) == 0),
            changed_parameters=changed,
            seconds=seconds,
            n_forget_trained=len(forget),
            details=details,
        )
        batch.samples_used["methods"] = {"forget": len(forget), "retain": len(inputs.retain),
                                         "retain_full": len(inputs.retain_full), "calibration": len(inputs.holdout)}
    return batch
