"""The built-in ONNX exporter, registered through ``register_exporters``; it points at
:func:`unlearnops.export.export_onnx` (export, then parity against ONNX Runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np

from unlearnops.plugin import __version__, export_onnx, hookimpl, lazy_module


if TYPE_CHECKING:
    from torch import nn
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    nn = lazy_module("torch.nn")


class OnnxExporter:
    name = "onnx"
    version = __version__
    suffix = ".onnx"

    def export(self, model: nn.Module, sample: np.ndarray, path: Path) -> dict:
        return export_onnx(model, sample, path).to_dict()


@hookimpl
def register_exporters(register):
    register(OnnxExporter())
