"""The ``ingest-video`` flow: validate → chunk-upload → assemble → thumbnail → store.

Stages (flows/stage_log.py; ``run_key`` = the upload session's id, or ``run:<run>`` when the
run stops before it has one): ``receiving`` when the chunk upload starts, ``received`` once
assembled, ``validating`` (the assembled bytes checked), ``scanning``, ``storing``, ``stored``;
``failed`` with the typed reason when the run fails (``retryable`` in the detail when a later
run could still succeed); one ``stored`` (``deduplicated``) for a source stored already.

Orchestration only: ordering, parameters, artifacts. The I/O lives in tasks/ and storage/: the
abort-or-keep decision when a run gives up is ``tasks.chunk_upload.give_up_upload``, the
"stored already?" lookup ``tasks.s3_store.find_stored``, the run's tags and lease owner
``flows.run_context``, the chunk pipeline ``flows.chunk_pipeline``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
)
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.chunk_pipeline import SendResult, send_source
from flows.gateway_ingest import ingest_received
from flows.ingest_report import (
    Ingested,
    artifact_key,
    check_publish_request,
    duration_check,
    publish_or_queue,
    summarize,
    summary_markdown,
)
from flows.run_context import run_owner, tag_run
from flows.stage_log import StageLog, origin_of
from reelflow.credentials import reveal
from reelflow.errors import InputRejectedError, LeaseLostError
from reelflow.event_policy import check_event_run
from reelflow.ingest_options import check_ingest_request, post_options_from
from reelflow.logging import configure_logging, get_logger, remember_settings_secrets
from reelflow.planning import final_video_key
from reelflow.progress import ProgressReporter
from reelflow.publish_rules import Mode, Privacy
from reelflow.rules import VideoMeta
from reelflow.settings import Settings
from reelflow.sources import SourceRef
from storage import stages
from storage.gateway_uploads import session_id_for
from storage.leases import Fence, Leases, lease_name
from storage.runtime import Runtime
from tasks.assemble import assemble_upload
from tasks.chunk_upload import give_up_upload, open_upload_session
from tasks.s3_store import StoredMedia, find_stored, store_media
from tasks.scan import SCAN_OFF, scan_video
from tasks.thumbnail import make_thumbnail
from tasks.validate import validate_video, verify_assembled

MAX_TASK_THREADS = 64
PROGRESS_EVERY_S = 1.0


class RunStages:
    """The run's stage log; its key becomes the upload session's id once there is one."""

    def __init__(self, log: StageLog) -> None:
        self.log = log


def _stage_and_store(
    rt: Runtime,
    *,
    ref: SourceRef,
    meta: VideoMeta,
    chunk_size: int,
    concurrency: int,
    timings: dict[str, float],
    leases: Leases,
    fence: Fence,
    report: RunStages,
) -> Ingested:
    """Steps 2-5 under the source lease; terminal errors abort, the rest stay resumable.

    Every catalog write of these steps is fenced by the lease's token (a run that lost the
    lease is refused and stops with LeaseLostError, leaving the upload to the new holder)."""
    rt = dataclasses.replace(rt, catalog=rt.catalog.fenced(fence))
    state = open_upload_session(ref, meta, chunk_size, rt, concurrency=concurrency)
    leases.attach_session(fence, state.session_id)
    report.log = report.log.with_(run_key=state.session_id, size_bytes=ref.size_bytes)
    log = report.log
    sent: SendResult | None = None
    try:
        if state.status in ("assembled", "completed") and state.sha256:
            sha256_hex, staged = state.sha256, state.staging_key
        else:
            progress_id = create_progress_artifact(
                progress=0.0,
                key=artifact_key("upload", state.session_id),
                description=f"chunk upload of {ref.name} ({state.plan.count} parts)",
            )

            log(stages.RECEIVING)
            # Posted from a thread of its own (an API round trip each, ~35 ms measured), at
            # most once a second; the final 100 % goes out while the upload is assembled.
            with ProgressReporter(progress_id, every_s=PROGRESS_EVERY_S) as progress:
                t0 = time.perf_counter()
                sent = send_source(
                    ref, state, rt, concurrency=concurrency, on_progress=progress.report
                )
                timings["upload"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                staged = assemble_upload(
                    state, sent.sha256_hex, sent.part_digests_b64, rt, sent.crc64nvme_b64
                )
                timings["assemble"] = time.perf_counter() - t0
            sha256_hex = sent.sha256_hex
            log(stages.RECEIVED)

        # The thumbnail's and the store's: where it was uploaded (no rename), or for a session
        # staged under staging/ by an older version, its content key.
        final_key = final_video_key(staged, sha256_hex, meta.container)
        log(stages.VALIDATING)
        t0 = time.perf_counter()
        # The bytes stored are the bytes validated: magic + ffprobe of the assembled object.
        verify_assembled(staged, sha256_hex, meta, rt)
        timings["verify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # Off (no task run) when REELFLOW_CLAMD_URL is unset; a hit is terminal: aborted below.
        if rt.settings.clamd_url:
            log(stages.SCANNING)
            scan = scan_video(staged, sha256_hex, meta, rt)
        else:
            scan = SCAN_OFF
        timings["scan"] = time.perf_counter() - t0
        log(stages.STORING)
        t0 = time.perf_counter()
        thumb = make_thumbnail(staged, final_key, sha256_hex, meta, rt)
        timings["thumbnail"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        media = store_media(state.session_id, staged, final_key, sha256_hex, ref, meta, thumb, rt)
        timings["store"] = time.perf_counter() - t0
    except Exception as exc:
        # Kills and cancellations (BaseException) skip this: the upload stays resumable and
        # the cleanup deployment removes it if nobody comes back.
        give_up_upload(state, exc, rt)
        if fence.lost and not isinstance(exc, LeaseLostError):
            raise fence.error() from exc  # whatever broke, this run had lost its lease first
        raise
    log(stages.STORED, media_id=media.media_id, size_bytes=media.size_bytes)
    get_logger(media_id=media.media_id, upload_id=state.upload_id).info(
        "ingest_completed", chunks_uploaded=sent.chunks_uploaded if sent else 0
    )
    return Ingested(media, state.plan.count, sent, scan, timings)


def record_interruption(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed hook: note it on the session, free the lease, keep the upload.

    The runner calls this after it stopped the run's process, so the multipart upload and the
    ledger are left as they were: a later run resumes them, or the cleanup flow removes them.
    """
    rt = Runtime.from_settings(Settings())
    leases = Leases(rt.catalog.engine)
    owner = str(flow_run.id)
    # The runner hands on_cancellation a made-up "Cancelling" state; record what happened.
    what = "cancelled" if state.name.lower().startswith("cancel") else state.name.lower()
    for lease in leases.held_by(owner):
        if lease.session_id:
            rt.catalog.update_session(lease.session_id, error=f"run {what}: {owner}")
            if what == "cancelled":  # a person stopped it (UI/API); a crash is resumed instead
                StageLog(rt.catalog.engine, run_key_of_session(lease.session_id))(
                    stages.CANCELLED, reason="run_cancelled", flow_run_id=owner
                )
        leases.release(lease.name, owner, note=what)
        get_logger(session_id=lease.session_id).warning("ingest_interrupted", state=what)


