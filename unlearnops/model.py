"""Models: the demo CNN, training, evaluation, and saving/loading weights with their factory path.

Nothing here assumes images: a model is any ``nn.Module`` mapping a float32 batch to class logits, built by
the factory named in the workspace settings.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearnops.durable import file_sha256  # noqa: F401  (re-exported: model.file_sha256 callers)


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers: about 0.2M parameters, trains on 3.5k MNIST digits in seconds."""

    def __init__(self, n_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def resolve(import_path: str) -> Callable:
    """``"package.module:attr"`` → the object; a clear error names what could not be found."""
    module_name, _, attr = import_path.partition(":")
    if not attr:
        raise ValueError(f"import path {import_path!r} must look like 'package.module:name'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {import_path!r}: {exc}") from exc


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when it is really usable, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Plain Adam training; deterministic for a given seed on CPU. ``progress(epoch, loss)`` after each epoch."""
    generator = seed_everything(seed)
    model.to(device).train()
    # Copies: the arrays may be read-only memory maps, which torch must not share.
    x = torch.from_numpy(np.array(features, dtype=np.float32))
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if progress:
            progress(epoch + 1, total / len(x))
    return model.eval()


def inference_batch_size(device) -> int:
    """Samples per batch of a forward-only pass on ``device``. On a CPU, batches of image activations much
    beyond a few hundred samples outgrow the caches (the CNN over 749 held-out digits: 0.23 s in one batch,
    0.12 s in 256-sample ones); a GPU wants large batches."""
    return 1024 if torch.device(device).type == "cuda" else 256


@torch.no_grad()
def predict_logits(model: nn.Module, features: np.ndarray, batch_size: int | None = None) -> torch.Tensor:
    """The model's outputs for ``features``, on the CPU (batches of :func:`inference_batch_size` by default)."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    model.eval()
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if len(x) == 0:
        return torch.empty(0)
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@dataclass
class Evaluation:
    """Per-sample outputs that every gate and metric is computed from."""

    correct: np.ndarray  # bool
    loss: np.ndarray  # cross-entropy per sample
    phi: np.ndarray  # logit-scaled confidence of the true label, log(p / (1 - p))
    predicted: np.ndarray | None = None  # predicted label per sample (argmax)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")


def evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> Evaluation:
    logits = predict_logits(model, features)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        empty = np.zeros(0)
        return Evaluation(empty.astype(bool), empty, empty, empty.astype(np.int64))
    log_probs = F.log_softmax(logits.double(), dim=1)
    log_p = log_probs.gather(1, y[:, None]).squeeze(1)
    # log(1 - p) from the other classes' probabilities, stable even when p is close to 1.
    others = log_probs.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    log_not_p = torch.logsumexp(others, dim=1)
    return Evaluation(
        correct=(logits.argmax(1) == y).numpy(),
        loss=(-log_p).numpy(),
        phi=(log_p - log_not_p).numpy(),
        predicted=logits.argmax(1).numpy(),
    )


# -- weights on disk ------------------------------------------------------------------------------


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state dict as safetensors bytes: tensors and a JSON header, nothing that runs when read."""
    from safetensors.torch import save

    # Contiguous copies: safetensors refuses views and tensors that share memory (tied weights).
    return save({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def save_weights(model: nn.Module, path: Path) -> str:
    """Save the state dict as a safetensors file; return the file's sha256 (recorded in certificates)."""
    data = weights_bytes(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def state_dict_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """A state dict from safetensors bytes, or from a ``torch.save`` file read with ``weights_only=True``
    (tensors and containers only, never arbitrary objects). Anything else is a ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if data[:2] == b"PK":  # a torch.save zip archive: only weights_only unpickling, never a full pickle
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"not a plain state dict (refused to unpickle anything else): {exc}") from exc
    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"not a safetensors file: {exc}") from exc


def model_from_bytes(factory: Callable[[], nn.Module], data: bytes, device: torch.device | str = "cpu") -> nn.Module:
    """A model from ``factory()`` with the weights in ``data`` (:func:`state_dict_from_bytes`), in eval mode."""
    model = factory()
    model.load_state_dict(state_dict_from_bytes(data))
    return model.to(device).eval()


def load_weights(factory: Callable[[], nn.Module], path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """A model from ``factory()`` with the weights saved at ``path``, in eval mode on ``device``."""
    return model_from_bytes(factory, Path(path).read_bytes(), device)


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = (
            nn.Sequential()
            if stride == 1 and channels_in == channels_out
            else nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(channels_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A ResNet-style network in plain torch: a stem, three residual stages (16/32/64 channels), global
    average pooling and a linear head. About 0.2M parameters."""

    def __init__(self, n_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = _ResidualBlock(16, 16, 1)
        self.stage2 = _ResidualBlock(16, 32, 2)
        self.stage3 = _ResidualBlock(32, 64, 2)
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TabularMLP(nn.Module):
    """A multilayer perceptron for tabular features."""

    def __init__(self, in_features: int = 64, n_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def multiply_adds(model: nn.Module, *inputs) -> int:
    """Multiply-accumulates of the linear layers and convolutions that one call of ``model`` on ``inputs``
    runs (normalisation, activations, pooling and additions left out; with a batch of one, per sample).
    Counted by forward hooks, without gradients; ``model`` is left as it was."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            total += output.numel() * (module.in_channels // module.groups) * int(np.prod(module.kernel_size))

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total


@torch.no_grad()
def penultimate_features(model: nn.Module, features: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The representation the model's classifier sees: the input of its last ``nn.Linear`` layer (or what
    ``model.penultimate(x)`` returns, when the model defines it), one float32 row per sample."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    model.eval()
    own = getattr(model, "penultimate", None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if own is None and not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer and no penultimate(x) method")
    captured: list[torch.Tensor] = []
    hook = None if own else linears[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    out = []
    try:
        for start in range(0, len(features), batch_size):
            x = torch.as_tensor(np.asarray(features[start:start + batch_size]), dtype=torch.float32).to(device)
            if own:
                out.append(own(x).flatten(1).cpu())
            else:
                captured.clear()
                model(x)
                out.append(captured[-1].flatten(1).cpu())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0), np.float32)
