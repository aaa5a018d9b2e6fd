"""The tus 1.0 routes of ``/uploads/``: OPTIONS, HEAD, PATCH, DELETE (creation: :mod:`.creation`).

Each handler checks the protocol version and the bearer token first, then the rules of
:mod:`reelflow.tus`, then does its work in a worker thread: the catalog and the store are
synchronous. What changes an upload's bytes or state holds the upload first (423 when another
request does): :class:`deployments.gateway.base.GatewayBase` says how. The class is layered by
job: ``GatewayBase`` (state, holds, body writes) < ``Creation`` (POST) < ``Gateway`` (routes).

Refusals are :class:`reelflow.tus.TusError` (status + headers); the app turns them and the
writer's typed errors into responses (:mod:`deployments.gateway.app`).

Must not: log a token or the Authorization header; buffer a body (it streams into the writer,
:mod:`deployments.gateway.body`).
"""

from __future__ import annotations

import json

import anyio
import anyio.to_thread
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.gateway.auth import not_found
from deployments.gateway.base import gateway_log
from deployments.gateway.body import declared_length
from deployments.gateway.cancel import cancel_run, check_cancellable
from deployments.gateway.creation import Creation
from reelflow import tus
from reelflow.gateway_tokens import Claims
from storage import gateway_uploads as uploads
from storage import stages

CANCEL_ATTEMPTS = 5  # lost races with the run's own row updates before the DELETE gives up


class Gateway(Creation):
    """The handlers over one store, catalog and hand-off (one per app)."""

    # --- routes ---------------------------------------------------------------------------------
    async def collection(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self.options()
        return await self.create(request)

    async def upload(self, request: Request) -> Response:
        method = request.method
        if method == "OPTIONS":
            return self.options()
        upload_id = request.path_params["upload_id"]
        claims = self._claims(request)
        if tus.UPLOAD_ID.fullmatch(upload_id) is None:
            raise not_found(upload_id)
        if method == "HEAD":
            return await self.head(upload_id, claims)
        if method == "PATCH":
            return await self.patch(request, upload_id, claims)
        return await self.delete(upload_id, claims)

    async def healthz(self, request: Request) -> Response:
        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await anyio.to_thread.run_sync(ping)
        return JSONResponse({"status": "ok"})

    def options(self) -> Response:
        return Response(
            status_code=204, headers=tus.options_headers(self.settings.gateway_max_size_bytes)
        )

    # --- HEAD -----------------------------------------------------------------------------------
    async def head(self, upload_id: str, claims: Claims) -> Response:
        row = await self._load(upload_id, claims)
        headers = {"Cache-Control": "no-store", "Upload-Offset": str(row.offset)}
        if row.length is not None:
            headers["Upload-Length"] = str(row.length)
        else:
            headers["Upload-Defer-Length"] = "1"
        if row.metadata_header:
            headers["Upload-Metadata"] = row.metadata_header
        if row.kind == "partial":
            headers["Upload-Concat"] = "partial"
        elif row.kind == "final":
            ids = json.loads(row.concat_json or "[]")
            headers["Upload-Concat"] = "final;" + " ".join(f"/uploads/{i}" for i in ids)
        headers.update(self._expiry_headers(row))
        return Response(status_code=200, headers=headers)

    # --- PATCH ----------------------------------------------------------------------------------
    async def patch(self, request: Request, upload_id: str, claims: Claims) -> Response:
        h = request.headers
        row = await self._load(upload_id, claims)
        # Checked before the hold too, so a bad request is refused without touching the lock.
        tus.check_patch(
            state_offset=row.offset,
            state_length=row.length,
            kind=row.kind,
            content_type=h.get("content-type"),
            offset_header=h.get("upload-offset"),
            body_length=declared_length(request),
        )
        checksum = tus.parse_checksum(h.get("upload-checksum"))
        written = await self._write_body(
            request,
            upload_id,
            claims,
            content_type=h.get("content-type"),
            offset_header=h.get("upload-offset"),
            checksum=checksum,
        )
        row = written.row
        headers = {"Upload-Offset": str(row.offset), **self._expiry_headers(row)}
        if written.ended == "idle":
            headers["Connection"] = "close"  # the protocol: a timed-out PATCH closes
        return Response(status_code=204, headers=headers)

    # --- DELETE ---------------------------------------------------------------------------------
    async def delete(self, upload_id: str, claims: Claims) -> Response:
        await self._load(upload_id, claims)
        how = await anyio.to_thread.run_sync(self._cancel, upload_id, claims.subject)
        gateway_log().info("upload_terminated", upload=upload_id, how=how)
        return Response(status_code=204)

    def _cancel(self, upload_id: str, subject: str) -> str:
        """DELETE: while receiving, the termination extension; after the last byte and before
        the run commits to storing it, a cancellation (:mod:`deployments.gateway.cancel`);
        after that, 409: the media stays."""
        with self._hold(upload_id) as fence:
            for _ in range(CANCEL_ATTEMPTS):
                row = self._usable(uploads.get(self.engine, upload_id), subject, upload_id)
                if row.state == uploads.RECEIVING:
                    self.writer.terminate(row, fence=fence)
                    self._stage(row, stages.CANCELLED, reason="terminated")
                    return "terminated"
                check_cancellable(row)
                cancelled = cancel_run(self, row, fence)
                if cancelled is not None:
                    self._stage(cancelled, stages.CANCELLED, reason="cancelled")
                    return "cancelled"
            raise tus.TusError(
                423, f"upload {upload_id} kept changing; retry the DELETE", reason="locked"
            )