def run_key_of_session(session_id: str) -> str:
    """The stage log's key of a ledger session: a gateway upload's id for its ``gw_`` session."""
    prefix = session_id_for("")
    return session_id[len(prefix) :] if session_id.startswith(prefix) else session_id


def _basename(source: str) -> str:
    return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "video"


def _run_name() -> str:
    """Flow runs are named after the file, so the UI's run list reads like an upload log."""
    return f"ingest-{_basename(str(current_flow_run.parameters.get('source', '')))}"


@flow(
    name="ingest-video",
    flow_run_name=_run_name,
    on_cancellation=[record_interruption],
    on_crashed=[record_interruption],
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_THREADS),  # type: ignore[arg-type]
    log_prints=True,
)
def ingest_video(
    source: str,
    chunk_size_bytes: int | None = None,
    concurrency: int | None = None,
    account: str | None = None,
    caption: str | None = None,
    privacy_level: Privacy | None = None,
    mode: Mode | None = None,
    publish_at: datetime | None = None,
    again: bool = False,
    disable_comment: bool | None = None,
    disable_duet: bool | None = None,
    disable_stitch: bool | None = None,
    brand_content_toggle: bool | None = None,
    brand_organic_toggle: bool | None = None,
    options_error: str | None = None,
    origin: str | None = None,
    source_secret: str | None = None,
    upload: str | None = None,
) -> dict[str, Any]:
    """Validate, upload in resumable chunks, assemble, thumbnail and store one video; then
    publish it to TikTok, now or at ``publish_at``.

    Args:
        source: The video: a local path on the worker, s3://bucket/key, or an http(s):// URL.
        chunk_size_bytes: Part size in bytes (default REELFLOW_CHUNK_SIZE_BYTES, 8 MiB); grown
            when needed to stay within S3's 10 000 parts.
        concurrency: UploadPart requests on the wire at once (default REELFLOW_UPLOAD_CONCURRENCY).
        account: The TikTok account to publish to (added with `reelflow accounts add`). Leave
            empty to only store the video.
        caption: The post's caption (Direct Post; at most 2200 UTF-16 units).
        privacy_level: Who can see the post; must be one of the creator's options. Default
            SELF_ONLY, the only level an unaudited TikTok app may use.
        mode: "direct" posts now, "inbox" sends it to the creator's TikTok inbox, "none" only
            stores it. Default: "direct" when an account is given, else "none".
        publish_at: Publish later (TikTok has no scheduling; the publish-due deployment posts
            it when due). Must include a timezone and not be in the past.
        again: Post it even though this video was already published to this account (without
            it the existing publish is returned, whatever its caption); the same request run
            again does not post a third time.
        disable_comment: Turn comments off for this post (Direct Post). Empty: as the
            creator set it in TikTok; false asks for them on, which a creator who turned them
            off cannot.
        disable_duet: Turn duets off for this post; empty/false as for comments.
        disable_stitch: Turn stitches off for this post; empty/false as for comments.
        brand_content_toggle: Commercial content disclosure: a paid partnership ("Branded
            content"); such a post cannot be SELF_ONLY.
        brand_organic_toggle: Commercial content disclosure: promotes the creator's own
            business ("Your brand").
        options_error: Set by the S3 event bridge when a sidecar/metadata was invalid: the run
            fails with that validation error before anything is uploaded.
        origin: Who started the run: empty for a person (CLI, UI, API); "s3-event" when the
            bucket-event trigger did (a fixed value in prefect.yaml, never from the event). Then
            only an s3:// source in REELFLOW_EVENT_BUCKETS and an account REELFLOW_EVENT_ACCOUNTS
            allows there are accepted.
        source_secret: Where the real URL of a credentialed ``source`` is: a Prefect Secret
            block's name (deployment runs), or the CLI's in-process reference. ``source`` is
            then the URL's public form (userinfo removed, query values REDACTED; README
            "Secrets"). A source with credentials but no source_secret is refused.
        upload: A tus upload the gateway received (its id; ``source`` is then ``tus:<id>``):
            its bytes are assembled where the gateway staged them, never sent again, and the
            options are the upload's own metadata (flows/gateway_ingest.py). "gateway" is then
            the only origin an event may give.
    """
    configure_logging()
    settings = Settings()
    if upload is not None:
        rt = Runtime.from_settings(settings)
        return ingest_received(upload, rt, source=source, origin=origin, again=again)
    if origin:
        # Anyone who can post an event to the Prefect API can start this run: trust no field.
        check_event_run(
            origin=origin,
            source=source,
            account=account,
            event_buckets=settings.event_buckets,
            event_accounts=settings.event_accounts,
            source_secret=source_secret,
        )
    if options_error:
        raise InputRejectedError(options_error, reason="bad_publish_options")
    remember_settings_secrets(settings)
    # The real URL (credentials and all) exists only in this process, never as a parameter.
    real_source = reveal(source, source_secret)
    # The same rules as the CLI's (reelflow.ingest_options), for callers from Python or the UI.
    post = post_options_from(
        {
            "disable_comment": disable_comment,
            "disable_duet": disable_duet,
            "disable_stitch": disable_stitch,
            "brand_content_toggle": brand_content_toggle,
            "brand_organic_toggle": brand_organic_toggle,
        }
    )
    opts = check_ingest_request(
        settings,
        chunk_size_bytes,
        concurrency,
        account,
        caption,
        privacy_level,
        mode,
        publish_at,
        post=post,
    )
    publish_mode = opts.mode
    tag_run(account, publish_mode)
    rt = Runtime.from_settings(settings)
    report = RunStages(
        StageLog(
            rt.catalog.engine,
            f"run:{run_owner()}",
            origin=origin_of(origin),
            account=account if opts.publish is not None else None,
        )
    )
    try:
        on_validated: Callable[[VideoMeta], None] | None = None
        if opts.publish is not None and account:
            creator = check_publish_request(rt, opts.publish)
            on_validated = duration_check(creator, account)
        done = _ingest(
            real_source,
            rt,
            opts.chunk_size_bytes,
            opts.concurrency,
            on_validated=on_validated,
            report=report,
        )
    except LeaseLostError:
        raise  # the run that holds the source now reports it
    except Exception as exc:
        report.log.failed(exc, retryable=bool(getattr(exc, "retryable", False)))
        raise
    log = report.log.with_(media_id=done.media.media_id)
    if done.scan is None:  # stored already (by an earlier or a concurrent run)
        log(stages.STORED, deduplicated=True, size_bytes=None)
    summary = summarize(done, rt)
    summary["publish"] = None
    if opts.publish is not None:
        summary["publish"] = publish_or_queue(
            rt, done.media, dataclasses.replace(opts.publish, again=again), publish_at, log=log
        )
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key=artifact_key("ingest", summary["media_id"]),
        description=f"ingest of {_basename(source)}",
    )
    return summary


