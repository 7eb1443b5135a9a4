"""The built-in ONNX exporter, registered through ``register_exporters``; it points at
:func:`unlearnops.export.export_onnx` (export, then parity against ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from unlearnops import __version__, hookimpl


class OnnxExporter:
    name = "onnx"
    version = __version__
    suffix = ".onnx"

    def export(self, model: nn.Module, sample: np.ndarray, path: Path) -> dict:
        from unlearnops.export import export_onnx

        return export_onnx(model, sample, path).to_dict()


@hookimpl
def register_exporters(register):
    register(OnnxExporter())
