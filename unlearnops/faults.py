"""Fault injection for the crash-safety tests.

``UNLEARNOPS_FAULT_AFTER=<point>`` ends the process with ``os._exit(137)`` when the flow reaches that
point, as ``kill -9`` would: no ``finally`` block, ``atexit`` handler or buffered write runs. The points are
the step names of :data:`unlearnops.flow.batch.STEPS` (reached once the step's completion is on disk) and the
points inside a step listed in :data:`INNER_POINTS` (reached after a side effect, before it is recorded).
"""

from __future__ import annotations

import os
import sys

ENV = "UNLEARNOPS_FAULT_AFTER"
EXIT_CODE = 137

#: Points inside a step, between an external side effect and the batch record that remembers it.
INNER_POINTS = (
    "dataset_version.features_replaced",  # features.npy replaced, manifest.parquet not yet
    "dataset_version.committed",  # dataset version committed to git, batch not yet updated
    "register.version_created",  # MLflow version registered, alias and batch not yet updated
)


def point(name: str) -> None:
    """End the process here when ``UNLEARNOPS_FAULT_AFTER`` names this point."""
    if os.environ.get(ENV) == name:
        sys.stderr.write(f"unlearnops: fault injected after {name!r}: exiting with {EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