def _ingest(
    source: str,
    rt: Runtime,
    chunk_size: int,
    concurrency: int,
    *,
    on_validated: Callable[[VideoMeta], None] | None = None,
    report: RunStages | None = None,
) -> Ingested:
    """Steps 1-5 (deduplicated when the source is stored here already).

    ``on_validated`` may refuse the video once its metadata is known, before anything is sent.
    """
    settings = rt.settings
    report = report or RunStages(StageLog(rt.catalog.engine, f"run:{run_owner()}"))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    checked = validate_video(source, rt)
    timings["validate"] = time.perf_counter() - t0
    ref, meta = checked.source, checked.meta
    if on_validated is not None:
        on_validated(meta)

    def stored_already() -> Ingested | None:
        found = find_stored(ref, rt)
        return _found(found, timings) if found is not None else None

    if (found := stored_already()) is not None:
        return found
    leases = Leases(rt.catalog.engine, ttl_s=settings.lease_ttl_s)
    name = lease_name(ref.fingerprint, rt.store.url)
    with leases.hold(
        name, run_owner(), wait_s=settings.lease_wait_s, on_wait=stored_already
    ) as held:
        if held.fence is None:  # stored by the run that held the lease while we waited
            return cast(Ingested, held.found)
        if (found := stored_already()) is not None:  # finished while we took the lease
            return found
        return _stage_and_store(
            rt,
            ref=ref,
            meta=meta,
            chunk_size=chunk_size,
            concurrency=concurrency,
            timings=timings,
            leases=leases,
            fence=held.fence,
            report=report,
        )


def _found(stored: StoredMedia, timings: dict[str, float]) -> Ingested:
    return Ingested(stored.media, stored.parts_total, timings=timings)
