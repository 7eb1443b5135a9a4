"""Shared fixtures: one Prefect test harness, one tiny trained workspace, one processed deletion batch.

The tiny configuration (1500 real MNIST digits, 15 epochs) trains in a few seconds on 2 CPU cores and still
memorizes its training set, so forgetting is measurable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for key, value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "UNLEARNOPS_PLUGINS": "",  # no externally installed plugin may change what the tests see
}.items():
    os.environ.setdefault(key, value)

TEST_LIMIT = 1500
TEST_EPOCHS = 15
TEST_SUBJECTS = 30


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


#: What the everyday commands must not import (each costs seconds of start-up on a small machine, issue #20).
HEAVY_MODULES = ("torch", "mlflow", "scipy", "sklearn", "prefect", "dvc", "great_expectations", "onnx")

_IMPORTS_CODE = """
import contextlib, io, json, sys
from unlearnops.cli import app
heavy = tuple(json.loads(sys.argv[2]))
seen, out = {}, {}
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            app(args)
        except SystemExit as exc:
            out[args[0] + " " + args[1]] = exc.code
    seen[args[0] + " " + args[1]] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({"imported": seen, "exit": out}))
"""


def heavy_imports(commands: list[list[str]], heavy: tuple[str, ...] = HEAVY_MODULES) -> dict:
    """Run the CLI ``commands`` one after the other in one fresh process; per command (its first two
    words), its exit code and which of ``heavy`` were imported by then (a regression guard for start-up,
    not a timing test)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IMPORTS_CODE, json.dumps(commands), json.dumps(heavy)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tiny_manifest(n: int = 200):
    """A manifest of ``n`` random 4-feature samples in 3 classes, 5 samples per subject (data-gate tests)."""
    import numpy as np

    from unlearnops.datasets import build_manifest

    rng = np.random.default_rng(0)
    features = rng.random((n, 4), dtype=np.float32)
    ids = [f"s-{i:04d}" for i in range(n)]
    return build_manifest(ids, [f"p-{i // 5}" for i in range(n)], np.arange(n) % 3, features)


def pin_subject_key(ws, seed: str = "unlearnops-tests") -> None:
    """Replace the workspace's random subject key with one derived from ``seed``.

    Reference parts are a keyed hash of each subject (``audit.sample_parts``), so with the random key that
    ``init`` writes, every run of a test trains its references on different halves of the data and a gate
    outcome measured once cannot be reproduced. Call it right after ``init``, before anything is hashed.
    """
    import hashlib

    from unlearnops.keys import SUBJECT_KEY_FILE, write_secret

    path = ws.keys_dir / SUBJECT_KEY_FILE
    path.unlink()
    write_secret(path, hashlib.sha256(seed.encode()).digest())


def make_workspace(root: Path, limit: int = TEST_LIMIT, epochs: int = TEST_EPOCHS):
    from unlearnops.project import init_workspace
    from unlearnops.workspace import Params, Workspace

    ws = Workspace(root)
    params = Params()
    params.train.epochs = epochs
    init_workspace(ws, params=params, limit=limit)
    ws.activate()
    return ws


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory):
    """A workspace with dataset version 1 and the base model registered as champion (v1)."""
    from unlearnops.project import train_base

    ws = make_workspace(tmp_path_factory.mktemp("trained") / "ws")
    train_base(ws)
    return ws


@pytest.fixture(scope="session")
def processed(trained_workspace, prefect_harness):
    """The trained workspace after one real Prefect run of the deletion flow over a subject request."""
    from unlearnops.demo import demo_subjects
    from unlearnops.intake import submit
    from unlearnops.pipelines.deletion import deletion_flow

    ws = trained_workspace
    subjects = demo_subjects(ws, TEST_SUBJECTS)
    stored, _ = submit(ws, {"subject_ids": subjects, "reason": "test"})
    summary = deletion_flow(str(ws.root))
    return ws, summary, stored, subjects


@pytest.fixture
def fresh_workspace(tmp_path):
    """An untrained workspace with a small dataset (for intake and CLI tests)."""
    return make_workspace(tmp_path / "ws", limit=300, epochs=1)


SERVE_TOKEN = "serve-test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def serving_app(tmp_path_factory):
    """The serving app (auth on, max batch 8) with a real ONNX Runtime session of a tiny linear model on
    [1, 28, 28] inputs already loaded — no registry, no training: for tests of the HTTP layer."""
    import time

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from unlearnops.deploy.serve import Loaded, create_app
    from unlearnops.export import inference_session
    from unlearnops.workspace import Workspace

    root = tmp_path_factory.mktemp("serving")
    weights = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")])
    path = root / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    session = inference_session(path)
    certificate = {"status": "certified", "issued_at": "2026-01-01T00:00:00Z", "run_id": "r" * 32,
                   "requests": ["req-000000000001"], "weights_sha256": "0" * 64, "dataset_after": "abc"}
    app = create_app(Workspace(root / "ws"), max_batch=8, token=SERVE_TOKEN)
    app.state.server.current = Loaded("7", session, "input", (1, 28, 28), certificate, session.get_providers(),
                                      time.time())
    app.state.token = SERVE_TOKEN
    return app
