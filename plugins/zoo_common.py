"""Shared pieces of the classic unlearning methods (FT, GA, RL, SalUn, SSD, SCRUB, l1-sparse, Boundary Shrink).

Not a plugin: registers nothing. Gives each method the same notion of

* the forgetting target: sample-level forgetting aims at the model's held-out accuracy (what a retrained
  model shows on data it never saw); class forgetting (every forget sample has one label that the
  retain data lacks) aims at 0 accuracy on that class, as a retrained model shows;
* a time budget (``max_seconds``): training loops stop early and say so in ``details``;
* early stopping at the target (``stop_at_target``): the iterative methods check forget accuracy every
  ``check_every`` optimizer steps and stop once it is at or below the target, so they do not over-forget (an over-forgotten
  forget set is as detectable as a remembered one);
* a utility guard (``utility_guard``): a state that costs more held-out accuracy than the caller's
  ``utility_max_drop`` is undone (back to the last state that passed a check) and training stops;
* checks every ``check_every`` optimizer steps and at the end of every pass, not after every step;
* one training loop (:class:`TrainLoop`) that applies the three, after every step or — for methods whose
  later phase repairs what an earlier one broke (RL, SalUn) — at the end of each epoch, keeping the best
  checked state within the utility budget;
* deterministic shuffling from ``config.seed`` (a CPU generator, so the order is the same on every device);
* one ``unlearn`` (:class:`ClassicMethod`): time budget, seed, parameter snapshot and the result around the
  method's own algorithm.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from unlearnops.plugin import (
    Method,
    MethodConfig,
    Samples,
    UnlearnInputs,
    UnlearnResult,
    changed_parameters,
    parameter_snapshot,
    lazy_module,
    no_grad,
)


if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")


#: What the references do that every paper preset shares: a fixed number of epochs, no early stop at a
#: target and no utility guard (the tuned default keeps both: it never lets the model collapse).
REFERENCE_LOOP = {"stop_at_target": False, "utility_guard": False}
#: Optimizer steps between two checks of the target and the utility guard (``check_every``): measured on the
#: CNN and the MLP (README, "Methods"): each check is a forward pass over the held-out data (and the forget
#: set), which cost more than the steps themselves when made after every step.
CHECK_EVERY = 4


class ClassicConfig(MethodConfig):
    """Options every classic method shares.

    ``preset = "paper"`` starts from the method's reference implementation's defaults (:attr:`PAPER`, read
    from the code named in :attr:`PAPER_SOURCE`) instead of the project's tuned ones; fields given
    explicitly still win."""

    #: The reference implementation's values (``preset = "paper"``), and where they were read.
    PAPER: ClassVar[dict[str, Any]] = {}
    PAPER_SOURCE: ClassVar[str] = ""

    preset: Literal["tuned", "paper"] = Field(
        "tuned", description="tuned: the project's defaults (early stop, utility guard); paper: the reference "
        "implementation's defaults (see the method's PAPER_SOURCE).")

    max_seconds: float | None = Field(None, gt=0, description="Time budget; training stops early when spent.")
    stop_at_target: bool = Field(
        True, description="Stop once forget accuracy is at or below the target (held-out accuracy; 0 for a class)."
    )
    utility_guard: bool = Field(
        True, description="Undo the last step and stop when held-out accuracy falls more than utility_max_drop."
    )
    utility_budget: float = Field(
        0.8, gt=0, le=1, description="Share of utility_max_drop the guard lets training spend (held-out vs test noise)."
    )
    target_tolerance: float = Field(0.0, ge=0, le=1, description="Stop at target + tolerance.")
    check_every: int = Field(
        CHECK_EVERY, ge=1,
        description="Per-step checking: the target and the utility guard are checked every k optimizer steps "
        "and at the end of every pass; a failed check restores the state of the last passing one (at most k "
        "steps back), so the model never ends on an unchecked state.")
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("preset") == "paper":
            return {**REFERENCE_LOOP, **cls.PAPER, **values}
        return values


class Data:
    """A sample group as tensors on the device."""

    def __init__(self, samples: Samples, device, labels: np.ndarray | torch.Tensor | None = None):
        self.x = torch.as_tensor(np.asarray(samples.features), dtype=torch.float32).to(device)
        y = samples.labels if labels is None else labels
        self.y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, dtype=torch.long).to(device)

    def __len__(self) -> int:
        return len(self.y)


def batches(n: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (drawn on the CPU: the same order on every device)."""
    order = torch.randperm(n, generator=generator).to(device)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


