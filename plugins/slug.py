"""Single-layer single-gradient unlearning (after Cai et al., "Single Layer Single Gradient Unlearning").

One pass computes the gradients of the forget loss and of the retain loss for every eligible tensor; no
optimizer steps. Layers are ranked by forget importance ‖g_f‖/‖W‖ and retain alignment |cos(g_r, g_f)|;
the Pareto front (high importance, low alignment) are the candidates. For each candidate the step
W = W₀ + λ·‖W₀‖·g_f/‖g_f‖ (gradient ascent on the forget loss, always from the original weights) is sized
by a forward-only search: λ doubles until the forget set's membership signal reaches the held-out level,
then bisects. The stopping rule suits sample-level forgetting: the attack AUC of forget set vs held-out
non-members at ≤ 0.5 + ``auc_tolerance`` while held-out accuracy drops by at most the utility bound.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from unlearnops import hookimpl
from unlearnops.methods import Samples, UnlearnInputs, UnlearnResult


class SlugConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    eligible: Literal["weights", "all"] = Field(
        "weights", description="'weights': tensors with ≥2 dims (no biases/norms); 'all': every parameter."
    )
    initial_step: float = Field(0.01, gt=0, description="First λ tried, relative to ‖W‖.")
    max_step: float = Field(4.0, gt=0, description="Largest λ the doubling phase may reach.")
    bisect_steps: int = Field(6, ge=0, le=30)
    auc_tolerance: float = Field(0.02, ge=0, le=0.5, description="Target: AUC ≤ 0.5 + tolerance.")
    accuracy_tolerance: float = Field(
        0.0, ge=0, le=1, description="Target: forget accuracy ≤ held-out accuracy + tolerance."
    )
    utility_budget: float = Field(
        0.5, gt=0, le=1, description="Share of the utility gate's allowed drop the search may spend."
    )
    max_candidates: int = Field(4, ge=1, description="Pareto-front layers searched, most important first.")
    batch_size: int = Field(512, ge=1)


def _mean_loss_gradients(model: nn.Module, samples: Samples, params: dict[str, nn.Parameter], batch_size, device):
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    x_all = torch.as_tensor(np.asarray(samples.features), dtype=torch.float32)
    y_all = torch.as_tensor(np.asarray(samples.labels), dtype=torch.long)
    n = len(y_all)
    for start in range(0, n, batch_size):
        x, y = x_all[start : start + batch_size].to(device), y_all[start : start + batch_size].to(device)
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        batch_grads = torch.autograd.grad(loss, list(params.values()))
        for name, g in zip(params, batch_grads):
            grads[name] += g
    return grads


def pareto_front(importance: dict[str, float], alignment: dict[str, float]) -> list[str]:
    """Names not dominated by another layer with higher-or-equal importance and lower-or-equal alignment."""
    front = []
    for name in importance:
        dominated = any(
            importance[o] >= importance[name]
            and alignment[o] <= alignment[name]
            and (importance[o] > importance[name] or alignment[o] < alignment[name])
            for o in importance
            if o != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: -importance[n])


@torch.no_grad()
def _scores(model: nn.Module, samples: Samples, device, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample logit-scaled confidence of the true label and correctness."""
    x_all = torch.as_tensor(np.asarray(samples.features), dtype=torch.float32)
    y_all = torch.as_tensor(np.asarray(samples.labels), dtype=torch.long)
    phis, correct = [], []
    for start in range(0, len(y_all), batch_size):
        x, y = x_all[start : start + batch_size].to(device), y_all[start : start + batch_size].to(device)
        logp = F.log_softmax(model(x).double(), dim=1)
        lp = logp.gather(1, y[:, None]).squeeze(1)
        others = logp.scatter(1, y[:, None], float("-inf"))
        phis.append((lp - torch.logsumexp(others, dim=1)).cpu())
        correct.append((logp.argmax(1) == y).cpu())
    return torch.cat(phis).numpy(), torch.cat(correct).numpy()


