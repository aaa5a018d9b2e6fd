"""The ``ingest-video`` run of one upload the gateway received: take → assemble → verify → (scan)
→ thumbnail → store → publish, from the bytes where they already are.

``ingest_video(source="tus:<id>", upload="<id>")`` branches here (the trigger of the
``reelflow.upload.received`` event, the gateway's own embedded hand-off, or a person re-running
an upload). Exactly once per upload:

* **take**: under the lease of the upload's source (``storage.leases``, fingerprint
  ``tus:<id>``) the row goes ``received`` → ``processing`` (this run's id) by compare-and-swap;
  ``processing`` by a run whose lease lapsed (it died) is taken over the same way. A second run
  waits while a live run holds the lease, then returns what that run stored. A row already
  ``stored`` returns its media's summary (and the publish, which is idempotent, is asked again).
* **assemble** (``tasks/assemble_received.py``): ListParts vs the ledger, CompleteMultipartUpload,
  one read for the SHA-256 — the bytes are never uploaded a second time.
* **verify** (``tasks/verify_received.py``), **scan**, **thumbnail**, **store**: the ingest tasks.
* the row ends ``stored`` (media_id, sha256) — or ``failed`` with a typed reason: a terminal error
  aborts the multipart upload and deletes everything staged (nothing is left); a retryable one
  keeps it all and puts the row back to ``received`` for the hand-off sweeper; an unexpected
  error keeps it all too, left ``processing`` with the error for a person to look at.
* **cancel** (a DELETE after the last byte, :mod:`deployments.gateway.cancel`): the run checks
  the row between steps and stops with :class:`UploadCancelledError` once it is ``cancelled``
  (purging what is staged again; the gateway purged it too). Its commit point is one CAS that
  records ``sha256`` on its ``processing`` row just before the thumbnail and the store
  (:func:`_commit_to_store`): a cancellation that came first makes it fail, one that comes
  later is refused (409). So a cancel racing the run leaves either stored media or nothing.

Stages (flows/stage_log.py, ``run_key`` = the upload id): ``validating`` before assemble +
verify, ``scanning``, ``storing`` at the commit point, ``stored``; ``failed`` with the typed
reason for a terminal or unexpected error (a retryable one writes none: the upload goes back
to the hand-off and another run takes it).

Options (account, caption, privacy, mode, publish_at) are the upload's validated metadata, checked
again with the CLI's rules; never event fields. The run is renamed after the metadata's filename
and tagged ``creator:<owner>`` (+ ``account:``, ``mode:``).

The summary, its artifact and the publish are ingest's own (flows/ingest_report.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run as current_flow_run

from flows.ingest_report import (
    Ingested,
    artifact_key,
    check_publish_request,
    publish_or_queue,
    summarize,
    summary_markdown,
)
from flows.publish import check_duration_for_creator
from flows.run_context import run_owner
from flows.stage_log import StageLog
from reelflow.errors import (
    ConfigurationError,
    InputRejectedError,
    IntegrityCheckError,
    LeaseLostError,
    ReelflowError,
    TransientStorageError,
)
from reelflow.event_policy import GATEWAY_SOURCE_PREFIX, check_event_run, printable
from reelflow.ingest_options import IngestOptions, check_ingest_options, post_options_from_text
from reelflow.logging import get_logger, remember_settings_secrets
from reelflow.planning import CONTAINER_EXT, S3_MIN_PART_BYTES, upload_buffer_bytes, video_key
from reelflow.sources import SourceRef
from storage import gateway_uploads as uploads
from storage import stages
from storage.catalog import Media
from storage.gateway_sweep import upload_lease_name
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence, Leases
from storage.runtime import Runtime
from storage.tus_writer import TusWriter
from tasks.assemble_received import assemble_received
from tasks.s3_store import store_media
from tasks.scan import SCAN_OFF, ScanReport, scan_video
from tasks.thumbnail import make_thumbnail
from tasks.verify_received import verify_received

CAS_ATTEMPTS = 5  # a row changes a handful of times in its life; more lost races is a bug
MAX_RUN_NAME_CHARS = 120
# States a run may take an upload in, and those that end it (the run is refused).
TAKEABLE = (uploads.RECEIVED, uploads.PROCESSING)


class UploadCancelledError(InputRejectedError):
    """The upload was cancelled by its creator (DELETE) while its run was working on it."""

    def __init__(self, upload: str) -> None:
        super().__init__(f"upload {upload} was cancelled by its creator", reason="upload_cancelled")


def stage_log(rt: Runtime, row: GatewayUpload) -> StageLog:
    """The upload's stage rows (``run_key`` = its id, as the gateway's)."""
    return StageLog(
        rt.catalog.engine,
        row.id,
        upload_id=row.id,
        origin="gateway",
        owner=row.owner,
        account=row.account,
        size_bytes=row.length,
    )


def source_for(upload: str) -> str:
    """The ``source`` parameter of an upload's run (what the UI shows; never read as a path)."""
    return f"{GATEWAY_SOURCE_PREFIX}{upload}"