@no_grad
def accuracy(model: nn.Module, data: Data, batch_size: int | None = None) -> float:
    if len(data) == 0:
        return float("nan")
    from unlearnops.plugin import inference_batch_size  # here: the name imports torch, which loading plugins must not

    batch_size = batch_size or inference_batch_size(data.x.device)
    was_training = model.training
    model.eval()
    correct = sum(int((model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum())
                  for i in range(0, len(data), batch_size))
    model.train(was_training)
    return correct / len(data)


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in current.items())


def n_classes(model: nn.Module, data: Data) -> int:
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = int(model(data.x[:1]).shape[1])
        model.train(was_training)
    return out


class Target:
    """Watches the forget set and held-out data during training: is the model at the target yet, and has it
    kept its utility?

    Sample-level forgetting: the target is the *current* held-out accuracy (the edit moves non-members too),
    so forget samples end up looking like non-members. Class forgetting: 0 accuracy on the forget class,
    utility measured on the held-out samples of the other classes. The utility guard (``utility_guard``):
    when held-out accuracy falls more than ``utility_budget × inputs.utility_max_drop`` below the original, the last step is
    undone and training stops.
    """

    def __init__(self, model: nn.Module, inputs: UnlearnInputs, forget: Data, config: ClassicConfig, device):
        labels = np.unique(np.asarray(inputs.forget.labels))
        retain_labels = set(np.asarray(inputs.retain.labels).tolist())
        self.mode = "class" if len(labels) == 1 and labels[0] not in retain_labels else "sample"
        holdout = inputs.holdout
        if self.mode == "class":
            keep = np.asarray(holdout.labels) != labels[0]
            holdout = Samples(np.asarray(holdout.features)[keep], np.asarray(holdout.labels)[keep])
        self.holdout = Data(holdout, device)
        self.forget, self.config = forget, config
        self.max_drop = inputs.utility_max_drop * config.utility_budget
        #: The last measured state: (its weights, held-out accuracy, forget accuracy or None if not taken).
        self._measured: tuple[dict[str, torch.Tensor], float, float | None] | None = None
        self.holdout_accuracy_before = self._measure(model)
        self.forget_accuracy_before = self._forget_accuracy(model)
        self.reached_at: int | None = None
        self.guard_at: int | None = None
        #: Epoch-level checking (:meth:`checkpoint`): the state within the utility budget with the lowest
        #: forget accuracy so far (forget accuracy, its measurement, step), and the step restored by :meth:`finish`.
        self._best: tuple[float, tuple, int] | None = None
        self.selected_at: int | None = None
        self.over_budget_checks = 0
        self.checks = 0
        #: The measurement of the last state that passed the guard (what a failed check restores).
        self._last_good = self._measured if config.utility_guard else None

    @staticmethod
    def _state(model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _measure(self, model: nn.Module) -> float:
        """Held-out accuracy of the model's current state. A state equal to the last measured one (every
        weight and buffer compared exactly) reuses its numbers: the check before the first step and the
        report after the last check would otherwise repeat a pass over the same weights."""
        if self._measured is not None and _same_state(model, self._measured[0]):
            return self._measured[1]
        self._measured = (self._state(model), accuracy(model, self.holdout), None)
        return self._measured[1]

    def _forget_accuracy(self, model: nn.Module) -> float:
        """Forget-set accuracy of the state :meth:`_measure` just measured (the model unchanged since)."""
        state, holdout_accuracy, forget_accuracy = self._measured
        if forget_accuracy is None:
            forget_accuracy = accuracy(model, self.forget)
            self._measured = (state, holdout_accuracy, forget_accuracy)
        return forget_accuracy

    def _restore(self, model: nn.Module, measurement: tuple) -> None:
        model.load_state_dict(measurement[0])
        self._measured = measurement

    def target(self, holdout_accuracy: float) -> float:
        return 0.0 if self.mode == "class" else holdout_accuracy

    def stop(self, model: nn.Module, step: int) -> bool:
        """After an optimizer step: True when training should stop (target reached, or utility broken, in
        which case the steps since the last passing check have been undone)."""
        if not (self.config.stop_at_target or self.config.utility_guard):
            return False
        self.checks += 1
        holdout_accuracy = self._measure(model)
        if self.config.utility_guard and self.holdout_accuracy_before - holdout_accuracy > self.max_drop:
            self._restore(model, self._last_good)
            self.guard_at = step
            return True
        reached = self.config.stop_at_target and (
            self._forget_accuracy(model) <= self.target(holdout_accuracy) + self.config.target_tolerance)
        if self.config.utility_guard:
            self._last_good = self._measured
        if reached:
            self.reached_at = step
            return True
        return False

    def checkpoint(self, model: nn.Module, step: int) -> bool:
        """The epoch-level check, for methods whose later phase repairs what an earlier one broke (RL: the
        retain pass after the forget pass): True when forget accuracy is at the target and held-out accuracy
        within the utility budget. A state over the budget does not stop training; each state within it is a
        candidate for :meth:`finish`."""
        self.checks += 1
        holdout_accuracy = self._measure(model)
        forget_accuracy = self._forget_accuracy(model)
        within = not self.config.utility_guard or self.holdout_accuracy_before - holdout_accuracy <= self.max_drop
        if not within:
            self.over_budget_checks += 1
            return False
        if self._best is None or forget_accuracy < self._best[0]:
            self._best = (forget_accuracy, self._measured, step)
        tolerance = self.config.target_tolerance
        if self.config.stop_at_target and forget_accuracy <= self.target(holdout_accuracy) + tolerance:
            self.reached_at = step
            return True
        return False

    def finish(self, model: nn.Module) -> None:
        """After epoch-level checking: when the target was never reached, restore the checked state within the
        utility budget closest to it (the original weights if none was within the budget)."""
        if self.reached_at is not None or not self.config.utility_guard:
            return
        if self._best is None:
            self._best = (self.forget_accuracy_before, self._last_good, 0)
        self._restore(model, self._best[1])
        self.selected_at = self._best[2]

    def details(self, model: nn.Module) -> dict:
        holdout_accuracy = self._measure(model)
        return {"target_mode": self.mode,
                "forget_accuracy_before": self.forget_accuracy_before,
                "forget_accuracy_after": self._forget_accuracy(model),
                "holdout_accuracy_before": self.holdout_accuracy_before,
                "holdout_accuracy_after": holdout_accuracy,
                "target_forget_accuracy": self.target(holdout_accuracy),
                "target_reached_at_step": self.reached_at,
                "utility_guard_stopped_at_step": self.guard_at,
                "restored_checkpoint_of_step": self.selected_at,
                "checks_over_utility_budget": self.over_budget_checks}


class Clock:
    """The time budget."""

    def __init__(self, max_seconds: float | None):
        self.started = time.perf_counter()
        self.max_seconds = max_seconds
        self.ran_out = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def expired(self) -> bool:
        if self.max_seconds is not None and self.elapsed >= self.max_seconds:
            self.ran_out = True
        return self.ran_out

    def details(self) -> dict:
        return {"max_seconds": self.max_seconds, "stopped_by_time_budget": self.ran_out}


def random_wrong_labels(labels: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn class other than each true label."""
    offset = torch.randint(1, classes, (len(labels),), generator=generator).to(labels.device)
    return (labels + offset) % classes


def make_optimizer(params, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """``"sgd"`` (with momentum) or ``"adam"``. Adam's normalized steps move a model that memorized its
    training data (tiny losses, tiny gradients) where plain SGD at a paper's lr barely moves it."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class TrainLoop:
    """Optimizer steps until the target is reached, the utility guard trips, the time budget runs out or the
    passes are spent — the loop every iterative classic method shares.

    ``loss_fn(idx, epoch)`` returns the loss of one batch (``idx``: indices into the pass's data) to
    minimize; ``after_backward()`` may edit the gradients before the step (masks). With ``check="step"`` the
    target and the utility guard (:meth:`Target.stop`) are checked once before any step (a model already at
    the target is left alone), then every ``config.check_every`` steps and at the end of every pass (a failed
    guard restores the state of the last passing check). With ``check="epoch"`` they are checked
    (:meth:`Target.checkpoint`) only at the end of each epoch — after :meth:`run`'s passes, or where the
    method calls :meth:`end_epoch` — and :meth:`finish` restores the best state within the utility budget
    when the target was never reached; for methods whose later phase repairs what an earlier one broke.
    """

    def __init__(self, model: nn.Module, optimizer, target: Target, clock: Clock, generator: torch.Generator,
                 device, after_backward=None, check: str = "step"):
        if check not in ("step", "epoch"):
            raise ValueError(f"check must be 'step' or 'epoch', got {check!r}")
        self.model, self.optimizer, self.target, self.clock = model, optimizer, target, clock
        self.generator, self.device, self.after_backward = generator, device, after_backward
        self.check = check
        self.steps = 0
        #: The loss of every step, in order.
        self.step_losses: list[float] = []
        self._checked = True
        self._unchecked_steps = 0  # check="step": optimizer steps since the last check
        self.every = max(1, int(getattr(target.config, "check_every", 1)))
        self.stopped = target.stop(model, 0) if check == "step" else target.checkpoint(model, 0)

    def one_pass(self, n: int, batch_size: int, loss_fn, epoch: int = 0) -> float:
        """One shuffled pass over ``n`` samples (or until stopped); the sample-weighted mean loss."""
        self.model.train()
        total, seen = 0.0, 0
        for idx in batches(n, batch_size, self.generator, self.device):
            if self.stopped:
                break
            self.optimizer.zero_grad()
            loss = loss_fn(idx, epoch)
            loss.backward()
            if self.after_backward is not None:
                self.after_backward()
            self.optimizer.step()
            self.steps += 1
            self._checked = False
            value = float(loss.detach())
            self.step_losses.append(value)
            total, seen = total + value * len(idx), seen + len(idx)
            self._unchecked_steps += 1
            if self.check == "step" and self._unchecked_steps >= self.every:
                self._step_check()
            if not self.stopped and self.clock.expired():
                self.stopped = True
        if self.check == "step" and self._unchecked_steps:
            self._step_check()  # every pass ends on a checked state
        self.model.eval()
        return total / max(seen, 1)

    def _step_check(self) -> None:
        self._unchecked_steps = 0
        if self.target.stop(self.model, self.steps):
            self.stopped = True

    def end_epoch(self) -> None:
        """The epoch-level check (``check="epoch"``; nothing otherwise)."""
        if self.check == "epoch" and not self._checked:
            self._checked = True
            self.stopped = self.target.checkpoint(self.model, self.steps) or self.stopped

    def run(self, epochs: int, n: int, batch_size: int, loss_fn) -> list[float]:
        """Up to ``epochs`` passes; the mean loss of each pass run. Ends with :meth:`finish`."""
        losses = []
        for epoch in range(epochs):
            if self.stopped:
                break
            losses.append(self.one_pass(n, batch_size, loss_fn, epoch))
            self.end_epoch()
        self.finish()
        return losses

    def finish(self) -> None:
        """With ``check="epoch"``: check the last state, then keep the best checked one (see the class)."""
        if self.check == "epoch":
            self.end_epoch()
            self.target.finish(self.model)


class ClassicMethod(Method):
    """Base of the classic methods: a subclass declares itself (``name``, ``version``, ``Config`` — a
    :class:`ClassicConfig` —, ``needs_retain``, ``supports_gpu``) and writes only :meth:`algorithm`.

    ``unlearn`` starts the time budget (:class:`Clock`), seeds torch's global RNG with ``config.seed``, takes the
    parameter snapshot, runs the algorithm, and returns the result: the algorithm's details followed by its
    :class:`Target`'s and the clock's, the parameters that changed and the elapsed seconds.
    """

    def unlearn(self, model: nn.Module, inputs: UnlearnInputs, config: ClassicConfig, device) -> UnlearnResult:
        clock = Clock(config.max_seconds)
        torch.manual_seed(config.seed)
        before = parameter_snapshot(model)
        details, target = self.algorithm(model, inputs, config, device, clock)
        details = {**details, **target.details(model), **clock.details()}
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed_parameters(model, before),
                             seconds=clock.elapsed, details=details)

    def algorithm(self, model: nn.Module, inputs: UnlearnInputs, config: ClassicConfig, device,
                  clock: Clock) -> tuple[dict, Target]:
        """Change ``model`` (on ``device``) in place to forget ``inputs.forget`` within ``clock``'s budget;
        return what it did (``details``) and the :class:`Target` it trained against."""
        raise NotImplementedError