class Slug:
    name = "slug"
    version = "0.1.0"
    Config = SlugConfig
    needs_retain = True
    supports_gpu = True

    def unlearn(self, model: nn.Module, inputs: UnlearnInputs, config: SlugConfig, device) -> UnlearnResult:
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        model.eval()
        params = {
            n: p for n, p in model.named_parameters() if p.requires_grad and (config.eligible == "all" or p.dim() >= 2)
        }
        g_forget = _mean_loss_gradients(model, inputs.forget, params, config.batch_size, device)
        g_retain = _mean_loss_gradients(model, inputs.retain, params, config.batch_size, device)
        importance, alignment = {}, {}
        for name, p in params.items():
            gf, gr = g_forget[name].flatten(), g_retain[name].flatten()
            importance[name] = float(gf.norm() / p.detach().norm().clamp_min(1e-12))
            alignment[name] = float(torch.abs(F.cosine_similarity(gf, gr, dim=0, eps=1e-12)))
        candidates = pareto_front(importance, alignment)[: config.max_candidates]

        holdout_phi, holdout_correct = _scores(model, inputs.holdout, device, config.batch_size)
        forget_phi, _ = _scores(model, inputs.forget, device, config.batch_size)
        base_holdout_acc = float(holdout_correct.mean())
        member = np.r_[np.ones(len(inputs.forget)), np.zeros(len(inputs.holdout))]
        base_auc = float(roc_auc_score(member, np.r_[forget_phi, holdout_phi]))
        originals = {name: params[name].detach().clone() for name in candidates}

        def evaluate_step(name: str, step: float) -> dict:
            w0 = originals[name]
            direction = g_forget[name] / g_forget[name].norm().clamp_min(1e-12)
            with torch.no_grad():
                params[name].copy_(w0 + step * w0.norm() * direction)
                forget_phi, forget_correct = _scores(model, inputs.forget, device, config.batch_size)
                holdout_phi_now, holdout_correct_now = _scores(model, inputs.holdout, device, config.batch_size)
                params[name].copy_(w0)
            auc = float(roc_auc_score(member, np.r_[forget_phi, holdout_phi_now]))
            drop = base_holdout_acc - float(holdout_correct_now.mean())
            return {
                "step": step,
                "auc": auc,
                "forget_accuracy": float(forget_correct.mean()),
                "utility_drop": drop,
                "reached": auc <= 0.5 + config.auc_tolerance
                and float(forget_correct.mean()) <= base_holdout_acc + config.accuracy_tolerance,
                "utility_ok": drop <= inputs.utility_max_drop * config.utility_budget,
            }

        tried = []
        for name in candidates:
            evals = []
            low, high = 0.0, None
            step = config.initial_step
            best = None
            while step <= config.max_step:  # doubling phase
                result = evaluate_step(name, step)
                evals.append(result)
                if result["reached"] or not result["utility_ok"]:
                    high = step
                    break
                low, best = step, result
                step *= 2
            if high is not None:
                for _ in range(config.bisect_steps):  # bisect to the smallest step that reaches the target
                    mid = (low + high) / 2
                    result = evaluate_step(name, mid)
                    evals.append(result)
                    if result["reached"] or not result["utility_ok"]:
                        high = mid
                    else:
                        low, best = mid, result
                final = evaluate_step(name, high)
                if final["utility_ok"]:
                    best = final
                evals.append(final)
            tried.append(
                {
                    "layer": name,
                    "importance": importance[name],
                    "alignment": alignment[name],
                    "evaluations": len(evals),
                    "chosen": best,
                }
            )

        def rank(entry):
            chosen = entry["chosen"]
            if chosen is None:
                return (2, 0.0)
            if chosen["reached"]:
                return (0, chosen["utility_drop"])
            return (1, chosen["auc"])

        best_entry = min(tried, key=rank) if tried else None
        changed = {}
        if best_entry and best_entry["chosen"]:
            name, step = best_entry["layer"], best_entry["chosen"]["step"]
            w0 = originals[name]
            direction = g_forget[name] / g_forget[name].norm().clamp_min(1e-12)
            with torch.no_grad():
                params[name].copy_(w0 + step * w0.norm() * direction)
            changed[name] = float(step)
        return UnlearnResult(
            model=model,
            method=self.name,
            changed_parameters=changed,
            seconds=time.perf_counter() - started,
            details={
                "base_holdout_accuracy": base_holdout_acc,
                "base_auc": base_auc,
                "candidates": tried,
                "chosen_layer": best_entry["layer"] if best_entry and best_entry["chosen"] else None,
                "target_reached": bool(best_entry and best_entry["chosen"] and best_entry["chosen"]["reached"]),
            },
        )


@hookimpl
def register_methods(register):
    register(Slug())
