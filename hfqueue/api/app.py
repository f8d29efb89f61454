"""The FastAPI application behind ``hfq api``: one :class:`~hfqueue.Client`, bearer API keys, size limits, and
errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) so every client reads them alike.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hfqueue.api import jobs, openai
from hfqueue.api.common import ErrorBody
from hfqueue.api.uploads import Uploads
from hfqueue.client import Client
from hfqueue.core.config import Settings
from hfqueue.errors import BrokerUnavailableError, HfqError, InvalidSpecError, JobNotFoundError

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/files"


def create_app(settings: Settings) -> FastAPI:
    """The API for these settings; its :class:`~hfqueue.Client` opens with the app and closes with it."""
    from hfqueue import __version__

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = Client(settings)
        try:
            yield
        finally:
            app.state.client.close()

    app = FastAPI(title="hfqueue", version=__version__, lifespan=lifespan,
                  description="Batch inference jobs for Hugging Face models, and OpenAI-compatible batches.")
    app.state.settings = settings
    app.state.uploads = Uploads(settings.api_files_dir or settings.state_dir / "api-files")
    app.add_middleware(BodyLimit, default=int(settings.api_max_body_mb * 2**20),
                       upload=int(settings.api_max_upload_mb * 2**20))
    _handlers(app)

    @app.get("/health", tags=["health"], operation_id="health",
             responses={503: {"model": ErrorBody, "description": "Redis is down"}})
    def health(request: Request) -> dict[str, str]:
        """Whether the API can reach Redis (no API key needed)."""
        try:
            request.app.state.client.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis is "unhealthy"
            raise BrokerUnavailableError(f"Redis does not answer: {type(exc).__name__}") from None
        return {"status": "ok"}

    app.include_router(jobs.router)
    app.include_router(openai.router)
    return app


def error_response(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the one shape every response uses (:class:`ErrorBody`)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _handlers(app: FastAPI) -> None:
    """Map every error to the one JSON shape and the status a client can act on."""

    body = error_response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}.get(
            exc.status_code, "invalid_request_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several
            headers["Allow"] = ", ".join(_methods(request.app, request.url.path))
        return body(exc.status_code, str(exc.detail), kind, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: "
                             f"{str(e.get('msg', '')).removeprefix('Value error, ')}" for e in exc.errors())
        return body(422, f"malformed request: {problems}", "invalid_request_error", param=where)

    @app.exception_handler(HfqError)
    async def hfq_error(_: Request, exc: HfqError) -> JSONResponse:
        if isinstance(exc, JobNotFoundError):
            return body(404, str(exc), "not_found_error")
        if isinstance(exc, BrokerUnavailableError):
            return body(503, str(exc), "server_error")
        status = 400 if isinstance(exc, InvalidSpecError) else 409
        return body(status, str(exc), "invalid_request_error")


def _methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path``."""
    from starlette.routing import Match, Route

    scope = {"type": "http", "path": path, "method": "GET"}
    found = {m for r in app.routes if isinstance(r, Route) and r.matches(scope)[0] != Match.NONE
             for m in (r.methods or ())}
    return sorted(found)


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, from its Content-Length or while it streams in."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, default: int, upload: int) -> None:
        self.app, self.default, self.upload = app, default, upload

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.upload if upload else self.default
        setting = "HFQ_API_MAX_UPLOAD_MB" if upload else "HFQ_API_MAX_BODY_MB"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, f"request body larger than {limit} bytes ({setting})")
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a body without Content-Length (chunked) that keeps coming
                raise HTTPException(413, f"request body larger than {limit} bytes ({setting})")
            return message

        await self.app(scope, limited, send)


async def _too_large(send: Callable[[dict[str, Any]], Awaitable[None]], message: str) -> None:
    # Before any route runs, so the app's handlers cannot answer: the same JSON response, sent by hand.
    await error_response(413, message, "request_too_large")(
        {"type": "http"}, _no_body, send)  # type: ignore[arg-type]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
