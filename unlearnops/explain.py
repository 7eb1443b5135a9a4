"""``unlearnops explain VERSION``: how a registered version came to be — which rungs of the ladder ran, why
each stopped, and for the fast path its layer candidates and step search — read from the version's signed
certificate in the registry (so it works on any machine that can reach the registry)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from unlearnops import model_registry
from unlearnops.workspace import Workspace


class ExplainError(RuntimeError):
    """The version does not exist or carries no certificate."""


def _why(rung: dict[str, Any]) -> str:
    if rung["status"] == "pass":
        return "passed every gate" + (f" ({len(rung['caveats'])} caveat(s))" if rung.get("caveats") else "")
    summaries = rung.get("gate_summaries") or {}
    open_gates = [f"{name}: {status}" + (f" — {summaries[name]}" if name in summaries else "")
                  for name, status in (rung.get("gates") or {}).items() if status not in ("pass", "not_applicable")]
    return "; ".join(open_gates) or rung["status"]


def _candidates(details: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in details.get("candidates") or []:
        chosen = c.get("chosen") or {}
        rows.append({
            "layer": c["layer"],
            "importance": c["importance"],
            "alignment": c["alignment"],
            "evaluations": c.get("evaluations"),
            "cached_activations": c.get("cached_activations"),
            "seconds": c.get("seconds"),
            "step": chosen.get("step"),
            "reached_target": chosen.get("reached"),
            "utility_drop": chosen.get("utility_drop"),
            "chosen": c["layer"] == details.get("chosen_layer"),
        })
    return rows


def certificate_of(ws: Workspace, version: str) -> dict[str, Any]:
    """The signed certificate registered with ``version``."""
    from mlflow.exceptions import MlflowException

    client = model_registry.client(ws)
    try:
        model_version = client.get_model_version(ws.settings.project.model_name, version)
    except MlflowException as exc:
        raise ExplainError(f"no version {version} of {ws.settings.project.model_name}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = model_registry.download_run_artifact(ws, model_version.run_id, "certificate.json", Path(tmp))
        except Exception as exc:
            raise ExplainError(f"version {version} has no certificate (a base or imported model?)") from exc
        return json.loads(Path(path).read_text())


def explain(ws: Workspace, version: str, plots_dir: Path | None = None) -> dict[str, Any]:
    """The story of ``version``: one entry per rung tried (method, verdict, why, seconds, the fast path's
    candidates — per request group, ``groups``, where a joint update searched several); with ``plots_dir``,
    the candidates and step-search plots of each rung (and group) as PNG files."""
    from unlearnops.report import candidates_png, search_png, searched_groups

    signed = certificate_of(ws, version)
    rungs = []
    for index, rung in enumerate(signed.get("rungs") or [], start=1):
        details = rung.get("details") or {}
        # A joint update (several requests in one batch, e.g. a carried one) searched each request group on
        # its own: every group's search is told; the top-level view is the single group's, if there is one.
        groups = details.get("groups") or [details]
        single = details if len(groups) == 1 else {}
        entry = {
            "rung": index,
            "method": rung["method"],
            "status": rung["status"],
            "why": _why(rung),
            "seconds": rung.get("seconds"),
            "gates": rung.get("gates"),
            "changed_parameters": rung.get("changed_parameters"),
            "candidates": _candidates(single),
            "chosen_layer": single.get("chosen_layer"),
            # the fast path found the model already at its target for every request: nothing searched or changed
            "already_at_target": all(bool(g.get("already_at_target")) for g in groups),
            "groups": [{"group": number, "n_forget": g.get("n_forget"), "chosen_layer": g.get("chosen_layer"),
                        "target_reached": g.get("target_reached"),
                        "already_at_target": bool(g.get("already_at_target")), "candidates": _candidates(g)}
                       for number, g in enumerate(groups, start=1)] if details.get("groups") else [],
            "plots": [],
        }
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            for number, group in searched_groups(details):
                suffix = f"-group{number}" if len(groups) > 1 else ""
                for kind, plot in (("candidates", candidates_png), ("search", search_png)):
                    png = plot(group)
                    if png:
                        path = plots_dir / f"v{version}-rung{index}-{rung['method']}{suffix}-{kind}.png"
                        path.write_bytes(png)
                        entry["plots"].append(str(path))
        rungs.append(entry)
    return {
        "version": version,
        "status": signed.get("status"),
        "parent_version": signed.get("parent_model_version"),
        "method": (signed.get("method") or {}).get("name"),
        "samples_removed": signed.get("samples_removed"),
        "caveats": signed.get("caveats") or [],
        "gates": {g["name"]: {"status": g["status"], "summary": g["summary"]} for g in signed.get("gates") or []},
        "rungs": rungs,
    }
