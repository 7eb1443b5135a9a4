"""Boundary Shrink (Chen, Gao, Zhou, Liu & Wang, CVPR 2023, "Boundary Unlearning").

Push forget samples across their nearest decision boundary. For every forget sample an FGSM step of size ε
against its true label, on the original model, finds a neighbour; the sample's new label is the class the
original model gives that neighbour (the reference implementation's argmax: its own label when the step
crossed no boundary). The model is then fine-tuned on the forget samples alone with those labels, so only the
boundaries around them move.

Sample-level forgetting is where this fits well: a memorized sample sits in a small pocket of its own label,
so a small step crosses out of it, while a typical sample's neighbourhood keeps its label and so does it —
the retrained model's behaviour. For class forgetting every sample must leave the class, so a sample whose
step crossed nothing takes the highest other class at its neighbour (``uncrossed="auto"``: ``keep`` for
samples, ``nearest`` for a class).

The paper (class forgetting on CIFAR-10 / VGGFace2) uses ε = 0.1 on [0, 1] pixels (about 0.4 of a CIFAR
pixel's standard deviation) and SGD at lr 1e-5 for a few epochs on large networks. Here ε is in units of each
feature's standard deviation over the forget set (``scale="std"``; ``input`` for raw units), default 0.15,
and SGD at lr 4e-3 (momentum 0.9) in batches of 64 for up to 10 passes, with the zoo's early stop at the
held-out level and the utility guard. Measured on the conformance task (three task seeds): ε = 0.15 closes
92-107 % of the gap keeping held-out accuracy within 0.07; ε = 0.1 closes 54-71 %; ε = 0.4 crosses 110 of
150 samples and fails (37-58 %); always relabelling to the nearest other class fails (22-36 %) (the last
three at the former lr 1e-3 in batches of 16, which closed 102-104 % at ε = 0.15). Batches of 64 at lr 4e-3
against 16 at 1e-3, on the benchmark's MLP (3 seeds) and CNN (2 seeds), seven scenarios each: MLP median
cell 0.0078 s against 0.0105 s (the paper preset 0.0104 s), average gap to retraining 0.052 against 0.051;
CNN about as fast (0.32 against 0.31 s, the paper preset 0.53 s), gap 0.053 against 0.052. ``details``
reports how many neighbours crossed a boundary.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from unlearnops.plugin import UnlearnInputs, hookimpl, lazy_module
from unlearnops.plugins.zoo_common import ClassicConfig, ClassicMethod, Clock, Data, Target, TrainLoop, make_optimizer


if TYPE_CHECKING:
    import torch
    from torch.nn import functional as F
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")


class BoundaryConfig(ClassicConfig):
    PAPER = {"epsilon": 0.1, "scale": "input", "uncrossed": "keep", "optimizer": "sgd", "lr": 0.01,
             "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256}
    PAPER_SOURCE = ("OPTML-Group/Unlearn-Saliency Classification/unlearn/boundary_sh.py (ε 0.1 in input units, "
                    "lr 0.01, wd 5e-4); its clamp to [0, 1] and 1/255 discretization are not reproduced")

    epsilon: float = Field(0.15, gt=0, description="FGSM step size (see scale).")
    epochs: int = Field(10, ge=1, description="Most passes over the forget set.")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(4e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="The reference: 5e-4.")
    batch_size: int = Field(64, ge=1)
    uncrossed: Literal["auto", "keep", "nearest"] = Field(
        "auto", description="Label of a sample whose FGSM step crossed no boundary: its own (keep, the reference "
        "implementation's argmax) or the highest other class at the neighbour (nearest); auto: keep for samples, "
        "nearest for a class.")
    scale: Literal["std", "input"] = Field(
        "std", description="epsilon in units of each feature's standard deviation over the forget set, or raw.")


def neighbour_labels(model, forget: Data, epsilon, uncrossed: str = "nearest") -> tuple[torch.Tensor, int]:
    """The class of each forget sample's FGSM neighbour, and how many FGSM steps crossed a boundary."""
    probe = copy.deepcopy(model).eval()
    x = forget.x.clone().requires_grad_(True)
    loss = F.cross_entropy(probe(x), forget.y)
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        logits = probe(x + epsilon * grad.sign())
        crossed = logits.argmax(1) != forget.y
        if uncrossed == "keep":
            labels = logits.argmax(1)
        else:
            others = logits.scatter(1, forget.y[:, None], float("-inf"))
            labels = others.argmax(1)  # equals the adversarial prediction wherever the step crossed
    return labels, int(crossed.sum())


class BoundaryShrink(ClassicMethod):
    name = "boundary"
    version = "0.2.0"
    Config = BoundaryConfig
    needs_retain = False
    supports_gpu = True

    def algorithm(self, model, inputs: UnlearnInputs, config: BoundaryConfig, device, clock: Clock):
        generator = torch.Generator().manual_seed(config.seed)
        forget = Data(inputs.forget, device)
        target = Target(model, inputs, forget, config, device)
        epsilon = config.epsilon
        if config.scale == "std":
            spread = forget.x.std(0, keepdim=True) if len(forget) > 1 else torch.ones_like(forget.x[:1])
            epsilon = config.epsilon * spread
        uncrossed = config.uncrossed
        if uncrossed == "auto":
            uncrossed = "nearest" if target.mode == "class" else "keep"
        labels, crossed = neighbour_labels(model, forget, epsilon, uncrossed)
        optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                                   config.weight_decay)
        loop = TrainLoop(model, optimizer, target, clock, generator, device)
        loop.run(config.epochs, len(forget), config.batch_size,
                 lambda idx, _: F.cross_entropy(model(forget.x[idx]), labels[idx]))
        return {"steps": loop.steps, "losses": loop.step_losses, "neighbours_across_boundary": crossed,
                "uncrossed": uncrossed, "n_forget": len(forget)}, target


@hookimpl
def register_methods(register):
    register(BoundaryShrink())
