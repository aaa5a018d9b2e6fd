"""The tus 1.0 handlers of ``/uploads/``: creation, HEAD, PATCH, DELETE, OPTIONS.

Each handler checks the protocol version and the bearer token first, then the rules of
:mod:`reelflow.tus`, then does its work in a worker thread: the catalog and the store are
synchronous. What changes an upload's bytes or state (PATCH, creation-with-upload, DELETE, a
final concatenation) holds the upload first: a lease row ``tus:{id}`` in the catalog
(:class:`storage.leases.Leases`, renewed by a heartbeat for as long as the request runs), taken
at once or refused with 423, so any instance may serve any request and two never write one
upload. The writer's row updates carry the hold's fencing token, so a holder that lost it (its
process paused past the TTL) cannot commit late. The row is read again under the hold and the
preconditions checked again: a PATCH that waited behind another sees its new offset (409).

Refusals are :class:`reelflow.tus.TusError` (status + headers); the app turns them and the
writer's typed errors into responses (:mod:`deployments.gateway.app`).

Must not: log a token or the Authorization header; buffer a body (it streams into the writer,
:mod:`deployments.gateway.body`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.gateway import concat
from deployments.gateway.auth import authenticate, not_found
from deployments.gateway.body import declared_length, has_body, with_body
from deployments.gateway.handoff import Handoff
from reelflow import tus
from reelflow.errors import InputRejectedError
from reelflow.gateway_tokens import Claims
from reelflow.logging import get_logger
from reelflow.rules import sniff_container
from reelflow.settings import Settings
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence, Leases
from storage.tus_writer import TusWriter

LOCK_PREFIX = "tus:"
# Requests writing bytes at once (each holds a worker thread and one part buffer); more wait
# for a thread, reading nothing meanwhile.
MAX_ACTIVE_WRITES = 64
UPLOAD_ID_BYTES = 18  # secrets.token_urlsafe(18): 24 characters, 144 random bits
_BUSY = object()


def _log() -> Any:
    # At use time: a logger bound at import would predate configure_logging (its renderer).
    return get_logger("reelflow.gateway")


class _MagicCheck:
    """``sniff_container`` for the writer, remembering its refusal: a InputRejectedError the
    writer raises is then known to be "not a video" (415), not a length error (400)."""

    def __init__(self) -> None:
        self.refusal: InputRejectedError | None = None

    def __call__(self, head: bytes) -> object:
        try:
            return sniff_container(head)
        except InputRejectedError as exc:
            self.refusal = exc
            raise


def _not_a_video(exc: InputRejectedError) -> tus.TusError:
    return tus.TusError(415, f"not a video: {exc.message}", reason=exc.reason)


def _locked(upload_id: str) -> tus.TusError:
    return tus.TusError(
        423,
        f"upload {upload_id} is busy with another request; retry when it ends",
        reason="locked",
    )


@dataclass(frozen=True)
class Written:
    """What a request that wrote bytes left: the row as written, and whether it is complete."""

    row: GatewayUpload
    received: bool
    ended: str = "complete"  # how the body ended: complete | disconnected | idle


class Gateway:
    """The handlers over one store, catalog and hand-off (one per app)."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret: bytes,
        store: ObjectStore,
        catalog: Catalog,
        handoff: Handoff,
        now: Callable[[], datetime],
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.store = store
        self.catalog = catalog
        self.engine = catalog.engine
        self.handoff = handoff
        self.now = now
        self.instance = instance or secrets.token_hex(6)
        self.leases = Leases(self.engine, ttl_s=settings.gateway_lock_ttl_s)
        self.writer = TusWriter(store, catalog, part_size=settings.gateway_part_size_bytes)
        self._limiter: anyio.CapacityLimiter | None = None
        self._active = 0  # requests writing bytes now (worker threads)
        self._idle = threading.Condition()

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        # Made on first use, inside the event loop that uses it.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(MAX_ACTIVE_WRITES)
        return self._limiter

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

    # --- helpers --------------------------------------------------------------------------------
    def _claims(self, request: Request) -> Claims:
        tus.check_version(request.headers.get("tus-resumable"), request.method)
        return authenticate(request.headers, self.secret, now=self.now())

    def _max_size(self, claims: Claims) -> int:
        return claims.limit(self.settings.gateway_max_size_bytes)

    def _usable(self, row: GatewayUpload | None, subject: str, upload_id: str) -> GatewayUpload:
        """The row, if ``subject`` owns it and it still exists for tus: 404 for another
        owner's, an unknown or a terminated upload; 410 for an expired one."""
        if row is None or row.owner != subject or row.state == uploads.CANCELLED:
            raise not_found(upload_id)
        if row.state == uploads.EXPIRED:
            raise tus.TusError(410, f"upload {upload_id} expired", reason="upload_expired")
        if row.state == uploads.RECEIVING:
            tus.check_not_expired(row.expires_at, self.now())
        return row

    async def _load(self, upload_id: str, claims: Claims) -> GatewayUpload:
        row = await anyio.to_thread.run_sync(uploads.get, self.engine, upload_id)
        return self._usable(row, claims.subject, upload_id)

    def _expiry_headers(self, row: GatewayUpload) -> dict[str, str]:
        if row.state != uploads.RECEIVING:
            return {}  # complete: it no longer expires
        return {"Upload-Expires": tus.http_date(row.expires_at)}

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until no request is writing bytes; True when none is.

        At shutdown, once uvicorn has cancelled the requests it gave up on: their bodies ended
        with the cancellation, and their threads are still making what arrived durable (a
        tail, a last part). Without this wait the process would exit under them."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout=timeout_s)

    @contextlib.contextmanager
    def _hold(self, upload_id: str) -> Iterator[Fence]:
        """This request's hold on the upload for the block, or 423 at once."""
        holder = f"gw:{self.instance}:{uuid.uuid4().hex}"
        with self.leases.hold(
            LOCK_PREFIX + upload_id, holder, wait_s=0, on_wait=lambda: _BUSY
        ) as held:
            if held.fence is None:
                raise _locked(upload_id)
            yield held.fence

    def _hand_off(self, row: GatewayUpload) -> None:
        if row.kind == "partial":
            return  # its bytes go to the pipeline as part of the final upload that names it
        _log().info("upload_received", upload=row.id, owner=row.owner, size_bytes=row.length)
        try:
            self.handoff.received(row)
        # The row stays `received`; the pipeline's sweeper hands it off again, so a failed
        # hand-off must not fail the PATCH that stored the last byte.
        except Exception as exc:
            _log().error(
                "upload_handoff_failed", upload=row.id, error=f"{type(exc).__name__}: {exc}"
            )

    # --- creation -------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        h = request.headers
        claims = self._claims(request)
        max_size = self._max_size(claims)
        spec = tus.parse_concat(h.get("upload-concat"))
        kind = spec.kind if spec is not None else "single"
        meta = tus.parse_metadata(h.get("upload-metadata"))
        if kind == "final":
            tus.check_final_creation(h)
            length = None
        else:
            length = tus.parse_length(h, max_size=max_size)
        # A partial's metadata does not carry over (the final's does): only the final's and a
        # single upload's options are publish options.
        options = (
            None
            if kind == "partial"
            else tus.upload_options(
                meta, allowed_accounts=claims.accounts, settings=self.settings, now=self.now()
            )
        )
        body = has_body(request)
        checksum = None
        if body:
            if kind == "final":
                raise tus.TusError(
                    400,
                    "a final upload takes no body: its bytes are its partials'",
                    reason="body_on_final",
                )
            if not tus.creation_has_upload(h.get("content-type")):
                raise tus.TusError(
                    415,
                    f"a creation with a body needs Content-Type: {tus.OFFSET_CONTENT_TYPE}",
                    reason="bad_content_type",
                )
            checksum = tus.parse_checksum(h.get("upload-checksum"))
            size = declared_length(request)
            if length is not None and size is not None:
                tus.check_within_length(size, length)
        if kind == "single" and length == 0:
            self._refuse_empty()
        now = self.now()
        row = GatewayUpload(
            id=secrets.token_urlsafe(UPLOAD_ID_BYTES),
            owner=claims.subject,
            account=options.account if options else None,
            metadata_header=h.get("upload-metadata") or None,
            metadata_json=json.dumps(options.as_json() if options else {}),
            length=length,
            kind=kind,
            concat_json=json.dumps(list(spec.ids)) if spec and kind == "final" else None,
            part_size=self.settings.gateway_part_size_bytes,
            store_url=self.store.url,
            staging_key=uploads.staging_key_for("-"),  # the writer sets the real one
            expires_at=now + timedelta(seconds=self.settings.gateway_upload_ttl_s),
            created_at=now,
        )
        if kind == "final":
            assert spec is not None
            row = await anyio.to_thread.run_sync(
                self._create_final, row, spec.ids, claims.subject, max_size, limiter=self.limiter
            )
        else:
            row = await anyio.to_thread.run_sync(self._create, row)
            if body:
                written = await self._write_body(
                    request,
                    row.id,
                    claims,
                    content_type=h.get("content-type"),
                    offset_header="0",
                    checksum=checksum,
                    creating=True,
                )
                row = written.row
        _log().info(
            "upload_created",
            upload=row.id,
            owner=row.owner,
            kind=row.kind,
            length=row.length,
            offset=row.offset,
        )
        headers = {
            "Location": str(request.url_for("upload", upload_id=row.id)),
            "Upload-Offset": str(row.offset),
            **self._expiry_headers(row),
        }
        return Response(status_code=201, headers=headers)

    def _refuse_empty(self) -> None:
        """A single upload of 0 bytes is no video: refused before anything is staged."""
        try:
            sniff_container(b"")
        except InputRejectedError as exc:
            raise _not_a_video(exc) from exc

    def _create(self, row: GatewayUpload) -> GatewayUpload:
        row = self.writer.create(row)
        if row.length == 0:  # only a partial gets here: complete at once (one empty part)
            row = self.writer.finish_zero_length(row)
        return row

    def _create_final(
        self, row: GatewayUpload, ids: Sequence[str], subject: str, max_size: int
    ) -> GatewayUpload:
        """The final upload of a concatenation, assembled now from its received partials."""
        found = [uploads.get(self.engine, pid) for pid in ids]
        for pid, prow in zip(ids, found, strict=True):
            if prow is None or prow.owner != subject or prow.state == uploads.CANCELLED:
                raise not_found(pid)
        partials = [p for p in found if p is not None]
        concat.check_partials(partials)
        total = tus.check_size(sum(p.length or 0 for p in partials), max_size)
        if total == 0:
            self._refuse_empty()
        with self._writing(), contextlib.ExitStack() as stack:
            fences = [stack.enter_context(self._hold(p.id)) for p in partials]
            # Read again under the holds: a DELETE or another final may have come first.
            partials = [
                self._usable(uploads.get(self.engine, p.id), subject, p.id) for p in partials
            ]
            concat.check_partials(partials)
            row.length = total
            row = self.writer.create(row)
            check = _MagicCheck()
            try:
                for p in partials:
                    concat.complete_partial(self.store, self.catalog, p)
                result = self.writer.append(
                    row, concat.partial_bytes(self.store, partials), first_bytes_check=check
                )
            except InputRejectedError as exc:
                self.writer.terminate(row)
                if check.refusal is exc:  # not a video: nothing of it is kept
                    for p, fence in zip(partials, fences, strict=True):
                        self.writer.terminate(p, fence=fence)
                    raise _not_a_video(exc) from exc
                raise
            except BaseException:
                # The partials stay received (their completed objects are reused by a retry).
                with contextlib.suppress(Exception):
                    self.writer.terminate(row)
                raise
            for p, fence in zip(partials, fences, strict=True):
                # The final holds the bytes now: the partial's staging is removed and its row
                # is done with (`stored`: nothing to hand off, nothing to clean up).
                self.writer.purge(p, fence=fence)
                uploads.cas_update(self.engine, p.id, p.version, fence=fence, state=uploads.STORED)
        if result.completed:
            self._hand_off(result.row)
        return result.row

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

    async def _write_body(
        self,
        request: Request,
        upload_id: str,
        claims: Claims,
        *,
        content_type: str | None,
        offset_header: str | None,
        checksum: tus.Checksum | None,
        creating: bool = False,
    ) -> Written:
        length_header = request.headers.get("upload-length") if not creating else None
        body_length = declared_length(request)
        max_size = self._max_size(claims)

        def work(chunks: Iterator[bytes]) -> Written:
            return self._append(
                upload_id,
                chunks,
                subject=claims.subject,
                content_type=content_type,
                offset_header=offset_header,
                body_length=body_length,
                length_header=length_header,
                max_size=max_size,
                checksum=checksum,
                creating=creating,
            )

        written, ended = await with_body(request, work, limiter=self.limiter)
        _log().info(
            "upload_patched",
            upload=upload_id,
            offset=written.row.offset,
            body_end=ended,
            received=written.received,
        )
        return dataclasses.replace(written, ended=ended)

    def _append(
        self,
        upload_id: str,
        chunks: Iterator[bytes],
        *,
        subject: str,
        content_type: str | None,
        offset_header: str | None,
        body_length: int | None,
        length_header: str | None,
        max_size: int,
        checksum: tus.Checksum | None,
        creating: bool,
    ) -> Written:
        """One body into the upload, under its hold (worker thread)."""
        with self._writing(), self._hold(upload_id) as fence:
            row = self._usable(uploads.get(self.engine, upload_id), subject, upload_id)
            tus.check_patch(
                state_offset=row.offset,
                state_length=row.length,
                kind=row.kind,
                content_type=content_type,
                offset_header=offset_header,
                body_length=body_length,
            )
            length = tus.patch_length(
                length_header, state_length=row.length, state_offset=row.offset, max_size=max_size
            )
            if length is not None and length != row.length:
                row = self.writer.declare_length(row, length, fence=fence)
            if row.state != uploads.RECEIVING:
                return Written(row, received=False)  # complete: an empty PATCH at the end
            # Only a concatenation's first partial starts the file; the final is checked
            # when it is assembled.
            check = _MagicCheck() if row.kind == "single" else None
            try:
                result = self.writer.append(
                    row, chunks, checksum=checksum, first_bytes_check=check, fence=fence
                )
            except InputRejectedError as exc:
                if check is not None and check.refusal is exc:
                    self.writer.terminate(row, fence=fence)
                    _log().info("upload_refused_not_video", upload=upload_id, reason=exc.reason)
                    raise _not_a_video(exc) from exc
                if creating:
                    self.writer.terminate(row, fence=fence)
                raise
            except BaseException:
                if creating:  # the client never learns the URL of a creation that failed
                    with contextlib.suppress(Exception):
                        self.writer.terminate(row, fence=fence)
                raise
        if result.completed:
            self._hand_off(result.row)
        return Written(result.row, result.completed)

    # --- DELETE ---------------------------------------------------------------------------------
    async def delete(self, upload_id: str, claims: Claims) -> Response:
        await self._load(upload_id, claims)
        await anyio.to_thread.run_sync(self._terminate, upload_id, claims.subject)
        _log().info("upload_terminated", upload=upload_id)
        return Response(status_code=204)

    def _terminate(self, upload_id: str, subject: str) -> None:
        with self._hold(upload_id) as fence:
            row = self._usable(uploads.get(self.engine, upload_id), subject, upload_id)
            if row.state not in (uploads.RECEIVING, uploads.RECEIVED):
                raise tus.TusError(
                    403,
                    f"upload {upload_id} is complete and {row.state}: it belongs to the pipeline",
                    reason="terminate_complete",
                )
            self.writer.terminate(row, fence=fence)
