"""The human report of one candidate version: a self-contained HTML page (plots embedded as PNG) with
the ROC curves of the membership attack before and after, accuracies, every gate, the rungs tried and the
method's own explanation plot. Logged to MLflow beside the certificate."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

SCORES_FILE = "scores.npz"


def _png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(fig) -> str:
    return _data_uri(_png_bytes(fig))


def roc_points(positive, negative) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of ``positive`` against ``negative`` scores at every distinct
    threshold, from (0, 0) up to (1, 1): the points of scikit-learn's ``roc_curve(drop_intermediate=False)``,
    without importing scikit-learn (2.3 s in a fresh process, for this alone)."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    scores = np.r_[positive, negative]
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    last_of_each = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]  # of each distinct score
    true_positives = np.r_[0.0, np.cumsum(truth)[last_of_each]]
    false_positives = np.r_[0.0, last_of_each + 1 - true_positives[1:]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return false_positives / len(negative), true_positives / len(positive)


def _roc_plot(scores: dict[str, np.ndarray]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    drawn = False
    for tag in ("before", "after"):
        members, nonmembers = scores.get(f"forget_phi_{tag}"), scores.get(f"holdout_phi_{tag}")
        if members is None or len(members) == 0:
            continue
        fpr, tpr = roc_points(members, nonmembers)
        ax.plot(fpr, tpr, label=f"{tag} unlearning")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set(xlabel="false positive rate (held-out)", ylabel="true positive rate (forget set)",
           title="membership attack ROC")
    ax.legend(loc="lower right")
    uri = _png(fig)
    plt.close(fig)
    return uri


def candidates_png(details: dict[str, Any]) -> bytes | None:
    """For methods that report layer candidates (the fast path): importance vs retain alignment, as PNG."""
    candidates = details.get("candidates") if isinstance(details, dict) else None
    if not candidates:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for c in candidates:
        chosen = c["layer"] == details.get("chosen_layer")
        ax.scatter(c["alignment"], c["importance"], marker="*" if chosen else "o", s=140 if chosen else 50)
        ax.annotate(c["layer"], (c["alignment"], c["importance"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set(xlabel="retain alignment |cos(g_retain, g_forget)|", ylabel="forget importance ‖g_forget‖/‖W‖",
           title="fast-path layer candidates (★ chosen)")
    png = _png_bytes(fig)
    plt.close(fig)
    return png


def search_png(details: dict[str, Any]) -> bytes | None:
    """The step search of each candidate layer: the target metric and the utility drop against λ, as PNG."""
    candidates = [c for c in (details.get("candidates") or []) if c.get("trace")]
    if not candidates:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (target_ax, utility_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
    for c in candidates:
        trace = sorted(c["trace"], key=lambda e: e["step"])
        steps = [e["step"] for e in trace]
        key = "auc" if "auc" in trace[0] else "class_accuracy"
        target_ax.plot(steps, [e[key] for e in trace], "o-", ms=3, label=c["layer"])
        utility_ax.plot(steps, [e["utility_drop"] for e in trace], "o-", ms=3, label=c["layer"])
        if c.get("chosen"):
            target_ax.axvline(c["chosen"]["step"], ls=":", lw=1)
    target_ax.set(xscale="log", xlabel="λ (relative to ‖W‖)", ylabel="attack AUC / class accuracy",
                  title="step search: target")
    utility_ax.set(xscale="log", xlabel="λ (relative to ‖W‖)", ylabel="held-out accuracy drop",
                   title="step search: utility")
    target_ax.legend(fontsize=7)
    png = _png_bytes(fig)
    plt.close(fig)
    return png


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    """A cell a person reads: floats to 4 significant digits, mappings as ``key = value`` pairs, lists joined."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def searched_groups(details: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The fast path's searches in a rung's ``details``: (request group number, its details) for every group
    that searched candidate layers — one for a single forget set, one per group of a joint update."""
    groups = details.get("groups") or [details]
    return [(number, group) for number, group in enumerate(groups, start=1) if group.get("candidates")]


def write_report(path: Path, certificate: dict[str, Any], scores: dict[str, np.ndarray],
                 unlearn_details: dict[str, Any]) -> Path:
    """Write the version's report page to ``path`` (drawn in the command's side process when there is one:
    :mod:`unlearnops.side_process`)."""
    from unlearnops import side_process

    path.write_text(side_process.run(report_page, certificate, scores, unlearn_details), encoding="utf-8")
    return path


def report_page(certificate: dict[str, Any], scores: dict[str, np.ndarray], unlearn_details: dict[str, Any]) -> str:
    """The self-contained HTML page of one candidate version, its plots embedded."""
    metrics = certificate.get("metrics", {})
    accuracy_rows = [
        [label, metrics.get(f"{key}_before"), metrics.get(f"{key}_after")]
        for label, key in (("forget accuracy", "forget_accuracy"), ("held-out accuracy", "holdout_accuracy"),
                           ("test accuracy", "test_accuracy"), ("forget loss", "forget_loss"),
                           ("MIA AUC (class-matched)", "mia_auc"))
    ]
    gate_rows = [[g["name"], g["status"], g["summary"], g["thresholds"]] for g in certificate.get("gates", [])]
    rung_rows = [[r["method"], r["status"], r["gates"], r["seconds"]] for r in certificate.get("rungs", [])]
    data_gate = next((g for g in certificate.get("gates", []) if g["name"] == "data"), None)
    sections = [
        f"<h1>Unlearning report — {html.escape(str(certificate.get('status')))}</h1>",
        *([f"<p><b>{html.escape(str(certificate['grounds']))}</b></p>"] if certificate.get("grounds") else []),
        *[f"<p>{html.escape(str(g['summary']))}</p>" for g in certificate.get("gates", [])
          if g.get("name") == "retrain_equivalence" and g.get("summary")],
        f"<p>run {html.escape(str(certificate.get('run_id')))}, issued {html.escape(str(certificate.get('issued_at')))}"
        f"; requests {html.escape(', '.join(certificate.get('requests', [])))}; "
        f"{certificate.get('samples_removed')} samples removed; parent version "
        f"{html.escape(str(certificate.get('parent_model_version')))}.</p>",
        "<h2>Accuracies</h2>", _table(["metric", "before", "after"], accuracy_rows),
        "<h2>Gates</h2>", _table(["gate", "status", "summary", "thresholds"], gate_rows),
    ]
    for caveat in certificate.get("caveats") or []:
        sections.append(f"<p><b>caveat:</b> {html.escape(caveat)}</p>")
    if data_gate:
        sections += ["<h2>Data gate</h2>", _table(list(data_gate["metrics"]), [list(data_gate["metrics"].values())])]
    sections += ["<h2>Rungs tried</h2>", _table(["method", "status", "gates", "seconds"], rung_rows)]
    roc = _roc_plot(scores)
    if roc:
        sections += ["<h2>Membership attack</h2>", f'<img alt="ROC curves" src="{roc}">']
    joint = len(unlearn_details.get("groups") or []) > 1
    for number, group in searched_groups(unlearn_details):
        explanation = candidates_png(group)
        if not explanation:
            continue
        heading = "Method explanation" + (f" — request group {number} ({group.get('n_forget')} samples)"
                                          if joint else "")
        sections += [f"<h2>{html.escape(heading)}</h2>",
                     f'<img alt="layer candidates" src="{_data_uri(explanation)}">']
        search = search_png(group)
        if search:
            sections.append(f'<img alt="step search" src="{_data_uri(search)}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>unlearnops report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")


AUDIT_START, AUDIT_END = "<!-- audit:start -->", "<!-- audit:end -->"


def _audit_roc_plot(record: dict[str, Any]) -> str | None:
    """ROC curves of each audit attack, forget set vs non-members, on the parent and the audited model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    forget, nonmembers = record["per_example"]["forget"], record["per_example"]["nonmembers"]
    if not forget or not nonmembers:
        return None
    attacks = list(record["attacks"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.5 * len(attacks), 4.2), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for tag, style in (("parent", "--"), ("candidate", "-")):
            key = f"{attack}_{tag}"
            fpr, tpr = roc_points([r[key] for r in forget], [r[key] for r in nonmembers])
            ax.plot(fpr, tpr, style, label=f"{tag} (AUC {record['attacks'][attack][tag]['auc']:.3f})")
        ax.plot([1e-3, 1], [1e-3, 1], "k:", label="chance")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1.05), xlabel="false positive rate",
               ylabel="true positive rate", title=f"offline {attack.upper()}")
        ax.legend(loc="lower right", fontsize=8)
    uri = _png(fig)
    plt.close(fig)
    return uri


