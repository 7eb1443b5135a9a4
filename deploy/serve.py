"""The serving app: ONNX Runtime behind FastAPI, always on the verified ``champion``.

At start and then every ``poll_seconds`` it resolves the registry's ``champion`` alias; a new version is
downloaded, its certificate verified (signature, weights, ONNX hash, tags, status "certified") and only then
swapped in — requests in flight finish on the session they started with, so an alias change costs no
downtime. A version that fails verification is never served; the previous one stays.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from unlearnops import model_registry
from unlearnops.workspace import Workspace

log = logging.getLogger("unlearnops.serve")


@dataclass(frozen=True)
class Loaded:
    version: str
    session: Any
    input_name: str
    input_shape: tuple[int, ...]
    certificate: dict
    providers: list[str]
    loaded_at: float


class PredictRequest(BaseModel):
    inputs: list = Field(..., description="A batch: a list of samples, each shaped like the model's input.")


class ModelServer:
    """Holds the verified champion and swaps it when the alias moves."""

    def __init__(self, ws: Workspace, max_batch: int = 256, poll_seconds: float = 5.0):
        self.ws, self.max_batch, self.poll_seconds = ws, max_batch, poll_seconds
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, version: str) -> Loaded:
        """Verify ``version`` (refused when purged by a signed record, or not certified), then build the
        session from ONNX bytes checked against the signed certificate after download, before parsing."""
        import onnxruntime as ort

        from unlearnops.export import available_providers
        from unlearnops.verification import verified_onnx, verify_version

        verification = verify_version(self.ws, version)
        if not verification.ok or verification.status != "certified" or verification.purged:
            reasons = verification.problems or (["its weights were purged"] if verification.purged else
                                                [f"certificate status {verification.status!r}"])
            raise RuntimeError(f"v{version} not served: " + "; ".join(reasons))
        data, certificate = verified_onnx(self.ws, version)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(data, sess_options=options, providers=available_providers())
        (spec,) = session.get_inputs()
        return Loaded(version, session, spec.name, tuple(int(d) for d in spec.shape[1:]), certificate,
                      session.get_providers(), time.time())

    def refresh(self) -> None:
        """Follow the champion alias; keep serving the old version if the new one cannot be verified."""
        try:
            version = model_registry.resolve_version(self.ws, "champion")
            if version is None or (self.current and self.current.version == version):
                return
            self.current = self.load(version)  # one reference assignment: readers see old or new, never half
            self.last_error = None
            log.warning("serving champion v%s", version)
        except Exception as exc:  # reported on /health, never fatal for the version being served
            self.last_error = str(exc)
            log.warning("champion refresh failed: %s", exc)

    def start(self) -> None:
        self.refresh()

        def loop():
            while not self._stop.wait(self.poll_seconds):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def predict(self, inputs: list) -> dict:
        loaded = self.current
        if loaded is None:
            raise HTTPException(503, f"no verified champion to serve yet: {self.last_error or 'none registered'}")
        try:
            x = np.asarray(inputs, dtype=np.float32)
        except (ValueError, TypeError):
            raise HTTPException(422, "inputs must be a rectangular nested list of numbers") from None
        if x.ndim == 0 or x.shape[1:] != loaded.input_shape:
            raise HTTPException(
                422, f"each sample must have shape {list(loaded.input_shape)}; got batch shape {list(x.shape)}"
            )
        if not 1 <= len(x) <= self.max_batch:
            raise HTTPException(413 if len(x) else 422, f"batch size must be 1..{self.max_batch}, got {len(x)}")
        if not np.isfinite(x).all():
            raise HTTPException(422, "inputs contain NaN or infinity")
        (logits,) = loaded.session.run(None, {loaded.input_name: x})
        return {"version": loaded.version, "predictions": logits.argmax(1).tolist(), "logits": logits.tolist()}


def create_app(ws: Workspace, max_batch: int = 256, poll_seconds: float = 5.0) -> FastAPI:
    server = ModelServer(ws, max_batch=max_batch, poll_seconds=poll_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.start()
        yield
        server.stop()

    app = FastAPI(title="unlearnops serving", version="1", lifespan=lifespan)

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        return server.predict(request.inputs)

    @app.get("/health")
    def health() -> dict:
        if server.current is None:
            raise HTTPException(503, f"no verified champion: {server.last_error or 'none registered'}")
        return {"status": "ok", "version": server.current.version, "last_error": server.last_error}

    @app.get("/model")
    def model() -> dict:
        loaded = server.current
        if loaded is None:
            raise HTTPException(503, f"no verified champion: {server.last_error or 'none registered'}")
        cert = loaded.certificate
        return {
            "version": loaded.version,
            "providers": loaded.providers,
            "input_shape": list(loaded.input_shape),
            "certificate": {k: cert.get(k) for k in ("status", "run_id", "issued_at", "requests", "weights_sha256",
                                                     "onnx", "dataset_after", "parent_model_version")},
            "loaded_at": loaded.loaded_at,
        }

    app.state.server = server
    return app
