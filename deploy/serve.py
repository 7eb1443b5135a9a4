"""The serving app: ONNX Runtime behind FastAPI, always on the verified ``champion``.

At start and then every ``poll_seconds`` it resolves the registry's ``champion`` alias; a new version is
downloaded, its certificate verified (signature, weights, ONNX hash, tags, status "certified") and only then
swapped in — requests in flight finish on the session they started with, so an alias change costs no
downtime. A version that fails verification is never served; the previous one stays.

HTTP: ``POST /predict`` and ``GET /model`` need ``Authorization: Bearer <token>`` (``UNLEARNOPS_SERVE_TOKEN``
or ``serve.token`` in the key directory, created 0600); ``GET /health`` is open. ``auth=False``
(``unlearnops serve --no-auth``, for loopback demos) serves without a token and then ``/model`` leaves out
the request ids, run id, dataset revisions and hashes. A body above the limit (declared Content-Length first,
then the bytes counted as they arrive) is refused with 413 before anything is parsed, and a batch above
``max_batch`` before any array is built; every malformed body is a 4xx with a reason.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from unlearnops import model_registry
from unlearnops.workspace import Workspace

log = logging.getLogger("unlearnops.serve")

SERVE_TOKEN_ENV = "UNLEARNOPS_SERVE_TOKEN"
SERVE_TOKEN_FILE = "serve.token"
BYTES_PER_VALUE = 32  # a generous JSON spelling of one float32 with its separator ("-0.12345678901234568, ")
DEFAULT_BODY_BYTES = 1 << 20  # before a model is loaded


@dataclass(frozen=True)
class Loaded:
    version: str
    session: Any
    input_name: str
    input_shape: tuple[int, ...]
    certificate: dict
    providers: list[str]
    loaded_at: float


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
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= self.max_batch:
            size = len(inputs) if isinstance(inputs, list) else 0
            raise HTTPException(413 if size else 422, f"inputs must be a batch (a list) of 1..{self.max_batch} "
                                                      f"samples, got {size if isinstance(inputs, list) else 'no list'}")
        try:
            with np.errstate(over="ignore"):  # beyond float32: infinity, refused just below
                x = np.asarray(inputs, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
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


    def body_limit(self) -> int:
        """The largest /predict body accepted: ``max_batch`` samples of the served input shape."""
        loaded = self.current
        if loaded is None:
            return DEFAULT_BODY_BYTES
        return self.max_batch * int(np.prod(loaded.input_shape)) * BYTES_PER_VALUE + 4096


def create_app(ws: Workspace, max_batch: int = 256, poll_seconds: float = 5.0, token: str | None = None,
               auth: bool = True) -> FastAPI:
    """The serving app for ``ws``. With ``auth`` (the default) /predict and /model need ``token`` (default:
    :func:`~unlearnops.service.load_or_create_token` of ``UNLEARNOPS_SERVE_TOKEN`` / ``serve.token``)."""
    from unlearnops.service import BodyRefused, bearer_guard, load_or_create_token, parse_json, read_body

    server = ModelServer(ws, max_batch=max_batch, poll_seconds=poll_seconds)
    if auth:
        token = token or load_or_create_token(ws, SERVE_TOKEN_ENV, SERVE_TOKEN_FILE)
        guarded = [Depends(bearer_guard(token))]
    else:
        guarded = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.start()
        yield
        server.stop()

    app = FastAPI(title="unlearnops serving", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.post("/predict", dependencies=guarded)
    async def predict(request: Request) -> dict:
        try:
            body = await read_body(request, server.body_limit())
            payload = parse_json(body) if len(body) < (64 << 10) else await run_in_threadpool(parse_json, body)
        except BodyRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            raise HTTPException(422, 'the body is a JSON object {"inputs": [sample, ...]}')
        return await run_in_threadpool(server.predict, payload["inputs"])

    @app.get("/health")
    def health() -> dict:
        if server.current is None:
            raise HTTPException(503, f"no verified champion: {server.last_error or 'none registered'}")
        return {"status": "ok", "version": server.current.version, "last_error": server.last_error}

    @app.get("/model", dependencies=guarded)
    def model() -> dict:
        loaded = server.current
        if loaded is None:
            raise HTTPException(503, f"no verified champion: {server.last_error or 'none registered'}")
        cert = loaded.certificate
        fields = ("status", "issued_at")
        if auth:  # lineage (request ids, run, dataset, hashes) only for authenticated callers
            fields += ("run_id", "requests", "weights_sha256", "onnx", "dataset_after", "parent_model_version")
        return {
            "version": loaded.version,
            "providers": loaded.providers,
            "input_shape": list(loaded.input_shape),
            "max_batch": server.max_batch,
            "certificate": {k: cert.get(k) for k in fields},
            "loaded_at": loaded.loaded_at,
        }

    app.state.server = server
    return app