def audit_section(record: dict[str, Any]) -> str:
    """The report's "Audit" section for an audit record (:mod:`unlearnops.audit`)."""
    rows = []
    for attack, result in record["attacks"].items():
        for tag in ("parent", "candidate"):
            m = result[tag]
            rows.append([attack, tag, m["auc"], "[{:.3f}, {:.3f}]".format(*m["auc_ci"]), m["tpr_at_0.1pct_fpr"],
                         m["tpr_at_1pct_fpr"],
                         result["status"] if tag == "candidate" else ("power" if result["power"] else "no power")])
    refs = record["references"]
    samples = record["samples"]
    parts = [
        AUDIT_START,
        f"<h2>Audit — {html.escape(record['status'])}</h2>",
        f"<p>{html.escape(record['summary'])}. Audited {html.escape(record['audited_at'])} with {refs['k']} "
        f"reference models ({refs['reused']} reused, {refs['trained']} trained); {samples['forget']} forgotten "
        f"training samples vs {samples['nonmembers']} held-out non-members, RMIA population "
        f"{samples['population']}.</p>",
        _table(["attack", "model", "AUC", "AUC CI", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "verdict"], rows),
    ]
    roc = _audit_roc_plot(record)
    if roc:
        parts.append(f'<img alt="audit ROC curves" src="{roc}">')
    parts.append(AUDIT_END)
    return "".join(parts)


def with_audit(page: str, record: dict[str, Any]) -> str:
    """``page`` (a report) with its audit section replaced by (or extended with) the one for ``record``."""
    section = audit_section(record)
    if AUDIT_START in page and AUDIT_END in page:
        head, rest = page.split(AUDIT_START, 1)
        return head + section + rest.split(AUDIT_END, 1)[1]
    return page.replace("</body>", section + "</body>", 1) if "</body>" in page else page + section
