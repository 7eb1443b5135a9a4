"""HTTP intake of deletion requests (FastAPI), standalone (``unlearnops serve-intake``) or mounted beside
a serving app through :func:`intake_router`.

``POST /requests`` takes the JSON of one :class:`~unlearnops.requests.DeletionRequest` and answers with its
receipt (201 stored, 200 already stored: same idempotency key and body, the same targets as an open request,
or everything it names already deleted), 409 when the idempotency key was used for a different request,
422 with the reason when it is refused (nothing stored: malformed, not UTF-8, a byte order mark, nesting
deeper than :data:`MAX_JSON_DEPTH`, an integer too long...), 413 above :data:`MAX_BODY_BYTES` (the declared
Content-Length is checked first, then the bytes are counted as they arrive, so an oversized or chunked body is
refused without being read whole or parsed). Receipts carry the state, due date and ``days_left``.
``GET /requests/{id}`` shows one request (state, ``days_left``, ``overdue``). Both need
``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 7235); ``GET /health`` does not.
The helpers :func:`bearer_ok`, :func:`read_body` and :func:`parse_json` are shared with the serving app.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from unlearnops.intake import MAX_JSON_DEPTH, receipt, strict_json, submit
from unlearnops.requests import ID_PATTERN, IdempotencyConflict, RequestRejected, RequestStore
from unlearnops.workspace import Workspace

MAX_BODY_BYTES = 1 << 20
TOKEN_ENV = "UNLEARNOPS_INTAKE_TOKEN"
TOKEN_FILE = "intake.token"
MIN_TOKEN_CHARS = 16


class BodyRefused(ValueError):
    """A request body that is refused before or while it is parsed: ``status`` (413 or 422) and a reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def load_or_create_token(ws: Workspace, env: str = TOKEN_ENV, file: str = TOKEN_FILE) -> str:
    """A bearer token: the variable ``env`` if set, else the file ``file`` in the key directory (created on
    first use, mode 0600, in a 0700 directory). Defaults: the intake's ``UNLEARNOPS_INTAKE_TOKEN`` /
    ``intake.token``."""
    from unlearnops.keys import check_keys_dir, write_secret

    if os.environ.get(env):
        return os.environ[env]
    path = ws.keys_dir / file
    if not path.is_file():
        write_secret(path, secrets.token_urlsafe(32).encode())
    check_keys_dir(path.parent)
    return path.read_text().strip()


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` under the scheme ``Bearer`` (any case,
    RFC 7235), compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode("utf-8", "replace"))


def bearer_guard(token: str):
    """A FastAPI dependency that answers 401 unless the request carries ``token``."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a bearer token must have at least {MIN_TOKEN_CHARS} characters")

    async def authorized(request: Request) -> None:  # async: no thread hop per request
        if not bearer_ok(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorized


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes: a larger declared Content-Length is refused (413) before a byte is
    read, and a streamed (chunked) body is counted as it arrives and refused once over the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyRefused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise BodyRefused(413, f"payload larger than {limit} bytes (Content-Length {int(declared)})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyRefused(413, f"payload larger than {limit} bytes")
    return bytes(body)


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON of a request body (:func:`unlearnops.intake.strict_json`); :class:`BodyRefused` (422) with
    the reason for a byte order mark, bytes that are not UTF-8, malformed JSON, ``NaN``/``Infinity``, numbers
    out of range, integers longer than Python converts, or nesting deeper than ``max_depth``."""
    try:
        return strict_json(body, max_depth=max_depth)
    except RequestRejected as exc:
        raise BodyRefused(422, str(exc)) from None


def intake_router(ws: Workspace, token: str) -> APIRouter:
    """The intake endpoints for ``ws``, guarded by ``token``."""
    router = APIRouter(dependencies=[Depends(bearer_guard(token))])

    @router.post("/requests")
    async def post_request(request: Request) -> JSONResponse:
        try:
            payload = parse_json(await read_body(request, MAX_BODY_BYTES))
        except BodyRefused as exc:
            return JSONResponse({"error": f"request rejected: {exc}"}, status_code=exc.status)
        try:
            stored, created = await run_in_threadpool(submit, ws, payload)
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
