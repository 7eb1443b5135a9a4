"""Boundary Shrink (Chen, Gao, Zhou, Liu & Wang, CVPR 2023, "Boundary Unlearning").

Push each forget sample across its nearest decision boundary. For every forget sample an FGSM step of size ε
against its true label (computed once, on the original model) finds an adversarial neighbour; the sample's
new label is the class the original model gives that neighbour, or — when the step did not cross a boundary
— the highest-scoring other class there (the nearest boundary's other side). The model is then fine-tuned on
the forget samples with those labels, so only the boundaries around them move.

The paper (class forgetting on CIFAR-10/VGGFace2) uses ε = 0.1 in [0, 1] pixel space and SGD at lr 1e-5 for
a few epochs on large networks. For the tiny models here the default is SGD at lr 0.01 (momentum 0.9) for up
to 10 passes over the forget set, with the zoo's early stop at the held-out level (needed for sample-level
forgetting: relabelling every forget sample drives forget accuracy to 0, far below a retrained model's) and
the utility guard. ``details`` reports how many neighbours crossed a boundary and the label changes.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from unlearnops import hookimpl
from unlearnops.methods import Method, UnlearnInputs, UnlearnResult, changed_parameters, parameter_snapshot
from unlearnops.plugins.zoo_common import ClassicConfig, Clock, Data, Target, TrainLoop, make_optimizer


class BoundaryConfig(ClassicConfig):
    epsilon: float = Field(0.1, gt=0, description="FGSM step size (input units).")
    epochs: int = Field(10, ge=1, description="Most passes over the forget set.")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)


def neighbour_labels(model, forget: Data, epsilon: float) -> tuple[torch.Tensor, int]:
    """The class across the nearest boundary of each forget sample, and how many FGSM steps crossed one."""
    probe = copy.deepcopy(model).eval()
    x = forget.x.clone().requires_grad_(True)
    loss = F.cross_entropy(probe(x), forget.y)
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        logits = probe(x + epsilon * grad.sign())
        crossed = logits.argmax(1) != forget.y
        others = logits.scatter(1, forget.y[:, None], float("-inf"))
        labels = others.argmax(1)  # equals the adversarial prediction wherever the step crossed
    return labels, int(crossed.sum())


class BoundaryShrink(Method):
    name = "boundary"
    version = "0.1.0"
    Config = BoundaryConfig
    needs_retain = False
    supports_gpu = True

    def unlearn(self, model, inputs: UnlearnInputs, config: BoundaryConfig, device) -> UnlearnResult:
        clock = Clock(config.max_seconds)
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        before = parameter_snapshot(model)
        forget = Data(inputs.forget, device)
        target = Target(model, inputs, forget, config, device)
        labels, crossed = neighbour_labels(model, forget, config.epsilon)
        optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum)
        loop = TrainLoop(model, optimizer, target, clock, generator, device)
        loop.run(config.epochs, len(forget), config.batch_size,
                 lambda idx, _: F.cross_entropy(model(forget.x[idx]), labels[idx]))
        details = {"steps": loop.steps, "losses": loop.step_losses, "neighbours_across_boundary": crossed,
                   "n_forget": len(forget), **target.details(model), **clock.details()}
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed_parameters(model, before),
                             seconds=clock.elapsed, details=details)


@hookimpl
def register_methods(register):
    register(BoundaryShrink())