@dataclass(frozen=True)
class UploadRequest:
    """An upload's metadata as the run uses it."""

    filename: str
    options: IngestOptions
    publish_at: datetime | None


def upload_request(row: GatewayUpload, rt: Runtime) -> UploadRequest:
    """The row's validated metadata, checked again with the CLI's rules. A ``publish_at`` that
    passed while the bytes were still arriving means "publish now" (checked when the upload was
    created; refusing it now would throw the whole upload away)."""
    try:
        meta = json.loads(row.metadata_json or "{}")
    except ValueError as exc:
        raise InputRejectedError(
            f"upload {row.id}: unreadable metadata", reason="bad_upload_metadata"
        ) from exc
    publish_at: datetime | None = None
    if meta.get("publish_at"):
        try:
            publish_at = datetime.fromisoformat(str(meta["publish_at"]))
        except ValueError as exc:
            raise InputRejectedError(
                f"upload {row.id}: publish_at {meta['publish_at']!r} is not ISO 8601",
                reason="bad_upload_metadata",
            ) from exc
        if publish_at.tzinfo is None:
            raise InputRejectedError(
                f"upload {row.id}: publish_at needs a timezone", reason="naive_publish_at"
            )
    # Nothing is uploaded by this run: the part size and concurrency rules (and the settings'
    # defaults they check) do not apply, only the metadata's own.
    options = check_ingest_options(
        chunk_size_bytes=S3_MIN_PART_BYTES,
        concurrency=1,
        account=meta.get("account") or row.account,
        caption=meta.get("caption"),
        privacy=meta.get("privacy_level"),
        mode=meta.get("mode"),
        publish_at=None,
        default_chunk_size_bytes=S3_MIN_PART_BYTES,
        default_concurrency=1,
        memory_budget_bytes=upload_buffer_bytes(S3_MIN_PART_BYTES, 1),
        now=datetime.now(UTC),
        post=post_options_from_text(meta),
    )
    if publish_at is not None and options.publish is None:
        raise InputRejectedError("publish_at needs an account to publish to", reason="no_account")
    filename = printable(str(meta.get("filename") or row.id))[:MAX_RUN_NAME_CHARS]
    return UploadRequest(filename, options, publish_at)


def _name_and_tag_run(request: UploadRequest, owner: str) -> None:
    """``ingest-<filename>``, tagged with the creator: a deployment run cannot be named per event."""
    run_id = current_flow_run.get_id()
    if not run_id:
        return
    publish = request.options.publish
    wanted = {f"creator:{printable(owner)[:100]}", f"mode:{request.options.mode}"}
    if publish is not None:
        wanted.add(f"account:{publish.account}")
    with get_client(sync_client=True) as client:
        current = set(client.read_flow_run(UUID(run_id)).tags or [])
        client.update_flow_run(
            UUID(run_id), name=f"ingest-{request.filename}", tags=sorted(current | wanted)
        )


# --- the row -----------------------------------------------------------------------------------


def _row(rt: Runtime, upload: str) -> GatewayUpload:
    row = uploads.get(rt.catalog.engine, upload)
    if row is None:
        raise InputRejectedError(
            f"no gateway upload {printable(upload)!r}", reason="unknown_upload"
        )
    return row


def _refusal(row: GatewayUpload) -> InputRejectedError:
    reason = f"upload_{row.state}"
    detail = f": {row.error}" if row.error and row.state == uploads.FAILED else ""
    return InputRejectedError(
        f"upload {row.id} is {row.state}{detail}; nothing to ingest", reason=reason
    )


