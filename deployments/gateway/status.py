"""What a creator sees of an upload: its status JSON, the list of them, its thumbnail, and
the browser credentials (session cookie, events token). SSE: :mod:`deployments.gateway.events`.

Routes (:func:`status_routes`; the app adds them to its list):

* ``GET /uploads/{id}/status``: the status object (:func:`status_json`): ``stage``,
  ``bytes_received``, ``size_bytes``, ``percent``, ``rate_bytes_s``, ``eta_s``, ``flow_run_id``,
  ``media_id``, ``thumbnail_url``, ``publish``, ``reason``/``message`` on failure, times and
  ``event_id`` (the newest stage row's id: the SSE id of this state).
* ``GET /uploads/?limit=&before=``: ``{"uploads": [status...], "next": cursor | null}``, the
  creator's uploads newest first (a concatenation's partials are pieces, not listed).
* ``GET /uploads/{id}/thumbnail``: the stored media's JPEG, streamed from the store with the
  same auth (a presigned URL would expire inside a page left open, and puts the store's
  access key id in the page).
* ``POST /uploads/{id}/events-token``: ``{"token", "expires_in"}`` for ``?access=``.
* ``POST /session``: bearer → the session cookie (:mod:`deployments.gateway.auth`).

Everything is read from the catalog (``gateway_upload``, ``pipeline_stage``,
``gateway_progress``, the publish ledger; :mod:`deployments.gateway.status_view` builds the
object), so any gateway instance answers for any upload and any worker's stages show.

Must not: log a token, a cookie or a URL's query; answer for another creator's upload (404).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deployments.gateway.auth import (
    authenticate,
    authenticate_reader,
    bearer_token,
    events_token,
    not_found,
    session_token,
    set_session_cookie,
)
from deployments.gateway.events import EventStream
from deployments.gateway.status_view import read_view, status_json
from reelflow import tus
from reelflow.gateway_tokens import Claims
from storage import gateway_uploads as uploads
from storage import stages
from storage.clock import aware
from storage.gateway_uploads import GatewayUpload

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_THUMBNAIL_BYTES = 8 * 1024 * 1024  # a 640 px JPEG is ~50 KB; anything this big is not one


# --- the list's pages ---------------------------------------------------------------------------


def encode_cursor(row: GatewayUpload) -> str:
    raw = json.dumps([aware(row.created_at).isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A ``next`` cursor back to (created_at, id); 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, upload_id = json.loads(raw)
        return datetime.fromisoformat(at), str(upload_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise tus.TusError(400, "bad 'before' cursor", reason="bad_cursor") from exc


def page_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise tus.TusError(400, f"limit must be 1..{MAX_PAGE}", reason="bad_limit")
    return int(value)


# --- routes ------------------------------------------------------------------------------------


class StatusRoutes:
    """The handlers over one gateway (its catalog, store, secret and clock)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    @property
    def engine(self) -> Any:
        return self.gw.engine

    def _owned(self, upload_id: str, claims: Claims) -> GatewayUpload:
        if tus.UPLOAD_ID.fullmatch(upload_id) is None:
            raise not_found(upload_id)
        row = uploads.get(self.engine, upload_id)
        if row is None or row.owner != claims.subject or row.kind == "partial":
            raise not_found(upload_id)
        return row

    def reader(self, request: Request) -> tuple[GatewayUpload, str | None]:
        """The upload a status/events/thumbnail request reads (404 unless its creator's), and
        the events token that authorized it, if one did."""
        upload_id = request.path_params["upload_id"]
        claims, access = authenticate_reader(
            request.headers, request.query_params, self.gw.secret, upload_id, now=self.gw.now()
        )
        return self._owned(upload_id, claims), access

    def status_now(self, row: GatewayUpload, access: str | None = None) -> dict[str, Any]:
        """The upload's status object, read now (worker thread)."""
        fresh = uploads.get(self.engine, row.id) or row
        return status_json(read_view(self.engine, fresh, now=self.gw.now()), access=access)

    async def status(self, request: Request) -> Response:
        row, access = await anyio.to_thread.run_sync(self.reader, request)
        body = await anyio.to_thread.run_sync(self.status_now, row, access)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def listing(self, request: Request) -> Response:
        claims = authenticate(request.headers, self.gw.secret, now=self.gw.now())
        limit = page_limit(request.query_params.get("limit"))
        before_raw = request.query_params.get("before")
        before = decode_cursor(before_raw) if before_raw else None

        def work() -> dict[str, Any]:
            rows = uploads.list_for_owner(
                self.engine, claims.subject, limit=limit + 1, before=before, with_partials=False
            )
            page, more = rows[:limit], len(rows) > limit
            now = self.gw.now()
            return {
                "uploads": [status_json(read_view(self.engine, r, now=now)) for r in page],
                "next": encode_cursor(page[-1]) if more and page else None,
            }

        body = await anyio.to_thread.run_sync(work)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def thumbnail(self, request: Request) -> Response:
        row, _ = await anyio.to_thread.run_sync(self.reader, request)

        def read() -> bytes:
            fresh = uploads.get(self.engine, row.id) or row
            rows = stages.for_run(self.engine, row.id)
            media_id = fresh.media_id or next(
                (s.media_id for s in reversed(rows) if s.media_id), None
            )
            media = self.gw.catalog.get_media(media_id) if media_id else None
            if media is None or not media.thumbnail_key:
                raise tus.TusError(
                    404, f"upload {row.id} has no thumbnail yet", reason="no_thumbnail"
                )
            size = self.gw.store.size(media.thumbnail_key)
            if size is None or size > MAX_THUMBNAIL_BYTES:
                raise tus.TusError(404, f"upload {row.id} has no thumbnail", reason="no_thumbnail")
            data: bytes = self.gw.store.read_range(media.thumbnail_key, 0, size)
            return data

        data = await anyio.to_thread.run_sync(read)
        # Private: the bytes are the creator's; immutable: a media's thumbnail never changes.
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    async def events_token(self, request: Request) -> Response:
        now = self.gw.now()
        claims = authenticate(request.headers, self.gw.secret, now=now)
        upload_id = request.path_params["upload_id"]
        await anyio.to_thread.run_sync(self._owned, upload_id, claims)
        token, ttl = events_token(self.gw.secret, claims, upload_id, now=now)
        return JSONResponse(
            {"token": token, "expires_in": ttl}, headers={"Cache-Control": "no-store"}
        )

    async def session(self, request: Request) -> Response:
        """``POST /session`` with a bearer token: the session cookie, and who it is for. Only
        the header starts a session: a cookie renewing itself would outlive its token."""
        now = self.gw.now()
        bearer_token(request.headers)  # 401 without one
        claims = authenticate(request.headers, self.gw.secret, now=now)
        token, ttl = session_token(self.gw.secret, claims, now=now)
        body = {"subject": claims.subject, "accounts": list(claims.accounts), "expires_in": ttl}
        response = JSONResponse(body, headers={"Cache-Control": "no-store"})
        set_session_cookie(response, request, token, ttl)
        return response


def status_routes(gateway: Any) -> list[Route]:
    """The routes of this module and of the events stream, for the app's route list."""
    routes = StatusRoutes(gateway)
    stream = EventStream(routes, settings=gateway.settings)
    return [
        Route("/uploads/", routes.listing, methods=["GET"], name="upload_list"),
        Route("/uploads", routes.listing, methods=["GET"]),
        Route("/uploads/{upload_id}/status", routes.status, methods=["GET"], name="upload_status"),
        Route("/uploads/{upload_id}/events", stream.events, methods=["GET"], name="upload_events"),
        Route("/uploads/{upload_id}/thumbnail", routes.thumbnail, methods=["GET"]),
        Route("/uploads/{upload_id}/events-token", routes.events_token, methods=["POST"]),
        Route("/session", routes.session, methods=["POST"]),
    ]
