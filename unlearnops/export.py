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
#: The largest |ONNX Runtime - torch| logit difference an export may have (promotion refuses more).
PARITY_TOLERANCE = 1e-4

_log = logging.getLogger(__name__)
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
    #: ``torchscript`` or ``dynamo`` (the ``torch.export``-based exporter): see :func:`export_onnx`.
    exporter: str = "torchscript"

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "max_abs_diff": self.max_abs_diff,
            "providers": self.providers,
            "batch_sizes": list(self.batch_sizes),
            "exporter": self.exporter,
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
    file's metadata, and check parity against ONNX Runtime at :data:`PARITY_BATCH_SIZES`.

    The TorchScript exporter runs first: in a fresh process it takes about 0.1 s against about 5 s for the
    ``torch.export``-based one (``torch._dynamo``'s import and first trace; ``bench/flow_overhead.py``). A
    trace records one path through the model, so when that exporter raises or its file misses parity by more
    than :data:`PARITY_TOLERANCE` (control flow that depends on the input), the ``torch.export``-based
    exporter, which refuses what it cannot capture, writes the file instead. ``exporter`` says which did."""
    model = model.to("cpu").eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.as_tensor(np.asarray(sample[:2]), dtype=torch.float32)
    try:
        _write_onnx(model, example, path, metadata, dynamo=False)
        result = _checked(model, sample, path, "torchscript")
        if result.max_abs_diff <= PARITY_TOLERANCE:
            return result
        _log.debug("TorchScript export of %s missed parity (%.3g > %g); using the torch.export-based exporter",
                   type(model).__name__, result.max_abs_diff, PARITY_TOLERANCE)
    except Exception as error:  # noqa: BLE001 - any failure of the trace-based exporter hands over to the other one
        _log.debug("TorchScript export of %s failed (%s); using the torch.export-based exporter",
                   type(model).__name__, error, exc_info=True)
    _write_onnx(model, example, path, metadata, dynamo=True)
    return _checked(model, sample, path, "dynamo")


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, object] | None,
                *, dynamo: bool) -> None:
    import onnx

    from unlearnops import __version__

    if dynamo:
        batch_kwargs = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=65536)},)}
    else:
        batch_kwargs = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, dynamo's chatter
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamo=dynamo,
            external_data=False,  # one self-contained file: the artifact that is hashed, logged and served
            verbose=False,
            opset_version=ONNX_OPSET,
            **batch_kwargs,
        )
    proto = onnx.load(str(path))
    props = {"unlearnops_version": __version__, "opset": str(ONNX_OPSET), **_metadata.get(),
             **{k: "" if v is None else str(v) for k, v in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = proto.producer_name or "unlearnops"
    onnx.save(proto, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _checked(model: nn.Module, sample: np.ndarray, path: Path, exporter: str) -> OnnxExport:
    from unlearnops.durable import file_sha256
    from unlearnops.model import predict_logits

    session = inference_session(path)
    rng = np.random.default_rng(0)
    max_diff = 0.0
    for size in PARITY_BATCH_SIZES:
        idx = rng.integers(0, len(sample), size=size)
        x = np.ascontiguousarray(np.asarray(sample)[idx], dtype=np.float32)
        expected = predict_logits(model, x).numpy()
        (got,) = session.run(["logits"], {"input": x})
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
    return OnnxExport(path, file_sha256(path), max_diff, session.get_providers(), PARITY_BATCH_SIZES, exporter)