def _cas(rt: Runtime, upload: str, fence: Fence | None, **fields: Any) -> GatewayUpload:
    """Set ``fields`` on the row, re-reading it after a lost race (another gateway's write)."""
    for _ in range(CAS_ATTEMPTS):
        row = _row(rt, upload)
        done = uploads.cas_update(rt.catalog.engine, upload, row.version, fence=fence, **fields)
        if done is not None:
            return done
    raise TransientStorageError(f"upload {upload}: {CAS_ATTEMPTS} lost races updating its row")


def _take(rt: Runtime, upload: str, owner: str, fence: Fence) -> GatewayUpload | None:
    """received (or processing by a dead run: we hold its lease now) → processing by this run.
    None when the upload is stored already."""
    for _ in range(CAS_ATTEMPTS):
        row = _row(rt, upload)
        if row.state == uploads.STORED:
            return None
        if row.state not in TAKEABLE:
            raise _refusal(row)
        if row.state == uploads.PROCESSING and row.flow_run_id == owner:
            return row  # this run's own retry
        taken = uploads.cas_update(
            rt.catalog.engine,
            upload,
            row.version,
            fence=fence,
            state=uploads.PROCESSING,
            flow_run_id=owner,
            error=None,
        )
        if taken is not None:
            get_logger(upload=upload).info("upload_taken", previous=row.flow_run_id)
            return taken
    raise TransientStorageError(f"upload {upload}: {CAS_ATTEMPTS} lost races taking it")


# --- failure -----------------------------------------------------------------------------------


def _writer(rt: Runtime, row: GatewayUpload) -> TusWriter:
    return TusWriter(rt.store, rt.catalog, part_size=row.part_size)


def _give_up(rt: Runtime, upload: str, fence: Fence, exc: Exception) -> None:
    """Every failure after the take decides here: keep the staged upload, or delete it all."""
    log = get_logger(upload=upload)
    current = _row(rt, upload)
    if current.state == uploads.CANCELLED:
        # The creator's DELETE: the gateway purged; purge again what this run may have made
        # since (an assembled object), then stop. Its `cancelled` row is the gateway's.
        try:
            _writer(rt, current).purge(current)
        except ReelflowError as purge_exc:  # the gateway purged already; its sweep may again
            log.warning("upload_cancelled_purge_failed", error=str(purge_exc)[:300])
        log.info("upload_cancelled_in_run", error=str(exc)[:300])
        return
    if isinstance(exc, LeaseLostError) or fence.lost:
        log.warning("upload_left_to_lease_holder", error=str(exc))
        return
    if isinstance(exc, ReelflowError) and exc.retryable:
        # Back to the hand-off: the sweeper starts a new run once the cause has had time to pass.
        _cas(rt, upload, fence, state=uploads.RECEIVED, flow_run_id=None, error=str(exc)[:500])
        log.warning("upload_kept_for_retry", error=str(exc))
        return
    if not isinstance(exc, ReelflowError):
        # A bug, not the upload: keep every byte, and leave it to a person (`reelflow ingest
        # --upload ID` takes it again); the sweeper does not retry rows carrying an error.
        _cas(rt, upload, fence, error=f"{type(exc).__name__}: {exc}"[:500])
        stage_log(rt, current).failed(exc, reason="internal_error")
        log.error(
            "upload_kept_after_unexpected_error", error=str(exc), error_type=type(exc).__name__
        )
        return
    reason = getattr(exc, "reason", None) or type(exc).__name__
    rt.catalog.verify_fence()  # delete only what this run still holds
    row = _row(rt, upload)
    # The multipart upload (or the assembled object), every tail, the ledger's parts: nothing stays.
    _writer(rt, row).purge(row, fence=fence)
    _cas(rt, upload, fence, state=uploads.FAILED, error=f"{reason}: {exc}"[:500])
    stage_log(rt, row).failed(exc)
    log.error("upload_failed", reason=reason, error=str(exc))


# --- the steps ---------------------------------------------------------------------------------


def _check_not_cancelled(rt: Runtime, upload: str) -> None:
    if _row(rt, upload).state == uploads.CANCELLED:
        raise UploadCancelledError(upload)


def _commit_to_store(rt: Runtime, upload: str, fence: Fence, sha256_hex: str) -> GatewayUpload:
    """The run's commit point (see the module docstring): record ``sha256`` on the row while
    it is still ``processing`` by this run, in one CAS; UploadCancelledError when it is not."""
    for _ in range(CAS_ATTEMPTS):
        row = _row(rt, upload)
        if row.state == uploads.CANCELLED:
            raise UploadCancelledError(upload)
        if row.state != uploads.PROCESSING or row.flow_run_id != fence.owner:
            raise LeaseLostError(f"upload {upload} is {row.state} by {row.flow_run_id}")
        if row.sha256 == sha256_hex:
            return row  # committed by this run's earlier attempt
        done = uploads.cas_update(
            rt.catalog.engine, upload, row.version, fence=fence, sha256=sha256_hex
        )
        if done is not None:
            return done
    raise TransientStorageError(f"upload {upload}: {CAS_ATTEMPTS} lost races committing it")


