"""SISA: sharded, isolated, sliced, aggregated exact unlearning (Bourtoule et al., IEEE S&P 2021; the sharding
idea the SAFE / S3T line of work builds on), without slicing.

The training set is split into S shards by a stable hash of each sample id (``shard_of``: the same id always
lands in the same shard, whatever else is in the data). One constituent model per shard is trained, from a
fresh model, on that shard alone; the ensemble (:class:`ShardedEnsemble`) predicts with the mean of the
constituents' softmax outputs. To forget samples, only the constituents whose shards held them are retrained,
from scratch, on what is left of their shard; every other constituent is kept bit for bit.

Exactness, honestly: the result is exactly the ensemble that :func:`train_sharded` would train on the
remaining data (same shards, same seeds — checked bit for bit on CPU by ``tests/test_sisa.py``), so it never
saw the forgotten samples. That holds only when the parent model *is* such an ensemble: SISA is a different
model family from a single network (each constituent sees 1/S of the data, so the ensemble is usually a few
points less accurate). The method therefore handles only ``ShardedEnsemble`` parents (``model_families``); on a
single network the run is refused with a clear error — use ``retrain`` there.

A workspace whose model is a SISA ensemble names ``model_factory`` = an :func:`ensemble_factory` (S constituents
of the user's network) and ``train_function`` = :data:`train_ensemble` or a :func:`sharded_training` of the
user's own loop; ``dvc repro`` (``unlearnops train``) then trains it shard by shard, because the training
function takes ``sample_ids`` (see :func:`unlearnops.plugin.call_training`). Outside a workspace,
:func:`train_sharded` builds the same ensemble.

Constituents are retrained from the caller's model factory (an ensemble factory gives its constituent of the
same index; any other factory builds one constituent) with the member training function of a
:func:`sharded_training` trainer (else the caller's training function) and the training parameters;
constituent k uses seed ``seed + k``. Needs the sample ids of the forget set and of the remaining data.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from unlearnops.plugin import (
    DEFAULT_TRAINING,
    Method,
    RetrainingConfig,
    Samples,
    UnlearnInputs,
    UnlearnResult,
    call_training,
    epoch_progress,
    hookimpl,
    reinitialized,
    training_params,
    lazy_module,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    class ShardedEnsemble(nn.Module):  # what type checkers see; the class itself is _ensemble_class()
        members: nn.ModuleList
        n_shards: int

        def __init__(self, members: Sequence[nn.Module]) -> None: ...
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")


#: Shards of the conformance task's ensemble.
CONFORMANCE_SHARDS = 4


def shard_of(sample_id: str, n_shards: int) -> int:
    """The shard of a sample: sha256 of its id modulo ``n_shards`` (stable across runs, machines, data)."""
    return int.from_bytes(hashlib.sha256(str(sample_id).encode()).digest()[:8], "big") % n_shards


def shard_assignment(sample_ids: Sequence[str], n_shards: int) -> np.ndarray:
    """:func:`shard_of` for every id."""
    return np.fromiter((shard_of(s, n_shards) for s in sample_ids), dtype=np.int64, count=len(sample_ids))


@functools.lru_cache(maxsize=None)
def _ensemble_class() -> type:
    """:class:`ShardedEnsemble`, defined on first use (it subclasses ``torch.nn.Module``: importing this module
    must not import torch)."""

    class ShardedEnsemble(nn.Module):
        """S constituent networks; the output is log of the mean of their softmax outputs — valid logits
        (softmax of the output is the averaged probability), so evaluation, gates and ONNX export work unchanged."""

        def __init__(self, members: Sequence[nn.Module]):
            super().__init__()
            if not members:
                raise ValueError("a sharded ensemble needs at least one constituent")
            self.members = nn.ModuleList(members)

        @property
        def n_shards(self) -> int:
            return len(self.members)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
            return torch.log(probs.clamp_min(1e-12))

    ShardedEnsemble.__module__, ShardedEnsemble.__qualname__ = __name__, "ShardedEnsemble"
    return ShardedEnsemble


def __getattr__(name: str):
    if name == "ShardedEnsemble":
        return _ensemble_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ensemble_factory(member_factory: Callable[[], nn.Module], n_shards: int) -> Callable[[], ShardedEnsemble]:
    """A model factory for a workspace whose model is a SISA ensemble of ``member_factory`` networks."""

    def build() -> ShardedEnsemble:
        return _ensemble_class()([member_factory() for _ in range(n_shards)])

    return build


def _seeded(fresh_member: nn.Module, seed: int) -> nn.Module:
    """A copy of a freshly built constituent with its layers' parameters re-drawn under ``seed``, so that
    training the ensemble and later retraining one shard start constituent k from the same weights."""
    torch.manual_seed(seed)
    member = copy.deepcopy(fresh_member)
    for module in member.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return member


def _train_member(k: int, samples: Samples, shards: np.ndarray, fresh_member: nn.Module, train_function,
                  params: dict, device, progress=None) -> nn.Module:
    """Constituent k trained from fresh weights (seed ``params["seed"] + k``) on the samples of shard k."""
    keep = shards == k
    if not keep.any():
        raise ValueError(f"shard {k} holds no training samples; use fewer shards")
    seed = int(params["seed"]) + k
    shard = Samples(np.asarray(samples.features)[keep], np.asarray(samples.labels)[keep],
                    [s for s, kept in zip(samples.sample_ids, keep) if kept])
    return call_training(train_function, _seeded(fresh_member, seed), shard, device=device, progress=progress,
                         **{**params, "seed": seed}).to(device)


def sharded_training(member_train_function: Callable[..., nn.Module] | None = None) -> Callable[..., ShardedEnsemble]:
    """A workspace training function (``project.train_function``) for a SISA ensemble built by
    :func:`ensemble_factory`: constituent k is trained on the samples of shard k by ``member_train_function``
    (default :func:`unlearnops.model.train_model`) with seed ``seed + k``. It takes ``sample_ids``, so
    ``dvc repro``, retraining and audits hand it the ids it shards by; the ``sisa`` method retrains single
    constituents with the same ``member_train_function``."""

    def train_ensemble(model: ShardedEnsemble, features: np.ndarray, labels: np.ndarray, *,
                       sample_ids: Sequence[str], device: torch.device | str = "cpu", progress=None,
                       **params) -> ShardedEnsemble:
        if not isinstance(model, _ensemble_class()):
            raise TypeError("SISA training needs a ShardedEnsemble (project.model_factory built with "
                            f"unlearnops.plugins.sisa.ensemble_factory), got {type(model).__name__}")
        samples = Samples(np.asarray(features), np.asarray(labels), [str(s) for s in sample_ids])
        if len(samples.sample_ids) != len(samples) or len(samples) == 0:
            raise ValueError("SISA needs a sample id for every training sample")
        params = {**DEFAULT_TRAINING, "seed": 0, **params}
        shards = shard_assignment(samples.sample_ids, model.n_shards)
        members = [_train_member(k, samples, shards, model.members[k], member_train_function, params, device,
                                 progress) for k in range(model.n_shards)]
        return _ensemble_class()(members).to(device).eval()

    train_ensemble.member_train_function = member_train_function
    return train_ensemble


#: The SISA training function with :func:`unlearnops.model.train_model` for each constituent
#: (``train_function = "unlearnops.plugins.sisa:train_ensemble"``).
train_ensemble = sharded_training()


def train_sharded(factory: Callable[[], nn.Module], samples: Samples, n_shards: int, *,
                  train_function: Callable[..., nn.Module] | None = None, train_params: dict | None = None,
                  device: torch.device | str = "cpu") -> ShardedEnsemble:
    """Train a SISA ensemble of ``n_shards`` constituents from ``factory`` (one network, or an
    :func:`ensemble_factory`) with ``train_function`` per constituent; see :func:`sharded_training`."""
    built = factory()
    ensemble = built if isinstance(built, _ensemble_class()) else _ensemble_class()(
        [built] + [factory() for _ in range(n_shards - 1)])
    if ensemble.n_shards != n_shards:
        raise ValueError(f"the factory builds {ensemble.n_shards} constituents, not {n_shards}")
    return sharded_training(train_function)(ensemble, samples.features, samples.labels,
                                            sample_ids=samples.sample_ids, device=device, **(train_params or {}))


class SISAConfig(RetrainingConfig):
    """Overrides of the workspace's training parameters for the retrained constituents."""


