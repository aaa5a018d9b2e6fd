"""The webhook edge: an HTTP app taking S3-format notification bodies (MinIO, Ceph) for the bridge.

Owns: the shared-secret check (:func:`authorized`, :func:`check_webhook_secret`), the bounded
body read (:func:`read_bounded`, at most :data:`MAX_WEBHOOK_BODY_BYTES`) and the Starlette app
(:func:`make_webhook_app`): ``POST /`` and ``GET /healthz``.

Must not: answer 200 before the bridge returned (its events were accepted; 5xx makes the sender
retry), read more of a body than the limit, run the blocking bridge on the event loop, or
listen without a secret of at least :data:`MIN_WEBHOOK_SECRET_CHARS` characters.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.s3_events.bridge import Bridge, log
from deployments.s3_events.notifications import MalformedNotificationError
from reelflow.errors import ConfigurationError, ReelflowError

MAX_WEBHOOK_BODY_BYTES = 1024 * 1024
MIN_WEBHOOK_SECRET_CHARS = 32  # a shared secret shorter than this can be guessed offline


def authorized(header: str | None, secret: str) -> bool:
    """``Authorization: Bearer <secret>`` or the bare secret (MinIO's ``auth_token``)."""
    if not header or not secret:
        return False
    expected = secret.encode()
    scheme, _, rest = header.partition(" ")
    bearer = rest.strip() if scheme.lower() == "bearer" else ""
    # Both comparisons always run, so timing does not reveal which form was tried.
    bare_ok = hmac.compare_digest(header.strip().encode(), expected)
    bearer_ok = hmac.compare_digest(bearer.encode(), expected)
    return bare_ok or bearer_ok


def check_webhook_secret(secret: str) -> None:
    """Refuse a missing or short secret (ConfigurationError), before anything listens."""
    if not secret.strip():
        raise ConfigurationError("the webhook needs a secret (REELFLOW_WEBHOOK_SECRET)")
    if len(secret.strip()) < MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigurationError(
            f"REELFLOW_WEBHOOK_SECRET is {len(secret.strip())} characters; the webhook needs at "
            f"least {MIN_WEBHOOK_SECRET_CHARS} (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )


async def read_bounded(chunks: Any, limit: int) -> bytes | None:
    """The body from an async iterator of chunks, or None as soon as it passes ``limit``
    bytes; the rest is never read (chunked bodies declare no length to refuse up front)."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def make_webhook_app(bridge: Bridge, *, secret: str) -> Starlette:
    """``POST /`` takes S3-format notification bodies; ``GET /healthz`` answers probes."""
    check_webhook_secret(secret)

    async def notify(request: Request) -> JSONResponse:
        if not authorized(request.headers.get("authorization"), secret):
            client = request.client.host if request.client else None
            log().warning("webhook_unauthorized", client=client)
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_WEBHOOK_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            body = await read_bounded(request.stream(), MAX_WEBHOOK_BODY_BYTES)
        except ClientDisconnect:
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        if body is None:
            # The connection is closed after this reply: the unread rest is never consumed.
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            # boto3 and the Prefect client block; keep them off the event loop.
            ids = await run_in_threadpool(bridge.handle, body)
        except MalformedNotificationError as exc:
            log().warning("webhook_body_malformed", error=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ReelflowError as exc:
            # The sender (MinIO keeps a queue_dir) retries on 5xx; nothing was emitted yet
            # or the ids it re-sends are dropped as duplicates.
            log().error("webhook_delivery_failed", error=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"event_ids": ids})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/", notify, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    )
