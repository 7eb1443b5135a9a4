"""The built-in ONNX exporter, registered through ``register_exporters``; it points at
:func:`unlearnops.export.export_onnx` (export, then parity against ONNX Runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np

from unlearnops._lazy import nn
from unlearnops.plugin import __version__, export_onnx, hookimpl


if TYPE_CHECKING:  # the real modules; at run time they load on first use (fast start-up)
    from torch import nn


class OnnxExporter:
    name = "onnx"
    version = __version__
    suffix = ".onnx"

    def export(self, model: nn.Module, sample: np.ndarray, path: Path) -> dict:
        return export_onnx(model, sample, path).to_dict()


@hookimpl
def register_exporters(register):
    register(OnnxExporter())