class SISA(Method):
    name = "sisa"
    version = "0.1.0"
    Config = SISAConfig
    needs_retain = True
    supports_gpu = True
    exact = True
    model_families = ("ShardedEnsemble",)

    def unlearn(self, model: ShardedEnsemble, inputs: UnlearnInputs, config: SISAConfig, device) -> UnlearnResult:
        started = time.perf_counter()
        forget = inputs.forget
        if len(forget.sample_ids) != len(forget):
            raise ValueError("sisa needs the sample id of every forgotten sample (the shard comes from it)")
        retain = inputs.retain_full if inputs.retain_full is not None else inputs.retain
        if len(retain.sample_ids) != len(retain):
            raise ValueError("sisa needs the sample id of every remaining training sample")
        params = training_params(inputs, config)
        n = model.n_shards
        affected = sorted({shard_of(s, n) for s in forget.sample_ids})
        shards = shard_assignment(retain.sample_ids, n)
        # A workspace trained by sharded_training retrains constituents with its member training function.
        member_train = getattr(inputs.train_function, "member_train_function", inputs.train_function)
        changed = {}
        for k in affected:
            if inputs.model_factory is not None:
                built = inputs.model_factory()
                fresh = built.members[k] if isinstance(built, _ensemble_class()) else built
            else:
                fresh = reinitialized(model.members[k])
            with epoch_progress(int(params["epochs"]), f"sisa shard {k}") as report:
                member = _train_member(k, retain, shards, fresh, member_train, params, device, report)
            old = dict(model.members[k].named_parameters())
            model.members[k] = member
            for pname, p in member.named_parameters():
                before = old[pname].detach()
                if not torch.equal(p.detach(), before):
                    changed[f"members.{k}.{pname}"] = float((p.detach() - before).norm()
                                                            / before.norm().clamp_min(1e-12))
        model.eval()
        counts = np.bincount(shards, minlength=n)
        return UnlearnResult(
            model=model, method=self.name, changed_parameters=changed, seconds=time.perf_counter() - started,
            details={"n_shards": n, "retrained_shards": affected,
                     "kept_shards": [k for k in range(n) if k not in affected],
                     "retained_per_shard": counts.tolist(), "trained_on": int(sum(counts[k] for k in affected)),
                     "epochs": params["epochs"],
                     "from": "model factory" if inputs.model_factory else "re-initialized constituent"})

    @staticmethod
    def conformance_task(seed: int = 0):
        """The conformance suite's task with a SISA parent: the same data (600 training points, 150 to
        forget), an ensemble of its MLP trained shard by shard the same way (full batch, 300 epochs)."""
        return copy.deepcopy(_sisa_task(seed))


@functools.lru_cache(maxsize=2)
def _sisa_task(seed: int):
    from unlearnops.plugin import ConformanceTask, conformance_mlp, tiny_task

    base = tiny_task(seed)
    inputs = base.inputs
    train = Samples(np.concatenate([inputs.forget.features, inputs.retain.features]),
                    np.concatenate([inputs.forget.labels, inputs.retain.labels]),
                    inputs.forget.sample_ids + inputs.retain.sample_ids)
    n_features, n_classes = train.features.shape[1], int(train.labels.max()) + 1

    def factory() -> nn.Module:
        return conformance_mlp(n_features, n_classes)

    params = {"epochs": 300, "batch_size": len(train), "lr": 1e-2, "seed": seed}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_sharded(factory, train, CONFORMANCE_SHARDS, train_params=params)
    finally:
        torch.set_num_threads(threads)
    inputs.model_factory, inputs.train_params = factory, params
    return ConformanceTask(model, inputs, base.test)


@hookimpl
def register_methods(register):
    register(SISA())
