"""HTTP intake of deletion requests (FastAPI), standalone (``unlearnops serve-intake``) or mounted beside
a serving app through :func:`intake_router`.

``POST /requests`` takes the JSON of one :class:`~unlearnops.requests.DeletionRequest` and answers with its
receipt (201 stored, 200 already stored: same idempotency key and body, the same targets as an open request,
or everything it names already deleted), 409 when the idempotency key was used for a different request,
422 with the reason when it is refused (nothing stored), 413 above :data:`MAX_BODY_BYTES`. Receipts carry
the state, due date and ``days_left``. ``GET /requests/{id}`` shows one request (state, ``days_left``,
``overdue``). Both need ``Authorization: Bearer <token>``; ``GET /health`` does not.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from unlearnops.intake import receipt, submit
from unlearnops.requests import ID_PATTERN, IdempotencyConflict, RequestRejected, RequestStore
from unlearnops.workspace import Workspace

MAX_BODY_BYTES = 1 << 20
TOKEN_ENV = "UNLEARNOPS_INTAKE_TOKEN"
TOKEN_FILE = "intake.token"


def load_or_create_token(ws: Workspace) -> str:
    """The intake token: ``UNLEARNOPS_INTAKE_TOKEN`` if set, else ``.unlearnops/keys/intake.token`` (created
    on first use, mode 0600)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = ws.keys_dir / TOKEN_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def intake_router(ws: Workspace, token: str) -> APIRouter:
    """The intake endpoints for ``ws``, guarded by ``token``."""
    if len(token) < 16:
        raise ValueError("the intake token must have at least 16 characters")
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(dependencies=[Depends(authorized)])

    @router.post("/requests")
    async def post_request(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"payload larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": f"payload larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return JSONResponse({"error": f"request rejected: body is not UTF-8 JSON ({exc})"}, status_code=422)
        try:
            stored, created = submit(ws, payload)
        except RequestRejected as exc:
            return JSONResponse({"error": f"request rejected: {exc}"}, status_code=422)
        except IdempotencyConflict as exc:
            return JSONResponse({"error": f"request rejected: {exc}"}, status_code=409)
        return JSONResponse(receipt(stored, created), status_code=201 if created else 200)

    @router.get("/requests/{request_id}")
    def get_request(request_id: str) -> dict:
        if not re.fullmatch(ID_PATTERN, request_id):
            raise HTTPException(404, "no such request")
        try:
            return RequestStore(ws.requests_db).get(request_id).view()
        except KeyError:
            raise HTTPException(404, "no such request") from None

    return router


def create_app(ws: Workspace, token: str) -> FastAPI:
    """A standalone intake app: the intake router plus ``GET /health``."""
    app = FastAPI(title="unlearnops intake", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    app.include_router(intake_router(ws, token))
    return app
