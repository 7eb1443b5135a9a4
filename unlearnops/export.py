"""ONNX export with a dynamic batch dimension, checked by ``onnx.checker`` and by ONNX Runtime parity."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from unlearnops._lazy import lazy_module

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # imported on first use (fast start-up: loading plugins imports no torch nor pandas)
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")


PARITY_BATCH_SIZES = (1, 7, 64)
#: The ONNX opset every export targets (pinned, not torch's moving default): ONNX Runtime 1.31 runs it.
ONNX_OPSET = 18
_metadata: ContextVar[dict[str, str]] = ContextVar("unlearnops_onnx_metadata", default={})


@contextmanager
def onnx_metadata(values: dict[str, object]) -> Iterator[None]:
    """While active, every :func:`export_onnx` also writes ``values`` into the file's ``metadata_props``
    (the deletion flow sets the model name, run, parent version, method and dataset revision)."""
    token = _metadata.set({k: "" if v is None else str(v) for k, v in values.items()})
    try:
        yield
    finally:
        _metadata.reset(token)


@dataclass
class OnnxExport:
    path: Path
    sha256: str
    max_abs_diff: float
    providers: list[str]
    batch_sizes: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "max_abs_diff": self.max_abs_diff,
            "providers": self.providers,
            "batch_sizes": list(self.batch_sizes),
        }


def available_providers() -> list[str]:
    """CUDA first only when both onnxruntime and torch can really use it; CPU always last."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def inference_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=available_providers())


def export_onnx(model: nn.Module, sample: np.ndarray, path: Path,
                metadata: dict[str, object] | None = None) -> OnnxExport:
    """Export ``model`` (input shaped like ``sample`` without its batch dimension) at opset
    :data:`ONNX_OPSET`, with ``unlearnops_version`` and ``metadata`` (plus any :func:`onnx_metadata`) in the
    file's metadata, and check parity."""
    import onnx

    from unlearnops import __version__

    model = model.to("cpu").eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.as_tensor(np.asarray(sample[:2]), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,  # one self-contained file: the artifact that is hashed, logged and served
            verbose=False,
            opset_version=ONNX_OPSET,
        )
    proto = onnx.load(str(path))
    props = {"unlearnops_version": __version__, "opset": str(ONNX_OPSET), **_metadata.get(),
             **{k: "" if v is None else str(v) for k, v in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = proto.producer_name or "unlearnops"
    onnx.save(proto, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = inference_session(path)
    rng = np.random.default_rng(0)
    max_diff = 0.0
    for size in PARITY_BATCH_SIZES:
        idx = rng.integers(0, len(sample), size=size)
        x = np.ascontiguousarray(np.asarray(sample)[idx], dtype=np.float32)
        from unlearnops.model import predict_logits

        expected = predict_logits(model, x).numpy()
        (got,) = session.run(["logits"], {"input": x})
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
    from unlearnops.model import file_sha256

    return OnnxExport(path, file_sha256(path), max_diff, session.get_providers(), PARITY_BATCH_SIZES)
