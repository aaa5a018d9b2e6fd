"""The upload gateway's Starlette app: routes, middleware, and errors turned into responses.

Routes: ``OPTIONS|POST /uploads/`` (also without the slash), ``HEAD|PATCH|DELETE|OPTIONS
/uploads/{id}``, ``GET /healthz``; the handlers are :class:`deployments.gateway.uploads.Gateway`.
``GET /metrics`` and its middleware (counts, bytes, PATCH latency): :mod:`.metrics`.

Middleware, outermost first:

* CORS (only when ``REELFLOW_GATEWAY_CORS_ORIGINS`` is set), before anything else so a browser's
  preflight is answered without a token; the allow/expose header lists are :mod:`reelflow.tus`'s
  (a header missing from Expose-Headers is invisible to browser code).
* ``X-HTTP-Method-Override``: the request's method becomes the header's (the spec's MUST, for
  clients that can only send GET/POST), before routing, so the route sees PATCH or DELETE.
* ``Tus-Resumable: 1.0.0`` on every response but to OPTIONS.

Errors: a :class:`reelflow.tus.TusError` is its own status and headers; the writer's and the
store's typed errors map to the status a tus client acts on (:func:`status_for`). The body of
an error is its one-line message. Nothing here logs a request's headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.gateway.accounts import account_routes
from deployments.gateway.auth import gateway_secret
from deployments.gateway.base import gateway_log
from deployments.gateway.handoff import Handoff, default_handoff
from deployments.gateway.metrics import GatewayMetrics
from deployments.gateway.page import page_routes
from deployments.gateway.status import status_routes
from deployments.gateway.uploads import Gateway
from reelflow import tus
from reelflow.errors import (
    InputRejectedError,
    LeaseLostError,
    ReelflowError,
    UploadNotFoundError,
)
from reelflow.settings import Settings
from storage.tus_writer import ChecksumMismatchError, LengthExceededError, UploadConflictError

RETRY_AFTER_S = 1
# At shutdown, how long the requests uvicorn cancelled get to make what they received durable.
DRAIN_S = 15.0


def cors_origins(value: str) -> list[str]:
    """``REELFLOW_GATEWAY_CORS_ORIGINS`` as a list (comma-separated; ``*`` for any)."""
    return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]


class MethodOverride:
    """The method named by ``X-HTTP-Method-Override`` becomes the request's (not for
    OPTIONS: a CORS preflight stays what it is)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            override = _header(scope, b"x-http-method-override")
            if override is not None:
                try:
                    method = tus.effective_method(scope["method"], override)
                except tus.TusError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
                scope = {**scope, "method": method}
        await self.app(scope, receive, send)


class TusResumable:
    """``Tus-Resumable: 1.0.0`` on every response but to OPTIONS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"tus-resumable", tus.TUS_VERSION.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def status_for(exc: BaseException) -> tuple[int, dict[str, str], str]:
    """The HTTP status, headers and reason a refused or failed request answers with."""
    if isinstance(exc, tus.TusError):
        return exc.status, exc.headers, exc.reason
    if isinstance(exc, ChecksumMismatchError):
        return tus.CHECKSUM_MISMATCH_STATUS, {}, "checksum_mismatch"
    if isinstance(exc, LengthExceededError):
        return 400, {}, "past_upload_length"
    if isinstance(exc, UploadConflictError):
        return 409, {}, "conflict"  # the client asks HEAD for the offset and resumes
    if isinstance(exc, LeaseLostError):
        return 423, {}, "locked"
    if isinstance(exc, UploadNotFoundError):
        return 410, {}, "upload_gone"  # the staged upload was aborted (expired, cleaned up)
    if isinstance(exc, InputRejectedError):
        return 400, {}, exc.reason
    if isinstance(exc, ReelflowError) and exc.retryable:
        return 503, {"Retry-After": str(RETRY_AFTER_S)}, getattr(exc, "reason", "unavailable")
    return 500, {}, "internal_error"


def error_response(exc: BaseException) -> Response:
    status, headers, _ = status_for(exc)
    message = str(exc) if isinstance(exc, ReelflowError) else "internal error"
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    status, _, reason = status_for(exc)
    fields: dict[str, Any] = {
        "method": request.method,
        "path": request.url.path,
        "status": status,
        "reason": reason,
    }
    if status >= 500:
        gateway_log().error("request_failed", **fields, error=f"{type(exc).__name__}: {exc}"[:500])
    else:
        gateway_log().info("request_refused", **fields, message=str(exc)[:300])
    response = error_response(exc)
    if request.method == "HEAD":  # no body, and no Upload-Offset on an error (the spec)
        return Response(status_code=response.status_code, headers=dict(response.headers))
    return response


def build_app(
    settings: Settings,
    *,
    runtime: Any = None,
    handoff: Handoff | None = None,
    now: Callable[[], datetime] | None = None,
) -> Starlette:
    """The gateway app over ``settings``' store and catalog (or ``runtime``'s).

    ``now`` is the clock of expiry and token checks (tests move it). Raises
    ConfigurationError without a signing secret of at least 32 bytes.
    """
    secret = gateway_secret(settings)
    if runtime is None:
        from storage.runtime import Runtime

        runtime = Runtime.from_settings(settings)
    gateway = Gateway(
        settings,
        secret=secret,
        store=runtime.store,
        catalog=runtime.catalog,
        handoff=handoff or default_handoff(settings),
        now=now or (lambda: datetime.now(UTC)),
    )
    metrics = GatewayMetrics(gateway.engine, now=gateway.now)
    routes = [
        Route("/uploads/", gateway.collection, methods=["POST", "OPTIONS"], name="uploads"),
        Route("/uploads", gateway.collection, methods=["POST", "OPTIONS"]),
        Route(
            "/uploads/{upload_id}",
            gateway.upload,
            methods=["HEAD", "PATCH", "DELETE", "OPTIONS"],
            name="upload",
        ),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        *metrics.routes(),
        *status_routes(gateway),
        *account_routes(gateway),
        *page_routes(gateway),
    ]
    middleware: list[Middleware] = []
    origins = cors_origins(settings.gateway_cors_origins)
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=list(tus.CORS_ALLOW_METHODS),
                allow_headers=list(tus.CORS_ALLOW_HEADERS),
                expose_headers=list(tus.CORS_EXPOSE_HEADERS),
                max_age=86400,
            )
        )
    middleware += [Middleware(MethodOverride), Middleware(TusResumable)]
    middleware.append(metrics.middleware())  # inside MethodOverride: sees the effective method

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A hand-off may run in the background (the pipeline's sweeper): optional start/close.
        start = getattr(gateway.handoff, "start", None)
        if callable(start):
            await anyio.to_thread.run_sync(start)
        try:
            yield
        finally:
            if not await anyio.to_thread.run_sync(gateway.drain, DRAIN_S):
                gateway_log().warning("gateway_stopped_while_writing", waited_s=DRAIN_S)
            close = getattr(gateway.handoff, "close", None)
            if callable(close):
                await anyio.to_thread.run_sync(close)
        # After uvicorn drained the in-flight requests (or gave up on them).
        gateway_log().info("gateway_stopped", instance=gateway.instance)
        runtime.catalog.engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ReelflowError: _on_error, Exception: _on_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
