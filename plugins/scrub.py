"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, NeurIPS 2023, "Towards Unbounded Machine Unlearning").

Teacher–student: the teacher is the original model (frozen), the student starts as a copy of it. Each epoch
has a max phase (for the first ``max_epochs`` epochs): one pass over the forget set *maximizing*
KL(teacher ‖ student) at temperature T — the student moves away from the teacher on the forget data — then a
min phase: one pass over the retain data minimizing γ·CE + α·KL(teacher ‖ student), which keeps the student
close to the teacher (and correct) elsewhere.

The paper's CIFAR defaults: T = 4, γ = 0.99, α = 0.001, 2 max-epochs of 3-5 (small forget sets), SGD at lr
5e-4 with momentum 0.9 and weight decay 5e-4, forget batches of 16. At student = teacher the KL gradient is
exactly zero, and SGD at 5e-4 barely moves a memorized tiny model; here the default is Adam at lr 1e-3 over
up to 10 epochs with 5 max-epochs. Stops at the held-out level and under the utility guard (``zoo_common``).
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


class SCRUBConfig(ClassicConfig):
    PAPER = {"epochs": 3, "max_epochs": 2, "optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4,
             "temperature": 4.0, "gamma": 0.99, "alpha": 0.001, "batch_size": 32, "retain_batch_size": 128}
    PAPER_SOURCE = ("meghdadk/SCRUB large_scale_unlearning.ipynb arguments and thirdparty/repdistiller loops.py; "
                    "its learning-rate decay is not reproduced")

    epochs: int = Field(10, ge=1, description="Total epochs (each: max phase if any, then min phase).")
    max_epochs: int = Field(5, ge=0, description="Epochs with a max phase (the first ones).")
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    temperature: float = Field(4.0, gt=0)
    gamma: float = Field(0.99, ge=0, description="Weight of the retain cross-entropy in the min phase.")
    alpha: float = Field(0.001, ge=0, description="Weight of the retain KL in the min phase.")
    batch_size: int = Field(16, ge=1, description="Forget batch size (max phase).")
    retain_batch_size: int = Field(64, ge=1)


def distill_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T, scaled by T² as in knowledge distillation."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class SCRUB(ClassicMethod):
    name = "scrub"
    version = "0.1.0"
    Config = SCRUBConfig
    needs_retain = True
    supports_gpu = True

    def algorithm(self, model, inputs: UnlearnInputs, config: SCRUBConfig, device, clock: Clock):
        generator = torch.Generator().manual_seed(config.seed)
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        forget, retain = Data(inputs.forget, device), Data(inputs.retain, device)
        with torch.no_grad():
            teacher_forget, teacher_retain = teacher(forget.x), teacher(retain.x)
        target = Target(model, inputs, forget, config, device)
        optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                                   config.weight_decay)
        loop = TrainLoop(model, optimizer, target, clock, generator, device)

        def max_loss(idx, _):
            return -distill_kl(model(forget.x[idx]), teacher_forget[idx], config.temperature)

        def min_loss(idx, _):
            logits = model(retain.x[idx])
            return (config.gamma * F.cross_entropy(logits, retain.y[idx])
                    + config.alpha * distill_kl(logits, teacher_retain[idx], config.temperature))

        max_losses, min_losses = [], []
        for epoch in range(config.epochs):
            if epoch < config.max_epochs and not loop.stopped:
                max_losses.append(loop.one_pass(len(forget), config.batch_size, max_loss, epoch))
            if not loop.stopped:
                min_losses.append(loop.one_pass(len(retain), config.retain_batch_size, min_loss, epoch))
        return {"steps": loop.steps, "max_phases_run": len(max_losses), "min_phases_run": len(min_losses),
                "max_phase_losses": max_losses, "min_phase_losses": min_losses}, target


@hookimpl
def register_methods(register):
    register(SCRUB())