def _readable_key(rt: Runtime, staging_key: str, sha256_hex: str) -> str:
    """Where the assembled bytes are: staged, or already moved to their content key by a run
    killed before it marked the row stored."""
    if rt.store.exists(staging_key):
        return staging_key
    for ext in CONTAINER_EXT.values():
        if rt.store.exists(key := video_key(sha256_hex, ext)):
            return key
    raise IntegrityCheckError(f"the assembled object {staging_key} is gone")


def _stored_media(rt: Runtime, row: GatewayUpload) -> Media | None:
    media = rt.catalog.get_media(row.media_id) if row.media_id else None
    if media is None and row.session_id:
        session = rt.catalog.get_session(row.session_id)
        if session is not None and session.status == "completed" and session.media_id:
            media = rt.catalog.get_media(session.media_id)
    return media if media is not None and rt.store.exists(media.video_key) else None


def _process(
    rt: Runtime, row: GatewayUpload, request: UploadRequest | None, timings: dict[str, float]
) -> Ingested:
    """Steps 2-6 for a taken row; returns the stored media (the row is ``stored`` after it).
    ``request`` None: its metadata was refused; refused again here, so the row fails."""
    fence = rt.catalog.fence
    assert fence is not None  # always run under the upload's lease
    log = stage_log(rt, row)
    request = request or upload_request(row, rt)
    media = _stored_media(rt, row)  # a run killed after the store step, before the row
    scan: ScanReport | None = None
    parts = 0
    if media is None:
        publish = request.options.publish
        creator = check_publish_request(rt, publish) if publish is not None else None
        _check_not_cancelled(rt, row.id)
        log(stages.VALIDATING)
        t0 = time.perf_counter()
        assembled = assemble_received(row.id, rt)
        timings["assemble"] = time.perf_counter() - t0
        sha, parts = assembled.sha256_hex, assembled.parts
        key = _readable_key(rt, assembled.staging_key, sha)
        t0 = time.perf_counter()
        meta = verify_received(key, sha, rt)
        timings["verify"] = time.perf_counter() - t0
        if creator is not None and publish is not None:
            check_duration_for_creator(creator, publish.account, meta.duration_s)
        t0 = time.perf_counter()
        if rt.settings.clamd_url:
            _check_not_cancelled(rt, row.id)
            log(stages.SCANNING)
            scan = scan_video(key, sha, meta, rt)
        else:
            scan = SCAN_OFF
        timings["scan"] = time.perf_counter() - t0
        # From here on the upload is the creator's media: a DELETE answers 409.
        _commit_to_store(rt, row.id, fence, sha)
        log(stages.STORING)
        t0 = time.perf_counter()
        # Stored where it was received: completing the upload was the last write of its bytes
        # (no server-side copy; only a run of older code left it at its content key).
        final_key = key
        thumb = make_thumbnail(key, final_key, sha, meta, rt)
        timings["thumbnail"] = time.perf_counter() - t0
        ref = SourceRef(
            uri=source_for(row.id),
            kind="tus",
            size_bytes=assembled.size_bytes,
            fingerprint=source_for(row.id),
            name=request.filename,
            public_uri=source_for(row.id),
        )
        t0 = time.perf_counter()
        assert row.session_id is not None  # assemble_received refused a row without one
        media = store_media(row.session_id, key, final_key, sha, ref, meta, thumb, rt)
        timings["store"] = time.perf_counter() - t0
    _writer(rt, row).discard_tails(row)  # any the gateway could not delete
    _cas(
        rt,
        row.id,
        fence,
        state=uploads.STORED,
        media_id=media.media_id,
        sha256=media.sha256,
        error=None,
    )
    log(stages.STORED, media_id=media.media_id, size_bytes=media.size_bytes)
    get_logger(upload=row.id, media_id=media.media_id).info("upload_stored")
    return Ingested(media, parts, scan=scan, timings=timings)


