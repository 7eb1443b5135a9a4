"""GPU rows: the fast path, two classic methods and retraining on a ResNet-18-size network, and ONNX Runtime
inference with its CUDA provider — one command that stays inside a time budget (default 540 s, under 10 min
with start-up).

    python -m unlearnops.bench.gpu [--device cuda] [--out bench/results/gpu.json] [--budget-seconds 540]
                                   [--tiny] [--json]

Network: :class:`ResNet18`, ResNet-18's BasicBlock stages [2, 2, 2, 2] at 64/128/256/512 channels (about
11.2M parameters) adapted to 1×28×28 digits as for CIFAR: a 3×3 stride-1 stem and no max-pool, so the stages
run at 28², 14², 7² and 4² (11.17M parameters, 0.91 GFLOPs forward per digit: convolutions and the head
counted as 2 × multiply-accumulates, :func:`forward_flops`).

Data: the training split of the 5000 shipped digits (3491) in the 15 variants of
:func:`unlearnops.bench.cost_growth.augment` (shifts and rotations): 52 365 training samples; the held-out and
test digits stay the originals (749 and 760). A forget set is a set of *digits*: every variant of a forgotten
digit is forgotten with it (otherwise its shifted copies, still in the retain set, would keep it known).

Phases, in order (one progress line each on stderr, one JSON row each): ``data``; ``warmup`` (CUDA
initialisation, cuDNN's first kernels, and a throughput probe: training and inference samples per second of
this network on this device, from which every later phase's cost is predicted); ``train_parent`` (3 epochs
of Adam, batch 128, timed); ``onnx`` (right after the parent, because it is cheap and independent of the
unlearning rows: export with :func:`unlearnops.export.export_onnx`, then an ONNX Runtime session on
``CUDAExecutionProvider`` when the device is CUDA — checked with ``session.get_providers()``, a silent fall
back to CPU is recorded as such — else ``CPUExecutionProvider``; outputs compared with the torch model's, p50/p99
latency and throughput at batch 1 and 256, host↔device copies included); then for ``random_1pct`` (1 % of the
training digits) and ``class`` (every digit of one class): ``retrain`` (timed), ``noop``, ``slug``, ``ft`` and
``ga`` (default presets), each measured like :mod:`unlearnops.bench.harness` (:func:`measure`, the gap to
retraining, ``floor_seconds`` and ``floor_ratio``).

Budget: a phase whose predicted cost (probe throughput × 1.3) does not fit in what is left of
``--budget-seconds`` is skipped, and so is every phase after it (rows with ``status: skipped`` and the
reason); the classic methods get the time left (at most 60 s each) as their ``max_seconds``; a watchdog
aborts a phase still running at 1.1 × the budget (``status: aborted``) so the command never runs past it. The
outputs are written either way.

Sizes and the assumption behind them (nothing here was measured on a GPU yet): training costs about
3 × 0.91 ≈ 2.7 GFLOPs per sample; the three trainings (the parent and two retrainings, 3 epochs over ≤ 52 365
samples) are ≈ 455 000 sample-steps ≈ 1.25 PFLOPs. An H100/H200 in eager fp32 (cuDNN convolutions in TF32,
torch's default) at batch 128 on 28² inputs is assumed to sustain only ≥ 12 TFLOPs (a few % of its TF32
peak: kernel launches, the per-batch host→device copy and ``loss.item()`` dominate at this size), i.e.
≥ 4400 training samples/s: ≈ 105 s of training. Evaluation (:func:`measure` over ≈ 54 000 samples for each
of the 10 method rows) at ≥ 20 000 samples/s (18 TFLOPs): ≈ 30 s; the methods ≈ 10–130 s (the classic ones
capped at 60 s each); the ONNX export on the CPU (7 s on one thread here) and the latencies ≈ 10–40 s; CUDA
start-up ≈ 10–20 s. Total ≈ 200–330 s: inside the 540 s budget even at half the assumed speed, and the budget
check skips what would not fit rather than overrunning.

``--tiny``: width 1/8 (0.18M parameters), 300 training digits in 3 variants, 100 held-out and test digits,
1 epoch at batch 16, short method and latency caps — the whole command on one CPU thread in well under a
minute (for the test).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearnops.bench.cost_growth import VARIANTS, augment, write_results
from unlearnops.bench.harness import (
    METRICS,
    NOOP,
    SCENARIOS,
    _samples,
    conditions,
    floor_seconds,
    forget_mask,
    gaps_to_retrain,
    markdown_table,
    measure,
    retain_sample,
    synchronize,
)
from unlearnops.data import Dataset
from unlearnops.datasets import mnist_5k
from unlearnops.method_runner import Samples, UnlearnInputs, parse_config, run_method
from unlearnops.model import (_ResidualBlock, evaluate, multiply_adds, pick_device, predict_logits, seed_everything,
                              train_model)
from unlearnops.plugin_manager import load_plugins

#: The forget sets, in the harness's spelling (and its seeds: ``seed * 1000 + SCENARIOS.index(scenario)``).
GPU_SCENARIOS = ("random_1pct", "class")
#: The methods beside retraining: the fast path and two classic methods, at their default presets.
GPU_METHODS = ("slug", "ft", "ga")
#: Every phase, in the order run.
PHASES = ("data", "warmup", "train_parent", "onnx",
          *(f"{s}/{m}" for s in GPU_SCENARIOS for m in ("retrain", NOOP, *GPU_METHODS)))
#: Predicted costs are the probe's throughput times this (the probe trains on a batch already on the device).
PREDICTION_MARGIN = 1.3
#: Seconds kept for writing the outputs.
RESERVE_SECONDS = 5.0
#: The watchdog aborts the running phase at this multiple of the budget.
HARD_STOP = 1.1


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) for 1×28×28 inputs: a 3×3 stride-1 stem (no max-pool), BasicBlock stages
    [2, 2, 2, 2] at 64/128/256/512 channels (the first block of stages 2–4 strides by 2: 28² → 14² → 7² → 4²),
    global average pooling and a linear head; about 11.2M parameters. The block is the project's residual block
    (:class:`unlearnops.model._ResidualBlock`: conv-BN-ReLU-conv-BN plus an identity or 1×1-conv shortcut).
    ``width`` scales every channel count (``--tiny``: 1/8)."""

    def __init__(self, n_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        channels = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        blocks, previous = [], channels[0]
        for stage, out in enumerate(channels):
            for block in range(2):
                blocks.append(_ResidualBlock(previous, out, 2 if stage and not block else 1))
                previous = out
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


def forward_flops(model: nn.Module, shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """FLOPs of one forward pass of one sample: 2 × the multiply-accumulates of the convolutions and linear
    layers (normalisation, activations, pooling and additions left out). ``model`` is not changed."""
    return 2 * multiply_adds(copy.deepcopy(model).to("cpu").eval(), torch.zeros(shape))


@dataclass(frozen=True)
class Sizes:
    """What the command runs at (recorded in every row)."""

    width: float = 1.0
    #: Training digits used (None: the whole training split, 3491).
    originals: int | None = None
    #: Variants of each training digit (:data:`unlearnops.bench.cost_growth.VARIANTS`; the first is the digit).
    variants: int = len(VARIANTS)
    #: Held-out and test digits used (None: all).
    eval_limit: int | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    #: The retain sample the methods get (as in the harness).
    retain_sample: int = 512
    #: Most seconds a classic method may run (its ``max_seconds``; less when less budget is left).
    method_seconds: float = 60.0
    latency_runs: int = 200
    #: Most seconds one latency measurement may take.
    latency_seconds: float = 10.0
    warmup_steps: int = 10
    probe_steps: int = 20
    #: Samples of the inference probe (batch 1024, as :func:`unlearnops.model.predict_logits`).
    probe_eval: int = 1024


DEFAULT = Sizes()
TINY = Sizes(width=0.125, originals=300, variants=3, eval_limit=100, epochs=1, batch_size=16, retain_sample=128,
             method_seconds=2.0, latency_runs=20, latency_seconds=1.0, warmup_steps=1, probe_steps=2,
             probe_eval=256)


class _Watchdog:
    """Sends SIGINT to the main thread (a KeyboardInterrupt there, even in a blocking call) once ``seconds`` have
    passed; ``fired`` says it did."""

    def __init__(self, seconds: float):
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            # Python's own handler (KeyboardInterrupt), whatever a library installed before: the stop must land.
            self._previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _versions() -> dict[str, Any]:
    import onnxruntime as ort

    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "onnxruntime_version": ort.__version__, "python_version": platform.python_version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


class GpuBench:
    """One run: the phases of the module docstring, their rows, and the budget."""

    def __init__(self, device: torch.device, sizes: Sizes, budget_seconds: float, seed: int = 0,
                 progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.device, self.sizes, self.budget, self.seed, self.progress = device, sizes, budget_seconds, seed, progress
        self.started = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.stopped: str | None = None  # why the remaining phases are skipped
        self.watchdog: _Watchdog | None = None
        self.factory = partial(ResNet18, width=sizes.width)
        now = datetime.now(timezone.utc)
        probe = self.factory()
        self.base = {
            "bench": "gpu", "model": "resnet18" if sizes.width == 1 else f"resnet18-w{sizes.width:g}",
            "parameters": sum(p.numel() for p in probe.parameters()),
            "forward_gflops_per_sample": forward_flops(probe) / 1e9, "seed": seed, "epochs": sizes.epochs,
            "batch_size": sizes.batch_size, "device": device_name(device), "torch_device": str(device),
            "date": now.date().isoformat(), "measured_at": now.isoformat(timespec="seconds"),
            "budget_seconds": budget_seconds, "tiny": sizes == TINY, "sizes": asdict(sizes), **_versions(),
        }

    # -- budget and phases --------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def phase(self, name: str, predicted: float | None, fn: Callable[[], dict[str, Any]],
              critical: bool = False) -> dict[str, Any] | None:
        """Run ``fn`` (its fields make the row) unless the budget will not hold its predicted seconds; a
        skip, an abort by the watchdog, or the failure of a ``critical`` phase skips every later phase."""
        row: dict[str, Any] = {**self.base, **conditions(), "phase": name,
                               "predicted_seconds": None if predicted is None else round(predicted, 2)}
        fields = None
        if self.stopped:
            row.update(status="skipped", reason=self.stopped)
        elif predicted is not None and predicted > self.left() - RESERVE_SECONDS:
            row.update(status="skipped", reason=f"budget: predicted {predicted:.0f} s, {max(self.left(), 0):.0f} s "
                                                f"left of {self.budget:.0f} s")
            self.stopped = f"budget ran out at {name}"
        else:
            started = time.perf_counter()
            try:
                fields = fn()
                row.update(status="ok", **fields)
            except KeyboardInterrupt:
                if not (self.watchdog and self.watchdog.fired):
                    raise
                row.update(status="aborted", reason=f"still running at the hard stop ({HARD_STOP} × the budget)")
                self.stopped = f"aborted during {name}"
            except Exception as exc:  # noqa: BLE001 — one broken phase must not lose the others' rows
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                if critical:
                    self.stopped = f"{name} failed"
            row["phase_seconds"] = time.perf_counter() - started
        self.rows.append(row)
        self.progress(self._line(row))
        return fields

    def _line(self, row: dict[str, Any]) -> str:
        head = f"[gpu bench {self.elapsed():6.1f} s] {row['phase']}: {row['status']}"
        if row["status"] == "ok":
            detail = f" in {row['phase_seconds']:.2f} s"
            if row.get("predicted_seconds") is not None:
                detail += f" (predicted {row['predicted_seconds']:.1f} s)"
            if "avg_gap_to_retrain" in row:
                detail += f", avg gap to retrain {row['avg_gap_to_retrain']:.3f}"
            if "provider" in row:
                detail += f", {row['provider']}, batch 1 p50 {row['b1_p50_ms']:.2f} ms"
            return head + detail
        return f"{head} ({row.get('reason') or row.get('error')})"

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        with _Watchdog(self.budget * HARD_STOP - self.elapsed()) as self.watchdog:
            try:
                self._phases()
            except KeyboardInterrupt:
                # the watchdog fired between phases: the rest is skipped
                if not self.watchdog.fired:
                    raise
                self.stopped = self.stopped or "hard stop"
        done = {r["phase"] for r in self.rows}
        for name in PHASES:  # phases never reached (an interrupt between phases)
            if name not in done:
                self.rows.append({**self.base, **conditions(), "phase": name, "status": "skipped",
                                  "reason": self.stopped})
        return self.rows

    def _phases(self) -> None:
        data = self.phase("data", None, self._data, critical=True)
        probe = self.phase("warmup", None, self._warmup, critical=True)
        if data is None or probe is None:
            for name in PHASES[2:]:
                self.phase(name, None, dict)
            return
        ips, eval_ips = probe["train_samples_per_s"], probe["eval_samples_per_s"]
        n_eval = self.n_train + len(self.holdout) + len(self.test)

        def training(n: int) -> float:
            return PREDICTION_MARGIN * (n * self.sizes.epochs / ips + n_eval / eval_ips)

        self.phase("train_parent", training(self.n_train), self._train_parent, critical=True)
        self.phase("onnx", 20.0 + 2 * self.sizes.latency_seconds, self._onnx)
        for scenario in GPU_SCENARIOS:
            mask = self._forget_mask(scenario)
            n_forget = int(mask.sum())
            measure_s = PREDICTION_MARGIN * n_eval / eval_ips
            self.phase(f"{scenario}/retrain", training(self.n_train - n_forget),
                       partial(self._retrain, scenario, mask), critical=True)
            self.phase(f"{scenario}/{NOOP}", measure_s, partial(self._noop, scenario))
            for method in GPU_METHODS:
                # slug: its floor and ~40 forward passes over the forget and held-out sets
                own = 40 * PREDICTION_MARGIN * (n_forget + len(self.holdout)) / eval_ips if method == "slug" else 1.0
                self.phase(f"{scenario}/{method}", measure_s + own, partial(self._method, scenario, method))

    # -- phases -------------------------------------------------------------------------------------

    def _data(self) -> dict[str, Any]:
        started = time.perf_counter()
        features, manifest = mnist_5k()
        data = Dataset(features, manifest)
        train, holdout, test = _samples(data.split("train")), _samples(data.split("holdout")), _samples(data.split("test"))
        rng = np.random.default_rng(self.seed)

        def limit(samples: Samples, n: int | None) -> Samples:  # a random subset: the file is sorted by label
            if n is None or n >= len(samples):
                return samples
            idx = np.sort(rng.choice(len(samples), size=n, replace=False))
            return Samples(np.asarray(samples.features)[idx], samples.labels[idx],
                           [samples.sample_ids[i] for i in idx])

        self.originals = limit(train, self.sizes.originals)
        self.holdout, self.test = limit(holdout, self.sizes.eval_limit), limit(test, self.sizes.eval_limit)
        x, y = augment(np.asarray(self.originals.features), self.originals.labels)
        n = len(self.originals)
        self.x, self.y = x[: n * self.sizes.variants], y[: n * self.sizes.variants]
        #: the training digit each training sample is a variant of
        self.origin = np.tile(np.arange(n), self.sizes.variants)
        self.n_train = len(self.y)
        return {"wall_seconds": time.perf_counter() - started, "n_train": self.n_train, "n_train_digits": n,
                "variants": self.sizes.variants, "n_holdout": len(self.holdout), "n_test": len(self.test)}

    def _warmup(self) -> dict[str, Any]:
        """CUDA start-up and cuDNN's first kernels on a throw-away network, then its throughput: training
        steps on one resident batch, and inference at batch 1024 including the copy back to the host."""
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.init()
        model = self.factory().to(self.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.sizes.lr)
        bs = min(self.sizes.batch_size, self.n_train)
        xb = torch.as_tensor(self.x[:bs]).to(self.device)
        yb = torch.as_tensor(self.y[:bs], dtype=torch.long).to(self.device)

        def step() -> None:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss.item()

        for _ in range(self.sizes.warmup_steps):
            step()
        synchronize(self.device)
        timed = time.perf_counter()
        for _ in range(self.sizes.probe_steps):
            step()
        synchronize(self.device)
        train_ips = self.sizes.probe_steps * bs / (time.perf_counter() - timed)
        model.eval()
        xe = self.x[: min(self.sizes.probe_eval, self.n_train)]
        predict_logits(model, xe)  # first inference kernels
        timed = time.perf_counter()
        for _ in range(3):
            predict_logits(model, xe)
        eval_ips = 3 * len(xe) / (time.perf_counter() - timed)
        return {"wall_seconds": time.perf_counter() - started, "train_samples_per_s": train_ips,
                "eval_samples_per_s": eval_ips,
                "train_tflops": train_ips * 3 * self.base["forward_gflops_per_sample"] / 1e3,
                "eval_tflops": eval_ips * self.base["forward_gflops_per_sample"] / 1e3}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> nn.Module:
        seed_everything(self.seed)  # the same initial weights for the parent and every retraining
        return train_model(self.factory(), x, y, epochs=self.sizes.epochs, batch_size=self.sizes.batch_size,
                           lr=self.sizes.lr, seed=self.seed, device=self.device)

    def _train_parent(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.parent = self._fit(self.x, self.y)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        return {"wall_seconds": seconds, "n_train": self.n_train,
                "train_samples_per_s": self.n_train * self.sizes.epochs / seconds,
                "test_accuracy": evaluate(self.parent, self.test.features, self.test.labels).accuracy}

    def _forget_mask(self, scenario: str) -> np.ndarray:
        """The harness's forget set over the training digits, extended to every variant of each."""
        rng = np.random.default_rng(self.seed * 1000 + SCENARIOS.index(scenario))
        return forget_mask(self.originals, scenario, rng)[self.origin]

    def _retrain(self, scenario: str, mask: np.ndarray) -> dict[str, Any]:
        forget, retain = Samples(self.x[mask], self.y[mask]), Samples(self.x[~mask], self.y[~mask])
        forgotten_class = int(forget.labels[0]) if scenario == "class" else None
        started = time.perf_counter()
        retrained = self._fit(retain.features, retain.labels)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        reference = measure(retrained, forget, retain, self.holdout, self.test, forgotten_class)
        del retrained
        inputs = UnlearnInputs(
            forget=forget, retain=retain_sample(retain, self.seed, self.sizes.retain_sample), holdout=self.holdout,
            utility_max_drop=0.02, retain_full=retain, model_factory=self.factory,
            train_params={"epochs": self.sizes.epochs, "batch_size": self.sizes.batch_size, "lr": self.sizes.lr,
                          "seed": self.seed})
        floor = floor_seconds(self.parent, inputs, self.device)
        scenario_base = {"scenario": scenario, "n_forget": len(forget),
                         "n_forget_digits": len(np.unique(self.origin[mask])), "n_train": self.n_train,
                         "floor_seconds": floor}
        self.scenario = {"name": scenario, "inputs": inputs, "forgotten_class": forgotten_class,
                         "reference": reference, "retrain_seconds": seconds, "base": scenario_base}
        return {**scenario_base, "method": "retrain", "wall_seconds": seconds, "time_ratio_to_retrain": 1.0,
                "floor_ratio": seconds / floor, **reference, **{f"gap_to_retrain_{k}": 0.0 for k in METRICS},
                "avg_gap_to_retrain": 0.0}

    def _measured(self, model: nn.Module) -> dict[str, Any]:
        s = self.scenario
        inputs = s["inputs"]
        measured = measure(model, inputs.forget, inputs.retain_full, self.holdout, self.test, s["forgotten_class"])
        return {**measured, **gaps_to_retrain(measured, s["reference"])}

    def _noop(self, scenario: str) -> dict[str, Any]:
        assert self.scenario["name"] == scenario
        return {**self.scenario["base"], "method": NOOP, "wall_seconds": 0.0, "time_ratio_to_retrain": None,
                "floor_ratio": 0.0, **self._measured(self.parent), "changed_parameters": 0}

    def _method(self, scenario: str, name: str) -> dict[str, Any]:
        assert self.scenario["name"] == scenario
        method = load_plugins().get(name)
        overrides: dict[str, Any] = {"seed": self.seed}
        if "max_seconds" in method.Config.model_fields:
            measure_reserve = 2 * RESERVE_SECONDS
            overrides["max_seconds"] = max(0.5, min(self.sizes.method_seconds, self.left() - measure_reserve))
        config = parse_config(method, overrides)
        started = time.perf_counter()
        result = run_method(method, copy.deepcopy(self.parent), self.scenario["inputs"], config, self.device)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        floor, retrain_seconds = self.scenario["base"]["floor_seconds"], self.scenario["retrain_seconds"]
        extra = {}
        if "max_seconds" in overrides:
            extra = {"max_seconds": overrides["max_seconds"],
                     "stopped_by_time_budget": bool(result.details.get("stopped_by_time_budget"))}
        return {**self.scenario["base"], "method": name, "wall_seconds": seconds,
                "time_ratio_to_retrain": retrain_seconds / seconds if seconds else float("inf"),
                "floor_ratio": seconds / floor, **self._measured(result.model),
                "changed_parameters": len(result.changed_parameters), **extra}

    def _onnx(self) -> dict[str, Any]:
        from unlearnops.export import export_onnx

        started = time.perf_counter()
        reference = copy.deepcopy(self.parent).to("cpu").eval()  # fp32 on the CPU: what ONNX is compared with
        with tempfile.TemporaryDirectory(prefix="unlearnops-gpu-bench-") as tmp:
            path = Path(tmp) / "parent.onnx"
            with contextlib.redirect_stdout(sys.stderr):  # keep --json output clean of anything printed
                exported = export_onnx(copy.deepcopy(reference), np.asarray(self.test.features), path)
            export_seconds = time.perf_counter() - started
            session, attempts = _session(path, self.device)
            providers = session.get_providers()
            provider = providers[0]
            wanted = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
            x256 = np.ascontiguousarray(np.asarray(self.test.features)[np.arange(256) % len(self.test)],
                                        dtype=np.float32)
            expected = predict_logits(reference, x256).numpy()
            (got,) = session.run(["logits"], {"input": x256})
            diff = float(np.abs(got - expected).max())
            scale = max(1.0, float(np.abs(expected).max()))
            # TF32 convolutions on the GPU round inputs to 10 mantissa bits; on the CPU both are fp32.
            tolerance = (1e-2 if provider == "CUDAExecutionProvider" else 1e-3) * scale
            row = {"wall_seconds": 0.0, "export_seconds": export_seconds, "onnx_bytes": path.stat().st_size,
                   "onnx_sha256": exported.sha256, "exporter_providers": exported.providers,
                   "exporter_max_abs_diff": exported.max_abs_diff, "provider_wanted": wanted,
                   "providers_active": providers, "provider": provider,
                   "cuda_active": provider == "CUDAExecutionProvider", "session_attempts": attempts,
                   "parity_batch": len(x256), "parity_max_abs_diff": diff, "parity_tolerance": tolerance,
                   "parity_ok": diff <= tolerance,
                   "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).mean())}
            if provider != wanted:
                row["note"] = (f"asked for {wanted}, ONNX Runtime runs on {provider}: these latencies are "
                               f"{provider}'s, not {wanted}'s")
            for batch, x in ((1, x256[:1]), (256, x256)):
                row.update({f"b{batch}_{k}": v for k, v in _latency(session, x, self.sizes).items()})
            row["wall_seconds"] = time.perf_counter() - started
            return row


def _session(path: Path, device: torch.device):
    """An ONNX Runtime session on CUDA (device's index) then CPU for a CUDA device, on CPU only otherwise. When
    the CUDA provider did not load (missing CUDA/cuDNN libraries), one more try after ``preload_dlls()``;
    returns the session and the number of tries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3

    def open_session(providers):
        with contextlib.redirect_stdout(sys.stderr):  # ONNX Runtime prints its "Falling back to ..." on stdout
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)

    if device.type != "cuda":
        return open_session(["CPUExecutionProvider"]), 1
    providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    session = open_session(providers)
    if session.get_providers()[0] == "CUDAExecutionProvider" or not hasattr(ort, "preload_dlls"):
        return session, 1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ort.preload_dlls()
    except Exception:  # noqa: BLE001 — the fallback is recorded in the row either way
        return session, 1
    return open_session(providers), 2


def _latency(session, x: np.ndarray, sizes: Sizes) -> dict[str, float]:
    """p50/p99 milliseconds of ``session.run`` on ``x`` (numpy in and out: host↔device copies included), over
    at most ``sizes.latency_runs`` runs or ``sizes.latency_seconds``, after warm-up runs; samples per second."""
    feed = {"input": x}
    for _ in range(max(3, sizes.latency_runs // 10)):
        session.run(["logits"], feed)
    times: list[float] = []
    deadline = time.perf_counter() + sizes.latency_seconds
    while len(times) < sizes.latency_runs and (len(times) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        session.run(["logits"], feed)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {"runs": len(times), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "samples_per_s": len(x) * len(times) / float(np.sum(times))}


# -- outputs ----------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The run's header line, its phases, the unlearning rows (:func:`harness.markdown_table`) and ONNX."""
    first = rows[0]
    out = [(f"GPU benchmark, {first['date']}, device **{first['device']}** ({first['torch_device']}); torch "
            f"{first['torch_version']} (CUDA {first['cuda_version']}, cuDNN {first['cudnn_version']}), onnxruntime "
            f"{first['onnxruntime_version']}; {first['model']} ({first['parameters'] / 1e6:.2f}M parameters, "
            f"{first['forward_gflops_per_sample']:.3g} GFLOPs forward per sample), epochs {first['epochs']} at batch "
            f"{first['batch_size']}; budget {first['budget_seconds']:.0f} s."), "",
           "| phase | status | seconds | predicted s | note |", "|---|---|---|---|---|"]
    for r in rows:
        note = r.get("reason") or r.get("error") or ""
        if r["phase"] == "data" and r["status"] == "ok":
            note = (f"{r['n_train']} training samples ({r['n_train_digits']} digits × {r['variants']} variants), "
                    f"{r['n_holdout']} held-out, {r['n_test']} test")
        elif r["phase"] == "warmup" and r["status"] == "ok":
            note = (f"probe: {r['train_samples_per_s']:.0f} training samples/s ({r['train_tflops']:.3g} TFLOPs), "
                    f"{r['eval_samples_per_s']:.0f} inference samples/s")
        elif r["phase"] == "train_parent" and r["status"] == "ok":
            note = f"{r['train_samples_per_s']:.0f} samples/s, test accuracy {r['test_accuracy']:.3f}"
        elif r.get("stopped_by_time_budget"):
            note = f"stopped by its max_seconds ({r['max_seconds']:.1f} s)"
        seconds = r.get("wall_seconds") if r["status"] == "ok" else r.get("phase_seconds")
        out.append(f"| {r['phase']} | {r['status']} | {_f(seconds)} | {_f(r.get('predicted_seconds'), 1)} | {note} |")
    unlearning = [r for r in rows if r["status"] == "ok" and "forget_accuracy" in r]
    if unlearning:
        out += ["", markdown_table(unlearning).rstrip()]
    onnx = [r for r in rows if r["phase"] == "onnx" and r["status"] == "ok"]
    if onnx:
        r = onnx[0]
        out += ["", "ONNX Runtime inference of the parent (numpy in and out: host↔device copies included):", "",
                ("| provider | CUDA active | batch | p50 ms | p99 ms | samples/s | parity max abs diff | tolerance | "
                 "parity ok |"), "|---|---|---|---|---|---|---|---|---|"]
        for batch in (1, 256):
            out.append(f"| {r['provider']} | {'yes' if r['cuda_active'] else 'no'} | {batch} "
                       f"| {_f(r[f'b{batch}_p50_ms'], 3)} | {_f(r[f'b{batch}_p99_ms'], 3)} "
                       f"| {_f(r[f'b{batch}_samples_per_s'], 0)} | {r['parity_max_abs_diff']:.2e} "
                       f"| {r['parity_tolerance']:.1e} | {'yes' if r['parity_ok'] else '**no**'} |")
        if r.get("note"):
            out += ["", f"**{r['note']}.**"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA when usable, else CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"),
                        help="the JSON rows; the markdown table goes beside it (.md)")
    parser.add_argument("--budget-seconds", type=float, default=540.0,
                        help="phases that would not fit are skipped (default 540: under 10 min with start-up)")
    parser.add_argument("--tiny", action="store_true", help="a 1/8-width network on 900 samples, 1 epoch (the CPU test)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (default: the table)")
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except RuntimeError as exc:
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} asked for CUDA, but torch {torch.__version__} sees no usable CUDA "
              "device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"error: --device {args.device}: only cuda and cpu are supported", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else DEFAULT
    rows = GpuBench(device, sizes, args.budget_seconds).run()
    table = write_results(rows, args.out, markdown)
    print(json.dumps(rows, indent=1) if args.json else table)
    bad = [r["phase"] for r in rows if r["status"] in ("failed", "aborted")
           or (r["phase"] == "onnx" and r["status"] == "ok" and not r["parity_ok"])]
    if bad:
        print(f"error: {', '.join(bad)}: failed, aborted or without ONNX parity (see {args.out})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
