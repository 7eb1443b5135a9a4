"""SalUn: saliency unlearning (Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency").

1. Weight saliency: the gradient of the forget loss (cross-entropy on the forget set, at the original
   weights); the mask keeps the weights whose |gradient| is in the top ``sparsity`` share over the whole
   model (one global threshold, as the paper's default; ``per_tensor`` thresholds each tensor alone).
2. Random labelling (RL, see ``rl``) restricted to the masked weights: the gradients of unmasked weights are
   zeroed, so they stay exactly as they were.

The paper's default mask keeps 50 % of the weights; the RL part and its defaults are those of ``rl`` (labels
redrawn every batch, forget pass then retain pass, epoch-level checks). Measured on the conformance task
with three task seeds: 104-123 % of the gap closed (forget 0.55-0.63 at held-out 0.62-0.64).
``details`` reports the mask's sparsity per tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from unlearnops.plugin import UnlearnInputs, hookimpl, lazy_module
from unlearnops.plugins.rl import RLConfig, random_label_finetune
from unlearnops.plugins.zoo_common import ClassicMethod, Clock, Data


if TYPE_CHECKING:
    import torch
    from torch.nn import functional as F
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")


class SalUnConfig(RLConfig):
    PAPER = {**RLConfig.PAPER, "lr": 0.013, "sparsity": 0.5}
    PAPER_SOURCE = ("OPTML-Group/Unlearn-Saliency Classification/generate_mask.py, unlearn/RL.py and README "
                    "(mask top 50 %, lr 0.013, batch 256)")

    sparsity: float = Field(0.5, gt=0, le=1, description="Share of weights the saliency mask keeps.")
    per_tensor: bool = Field(False, description="Threshold each tensor alone instead of one global threshold.")


def saliency_mask(model, forget: Data, sparsity: float, per_tensor: bool, batch_size: int = 1024):
    """Parameter name -> 0/1 float mask of the top ``sparsity`` share of |∇ forget loss|."""
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for i in range(0, len(forget), batch_size):
        loss = F.cross_entropy(model(forget.x[i : i + batch_size]), forget.y[i : i + batch_size],
                               reduction="sum") / len(forget)
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[n] += g.abs()
    if per_tensor:
        masks = {}
        for n, g in grads.items():
            k = max(1, round(sparsity * g.numel()))
            threshold = torch.topk(g.flatten(), k).values[-1]
            masks[n] = (g >= threshold).float()
        return masks
    flat = torch.cat([g.flatten() for g in grads.values()])
    k = max(1, round(sparsity * flat.numel()))
    threshold = torch.topk(flat, k).values[-1]
    return {n: (g >= threshold).float() for n, g in grads.items()}


class SalUn(ClassicMethod):
    name = "salun"
    version = "0.2.0"
    Config = SalUnConfig
    needs_retain = True
    supports_gpu = True

    def algorithm(self, model, inputs: UnlearnInputs, config: SalUnConfig, device, clock: Clock):
        mask = saliency_mask(model, Data(inputs.forget, device), config.sparsity, config.per_tensor)
        details, target = random_label_finetune(model, inputs, config, device, clock, mask=mask)
        kept = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values())
        details.update({"mask_kept_share": kept / total,
                        "mask_kept_share_per_tensor": {n: float(m.mean()) for n, m in mask.items()}})
        return details, target


@hookimpl
def register_methods(register):
    register(SalUn())
