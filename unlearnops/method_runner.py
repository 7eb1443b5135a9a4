"""The unlearning-method contract and its enforcer: what a method gets (:class:`UnlearnInputs` of
:class:`Samples`) and returns (:class:`UnlearnResult`), its declarations (:class:`Method`,
:class:`MethodConfig`), the training helpers exact methods share, and :func:`run_method`, which runs a method
the way the pipeline does and turns every breach of the contract into a :class:`PluginError` naming it.

Plugin authors import these from :mod:`unlearnops.plugin`.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unlearnops._lazy import lazy_module
from unlearnops.plugin_manager import PluginError


if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # imported on first use (fast start-up: loading plugins imports no torch nor pandas)
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")


@dataclass
class Samples:
    """Model inputs and integer labels of one group of samples."""

    features: np.ndarray
    labels: np.ndarray
    sample_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class UnlearnInputs:
    """What a method gets to work with; it must not modify any of it."""

    forget: Samples
    retain: Samples
    #: Held-out non-members: the level the forget set should fall to for sample-level forgetting. In the
    #: pipeline this is the ``calibration`` half of the held-out split; the gates judge on the other half.
    holdout: Samples
    #: Largest allowed accuracy drop on held-out data while searching a step.
    utility_max_drop: float = 0.02
    #: One boolean mask over ``forget`` per deletion request, when a batch holds several.
    forget_groups: list[np.ndarray] | None = None
    #: Every remaining training sample, for exact methods (retraining); None when the caller has none.
    retain_full: Samples | None = None
    #: Builds an untrained model of the same architecture (exact methods), and the workspace's training
    #: parameters (epochs, batch_size, lr, seed, and any extra keys of ``params.yaml``).
    model_factory: Callable[[], nn.Module] | None = None
    train_params: dict[str, Any] = field(default_factory=dict)
    #: The workspace's training function; call it with :func:`call_training` (which adds ``sample_ids=`` when
    #: the function takes them). None means :func:`unlearnops.model.train_model`.
    train_function: Callable[..., nn.Module] | None = None


@dataclass
class UnlearnResult:
    """What a method did: the changed model and an account of the change."""

    model: nn.Module
    method: str
    #: parameter name -> relative change ‖W_new − W_old‖ / ‖W_old‖, only for parameters that changed. The
    #: method names the parameters it changed; :func:`run_method` checks the names and measures the values.
    changed_parameters: dict[str, float]
    #: Wall-clock seconds of the ``unlearn`` call (set by :func:`run_method`).
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class MethodConfig(BaseModel):
    """Base for a method's ``Config``: a ``seed`` and no unknown keys (a typo is an error naming it)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0


#: Training parameters used where the caller gives none (the workspace always gives its ``params.yaml``).
DEFAULT_TRAINING = {"epochs": 20, "batch_size": 64, "lr": 1e-3}


class RetrainingConfig(MethodConfig):
    """Config of a method that trains from scratch: optional overrides of the workspace's training parameters."""

    epochs: int | None = Field(None, ge=1, description="Default: the workspace's training epochs.")
    batch_size: int | None = Field(None, ge=1, description="Default: the workspace's batch size.")
    lr: float | None = Field(None, gt=0, description="Default: the workspace's learning rate.")


def accepts_sample_ids(train_function: Callable[..., nn.Module]) -> bool:
    """Whether a training function's signature names a ``sample_ids`` parameter."""
    try:
        return "sample_ids" in inspect.signature(train_function).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def call_training(train_function: Callable[..., nn.Module] | None, model: nn.Module, samples: Samples, *,
                  device: torch.device | str = "cpu", progress: Callable[[int, float], None] | None = None,
                  **params: Any) -> nn.Module:
    """Train ``model`` on ``samples`` the way every part of unlearnops calls a workspace's training function:
    ``fn(model, features, labels, device=..., progress=..., **params)``, plus ``sample_ids=`` (the rows' ids,
    in order) when the function's signature names a ``sample_ids`` parameter — for training that depends on
    which sample is which, like SISA's sharding by id. ``None`` means :func:`unlearnops.model.train_model`."""
    if train_function is None:
        from unlearnops.model import train_model as train_function
    extra: dict[str, Any] = {}
    if accepts_sample_ids(train_function):
        if len(samples.sample_ids) != len(samples):
            raise ValueError(f"the training function {getattr(train_function, '__name__', train_function)!r} "
                             f"takes sample_ids, but {len(samples)} samples came with "
                             f"{len(samples.sample_ids)} ids")
        extra["sample_ids"] = list(samples.sample_ids)
    return train_function(model, samples.features, samples.labels, device=device, progress=progress,
                          **params, **extra)


def reinitialized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter drawn afresh by its layer's ``reset_parameters`` (from the
    global torch RNG) — for exact methods run without a model factory. Refuses a model with parameters no
    layer re-draws: keeping their trained values would carry the forgotten data into the "fresh" model."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    old = dict(model.named_parameters())
    kept = [name for name, p in fresh.named_parameters() if p.numel() and torch.equal(p.detach(), old[name].detach())]
    if kept:
        raise ValueError(f"cannot re-initialize {', '.join(kept[:5])} (no layer re-draws them): give the method "
                         "a model factory (the workspace's project.model_factory)")
    return fresh