def _found_stored(rt: Runtime, row: GatewayUpload) -> Ingested:
    media = rt.catalog.get_media(row.media_id) if row.media_id else None
    if media is None:
        raise IntegrityCheckError(f"upload {row.id} is stored, but its media {row.media_id} is not")
    get_logger(upload=row.id, media_id=media.media_id).info("ingest_deduplicated")
    return Ingested(media, _parts(rt, row))


def _parts(rt: Runtime, row: GatewayUpload) -> int:
    session = rt.catalog.get_session(row.session_id) if row.session_id else None
    return session.parts_total if session is not None else 0


def _store(rt: Runtime, upload: str, request: UploadRequest | None) -> Ingested:
    """Take the row under its lease and store it, or return what another run stored."""
    settings = rt.settings
    leases = Leases(rt.catalog.engine, ttl_s=settings.lease_ttl_s)
    owner = run_owner()
    timings: dict[str, float] = {}

    def stored_already() -> Ingested | None:
        row = _row(rt, upload)
        if row.state == uploads.STORED:
            return _found_stored(rt, row)
        if row.state not in TAKEABLE:
            raise _refusal(row)
        return None

    if (found := stored_already()) is not None:
        return found
    name = upload_lease_name(upload, rt.store.url)
    with leases.hold(name, owner, wait_s=settings.lease_wait_s, on_wait=stored_already) as held:
        if held.fence is None:
            return cast(Ingested, held.found)
        fence = held.fence
        fenced = dataclasses.replace(rt, catalog=rt.catalog.fenced(fence))
        row = _take(fenced, upload, owner, fence)
        if row is None:  # stored while we took the lease
            return _found_stored(rt, _row(rt, upload))
        if row.session_id:
            leases.attach_session(fence, row.session_id)
        try:
            done = _process(fenced, row, request, timings)
        except Exception as exc:
            # Kills and cancellations (BaseException) skip this: the row stays processing, the
            # lease lapses with the process, and the sweeper hands the upload off again.
            _give_up(fenced, upload, fence, exc)
            if fence.lost and not isinstance(exc, LeaseLostError):
                raise fence.error() from exc
            raise
    return done


def _still_ahead(publish_at: datetime | None) -> datetime | None:
    return publish_at if publish_at is not None and publish_at > datetime.now(UTC) else None


def ingest_received(
    upload: str,
    rt: Runtime,
    *,
    source: str | None = None,
    origin: str | None = None,
    again: bool = False,
) -> dict[str, Any]:
    """Store (and publish, as its metadata asks) gateway upload ``upload``; ingest's summary
    (``chunks_uploaded_this_run`` / ``bytes_uploaded_this_run`` are 0: nothing is re-sent)."""
    settings = rt.settings
    source = source or source_for(upload)
    check_event_run(
        origin=origin,
        source=source,
        account=None,
        event_buckets=settings.event_buckets,
        event_accounts=settings.event_accounts,
        upload=upload,
    )
    if source != source_for(upload):
        raise InputRejectedError(
            f"an upload's run has source {source_for(upload)}", reason="bad_upload_source"
        )
    remember_settings_secrets(settings)
    row = _row(rt, upload)
    if row.store_url != rt.store.url:
        # The gateway's settings and the worker's disagree: kept, for a worker that agrees.
        raise ConfigurationError(
            f"upload {upload} is staged in another store than this worker's REELFLOW_STORE_URL"
        )
    if row.state not in (*TAKEABLE, uploads.STORED):
        raise _refusal(row)
    try:
        request: UploadRequest | None = upload_request(row, rt)
    except InputRejectedError:
        if row.state == uploads.STORED:
            raise
        # Taken and failed under the lease (_process refuses it again): else the row would
        # stay received and the sweeper would hand it off for ever.
        request = None
    if request is not None:
        _name_and_tag_run(request, row.owner)
    done = _store(rt, upload, request)
    summary = summarize(done, rt)
    if request is None:  # stored by another run meanwhile: its metadata must pass now
        request = upload_request(_row(rt, upload), rt)
    summary["upload"] = upload
    summary["publish"] = None
    if request.options.publish is not None:
        summary["publish"] = publish_or_queue(
            rt,
            done.media,
            dataclasses.replace(request.options.publish, again=again),
            _still_ahead(request.publish_at),
            log=stage_log(rt, _row(rt, upload)),
        )
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key=artifact_key("ingest", summary["media_id"]),
        description=f"ingest of upload {request.filename}",
    )
    return summary
