"""Promotion: move alias ``champion`` to a candidate only when everything it claims checks out.

A version is promotable when its certificate verifies (signature, weights, ONNX files, every lineage tag),
says "certified", it has no signed purge record, its ONNX file still matches torch, it descends from the
current champion (otherwise it would bring back data the champion's lineage deleted), it is newer than the
champion, it is not tainted, and it owes no deletion request: every request already cut from the dataset was
forgotten by a certified version in its lineage (:func:`unlearnops.obligations.obligation_problems`). After a
promotion every older version trained on data that has since been deleted is tagged tainted, and the requests
its lineage forgot become ``forgotten``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unlearnops import model_registry
from unlearnops.certificate import CertificateError
from unlearnops.durable import workspace_lock
from unlearnops.export import PARITY_TOLERANCE
from unlearnops.verification import verify_version
from unlearnops.workspace import Workspace


class PromotionError(RuntimeError):
    """Promotion could not be decided (no candidate, registry unreachable)."""


@dataclass
class PromotionDecision:
    version: str
    champion_before: str | None
    promotable: bool = False
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    tainted: list[str] = field(default_factory=list)
    #: Requests the promotion closed (state ``forgotten``).
    forgotten: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"version": self.version, "champion_before": self.champion_before, "promotable": self.promotable,
                "promoted": self.promoted, "reasons": self.reasons, "checked": self.checked,
                "tainted": self.tainted, "forgotten": self.forgotten}


def onnx_parity(ws: Workspace, version: str, run_id: str, samples: int = 16) -> float:
    """Max |ONNX Runtime − torch| of the registered version on random inputs of the exported shape; both
    files are checked against their signed hashes before they are read."""
    import onnxruntime as ort

    from unlearnops.export import available_providers
    from unlearnops.model import predict_logits
    from unlearnops.verification import verified_onnx

    data, _ = verified_onnx(ws, version)
    session = ort.InferenceSession(data, providers=available_providers())
    (spec,) = session.get_inputs()
    shape = [samples] + [int(d) for d in spec.shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    (got,) = session.run(None, {spec.name: x})
    expected = predict_logits(model_registry.load_model(ws, version), x).numpy()
    return float(np.abs(got - expected).max())


def ancestor_problems(ws: Workspace, version: str, champion: str) -> list[str]:
    """The lineage tags walked from ``version`` to ``champion`` are decisions: each version in between must
    verify (signature, signed purge record, every lineage tag equal to its certificate)."""
    from unlearnops.verification import verify_version

    line = model_registry.chain(model_registry.versions_by_number(ws), version)
    problems = []
    for ancestor in line[1:line.index(champion)] if champion in line else []:
        checked = verify_version(ws, ancestor, files=False)
        problems += [f"ancestor v{ancestor}: {p}" for p in checked.problems]
    return problems


def check(ws: Workspace, version: str | None = None) -> PromotionDecision:
    """Decide whether ``version`` (default: the ``candidate`` alias) may become champion; changes nothing."""
    from mlflow.exceptions import MlflowException

    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    version = version or model_registry.resolve_version(ws, "candidate")
    if version is None:
        raise PromotionError("no version given and no 'candidate' alias: nothing to promote")
    champion = model_registry.resolve_version(ws, "champion")
    decision = PromotionDecision(version=version, champion_before=champion)
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        decision.reasons.append(f"no version {version} of {name}: {exc.message}")
        return decision
    tags = model_version.tags

    verification = verify_version(ws, version)
    decision.reasons += verification.problems
    decision.checked += verification.checked
    if verification.status != "certified":
        decision.reasons.append(f"certificate status is {verification.status!r}, not 'certified'")
    else:
        decision.checked.append("certified")
    if verification.purged:  # the signed purge record; the purged tag alone decides nothing
        decision.reasons.append("its weights were purged (`unlearnops purge`)")
    if tags.get(model_registry.TAINTED_TAG) == "true":
        decision.reasons.append(f"tainted: {tags.get(model_registry.TAG_PREFIX + 'tainted_reason', 'trained on deleted data')}")
    if champion is not None:
        if int(version) <= int(champion):
            decision.reasons.append(f"not newer than the champion (v{champion})")
        problems = model_registry.lineage_problems(model_registry.versions_by_number(ws), version, champion)
        problems += ancestor_problems(ws, version, champion)
        decision.reasons += problems
        if not problems:
            decision.checked.append("lineage")
    from unlearnops.obligations import obligation_problems, settle_legacy

    settle_legacy(ws)  # rows of the old 'processed' state, once
    owed = obligation_problems(ws, version)
    decision.reasons += owed
    if not owed:
        decision.checked.append("obligations")
    if "onnx_sha256" in decision.checked and "weights_sha256" in decision.checked:
        try:
            diff = onnx_parity(ws, version, model_version.run_id)
        except (model_registry.IntegrityError, CertificateError) as exc:  # changed since it was verified
            diff = float("inf")
            decision.reasons.append(str(exc))
        if diff == float("inf"):
            pass
        elif diff > PARITY_TOLERANCE:
            decision.reasons.append(f"ONNX parity {diff:.2e} exceeds {PARITY_TOLERANCE:.0e}")
        else:
            decision.checked.append("onnx_parity")
    decision.promotable = not decision.reasons
    return decision


def promote(ws: Workspace, version: str | None = None, check_only: bool = False) -> PromotionDecision:
    """Check and, unless ``check_only``, move ``champion`` to the version and taint its predecessors.
    Holds the workspace lock, so a promotion never lands in the middle of a deletion batch."""
    if check_only:
        return check(ws, version)
    with workspace_lock(ws.state_dir, wait=60.0, purpose="promotion"):
        return _promote_locked(ws, version)


def _promote_locked(ws: Workspace, version: str | None) -> PromotionDecision:
    decision = check(ws, version)
    if not decision.promotable:
        return decision
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    client.set_registered_model_alias(name, "champion", decision.version)
    if model_registry.resolve_version(ws, "candidate") == decision.version:
        client.delete_registered_model_alias(name, "candidate")
    decision.promoted = True
    from unlearnops.obligations import close_on_promotion

    decision.forgotten = close_on_promotion(ws, decision.version)
    for other in client.search_model_versions(f"name='{name}'"):
        if int(other.version) < int(decision.version) and other.tags.get(model_registry.TAINTED_TAG) != "true":
            client.set_model_version_tag(name, other.version, model_registry.TAINTED_TAG, "true")
            client.set_model_version_tag(
                name, other.version, model_registry.TAG_PREFIX + "tainted_reason",
                f"trained on data deleted before v{decision.version} was promoted",
            )
            decision.tainted.append(str(other.version))
    return decision