def fresh_model(inputs: "UnlearnInputs", model: nn.Module, seed: int) -> nn.Module:
    """An untrained model for exact methods, built under ``seed`` (every RNG seeded first, so the same seed
    gives the same initial weights): the workspace's model factory, else :func:`reinitialized` ``model``."""
    from unlearnops.model import seed_everything

    seed_everything(seed)
    return inputs.model_factory() if inputs.model_factory else reinitialized(model)


def training_params(inputs: "UnlearnInputs", config: RetrainingConfig) -> dict[str, Any]:
    """The keyword arguments for the training function: :data:`DEFAULT_TRAINING`, then the workspace's
    parameters, then the config's overrides, with the config's seed."""
    params = {**DEFAULT_TRAINING, **inputs.train_params}
    for key in ("epochs", "batch_size", "lr"):
        params[key] = getattr(config, key) or params[key]
    params["seed"] = config.seed
    return params


class Method:
    """Optional base class for unlearning methods: the declarations with their defaults.

    Subclasses set ``name``, ``version`` and ``Config`` and implement ``unlearn`` (see
    :func:`unlearnops.hookspecs.register_methods` for the contract).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_retain: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    model_families: ClassVar[tuple[str, ...]] = ("Module",)
    supports_gpu: ClassVar[bool] = False
    #: True only for methods whose result never saw the forgotten data (retraining without it).
    exact: ClassVar[bool] = False


def parse_config(method, overrides: dict[str, Any]) -> BaseModel:
    """Validate ``key=value`` overrides against the method's ``Config``; errors name the field."""
    try:
        return method.Config(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"invalid config for method {method.name!r}: {problems}") from exc


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter, to compare against with :func:`changed_parameters`."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def changed_parameters(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> dict[str, float]:
    """Parameter name -> relative change ‖W − W₀‖ / ‖W₀‖ since ``snapshot``, for those that changed."""
    changed = {}
    for name, p in model.named_parameters():
        new, old = p.detach().cpu(), snapshot[name]
        if not torch.equal(new, old):
            changed[name] = float((new - old).norm() / old.norm().clamp_min(1e-12))
    return changed


def run_method(method, model: nn.Module, inputs: UnlearnInputs, config: BaseModel, device: torch.device):
    """Run a method on a private copy of ``model`` (which stays untouched) and check the result.

    Any misbehaviour becomes a :class:`PluginError` naming the method: an exception, another return type,
    different parameter names, a parameter or buffer off the target device, non-finite weights, or
    ``changed_parameters`` naming other parameters than those that changed. The result's
    ``changed_parameters`` holds the measured relative change of each, ``seconds`` the call's duration.
    """
    name = method.name
    if device.type == "cuda" and not method.supports_gpu:
        device = torch.device("cpu")
    families = getattr(method, "model_families", ("Module",))
    if not {cls.__name__ for cls in type(model).__mro__} & set(families):
        raise PluginError(f"method {name!r} handles model families {list(families)}, not {type(model).__name__}")
    if method.needs_retain and len(inputs.retain) == 0:
        raise PluginError(f"method {name!r} needs retain samples and got none")
    original = parameter_snapshot(model)
    working = copy.deepcopy(model).to(device)
    from unlearnops.model import seed_everything

    seed_everything(int(getattr(config, "seed", 0) or 0))  # one seed, one result, whatever ran before
    started = time.perf_counter()
    try:
        result = method.unlearn(working, inputs, config, device)
    except Exception as exc:
        raise PluginError(f"method {name!r} raised: {exc!r}") from exc
    seconds = time.perf_counter() - started
    if not isinstance(result, UnlearnResult) or not isinstance(result.model, nn.Module):
        raise PluginError(f"method {name!r} returned {type(result).__name__}, not an UnlearnResult")
    params = dict(result.model.named_parameters())
    if set(params) != set(original):
        raise PluginError(f"method {name!r} returned a model with other parameters than the one it was given")
    devices = {t.device.type for t in [*params.values(), *result.model.buffers()]}
    if devices != {device.type}:
        raise PluginError(f"method {name!r} left parameters on {sorted(devices)}, expected {device.type}")
    for pname, p in params.items():
        if not torch.isfinite(p).all():
            raise PluginError(f"method {name!r} produced non-finite values in {pname}")
    changed = changed_parameters(result.model, original)
    claimed = result.changed_parameters
    if not isinstance(claimed, dict) or set(claimed) != set(changed):
        reported = sorted(claimed) if isinstance(claimed, dict) else claimed
        raise PluginError(f"method {name!r} reported changing {reported!r} but changed {sorted(changed)}")
    result.changed_parameters = changed
    result.seconds = seconds
    return result
