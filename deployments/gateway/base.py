"""What every tus handler of the gateway shares: its state and the rules around a write.

:class:`GatewayBase` holds the store, catalog, writer, leases and hand-off of one app, and does
what more than one handler needs: the version and token check, ownership and expiry of a row,
the upload's hold (a lease row ``tus:{id}`` in the catalog, :class:`storage.leases.Leases`,
renewed by a heartbeat for as long as the request runs; taken at once or refused with 423), a
request body written into an upload under that hold (PATCH and creation-with-upload), the
count of requests writing bytes (drained at shutdown), and the hand-off of a complete upload.
The writer's row updates carry the hold's fencing token, so a holder that lost it (its process
paused past the TTL) cannot commit late. The row is read again under the hold and the
preconditions checked again: a PATCH that waited behind another sees its new offset (409).

What the creator sees is written here too: the stage rows the gateway owns
(:mod:`storage.stages`: ``receiving`` at creation, ``received`` once the last byte is durable,
``cancelled``; a concatenation's partials get none, they are pieces of their final upload)
and a progress sample (:mod:`storage.gateway_progress`) where each write starts and ends, for
the status API's rate. Both are best effort: a failed insert is logged and never fails the
request that stored the bytes (the row's own state still answers the status).

Must not: log a token or the Authorization header; buffer a body (it streams into the writer,
:mod:`deployments.gateway.body`). The routes are :mod:`deployments.gateway.uploads`'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request

from deployments.gateway.auth import authenticate, not_found
from deployments.gateway.body import declared_length, with_body
from deployments.gateway.handoff import Handoff
from reelflow import tus
from reelflow.errors import InputRejectedError
from reelflow.gateway_tokens import Claims
from reelflow.logging import get_logger
from reelflow.rules import sniff_container
from reelflow.settings import Settings
from storage import gateway_progress as progress
from storage import gateway_uploads as uploads
from storage import stages
from storage.base import ObjectStore
from storage.catalog import Catalog
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence, Leases
from storage.tus_writer import TusWriter

LOCK_PREFIX = "tus:"
# Requests writing bytes at once (each holds a worker thread and one part buffer); more wait
# for a thread, reading nothing meanwhile.
MAX_ACTIVE_WRITES = 64
_BUSY = object()


def gateway_log() -> Any:
    # At use time: a logger bound at import would predate configure_logging (its renderer).
    return get_logger("reelflow.gateway")


class MagicCheck:
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


def not_a_video(exc: InputRejectedError) -> tus.TusError:
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


class GatewayBase:
    """The state and shared steps of the handlers over one store, catalog and hand-off."""

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

    def _stage(self, row: GatewayUpload, stage: str, **fields: Any) -> None:
        """Record the upload's ``stage`` (not for a partial), best effort."""
        if row.kind == "partial":
            return
        try:
            stages.record(
                self.engine,
                row.id,
                stage,
                upload_id=row.id,
                origin="gateway",
                owner=row.owner,
                account=row.account,
                size_bytes=row.length,
                **fields,
            )
        # The bytes are stored whatever happens here; the status falls back on the row's state.
        except Exception as exc:
            gateway_log().warning(
                "stage_not_recorded", upload=row.id, stage=stage, error=type(exc).__name__
            )

    def _sample(self, upload_id: str, offset: int) -> None:
        try:
            progress.sample(self.engine, upload_id, offset, at=self.now())
        except Exception as exc:  # only the rate shown to the creator depends on it
            gateway_log().debug("progress_not_sampled", upload=upload_id, error=type(exc).__name__)

    def _hand_off(self, row: GatewayUpload) -> None:
        if row.kind == "partial":
            return  # its bytes go to the pipeline as part of the final upload that names it
        gateway_log().info("upload_received", upload=row.id, owner=row.owner, size_bytes=row.length)
        self._stage(row, stages.RECEIVED)
        with contextlib.suppress(Exception):
            progress.forget(self.engine, row.id)
        try:
            self.handoff.received(row)
        # The row stays `received`; the pipeline's sweeper hands it off again, so a failed
        # hand-off must not fail the PATCH that stored the last byte.
        except Exception as exc:
            gateway_log().error(
                "upload_handoff_failed", upload=row.id, error=f"{type(exc).__name__}: {exc}"
            )

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
        gateway_log().info(
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
            check = MagicCheck() if row.kind == "single" else None
            self._sample(upload_id, row.offset)  # where this write starts (after any pause)
            try:
                result = self.writer.append(
                    row, chunks, checksum=checksum, first_bytes_check=check, fence=fence
                )
            except InputRejectedError as exc:
                if check is not None and check.refusal is exc:
                    self.writer.terminate(row, fence=fence)
                    self._stage(row, stages.FAILED, reason=exc.reason, message=str(exc)[:300])
                    gateway_log().info(
                        "upload_refused_not_video", upload=upload_id, reason=exc.reason
                    )
                    raise not_a_video(exc) from exc
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
        else:
            self._sample(upload_id, result.row.offset)
        return Written(result.row, result.completed)
