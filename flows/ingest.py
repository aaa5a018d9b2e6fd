"""The ``ingest-video`` flow: validate → chunk-upload → assemble → thumbnail → store.

Orchestration only: ordering, parameters, artifacts, and the abort-or-keep decision when the run
gives up. All I/O lives in tasks/ and storage/.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner

from reelflow.errors import ReelflowError, ValidationError
from reelflow.logging import configure_logging, get_logger
from reelflow.progress import ProgressReporter
from reelflow.rules import VideoMeta
from reelflow.settings import Settings
from reelflow.sources import SourceRef
from storage.catalog import Media
from storage.leases import Leases, lease_name
from storage.runtime import Runtime
from storage.schedule import queue_publish
from tasks.assemble import assemble_upload
from tasks.chunk_upload import SendResult, SessionState, open_upload_session, send_source
from tasks.s3_store import store_media
from tasks.thumbnail import make_thumbnail
from tasks.validate import validate_video

MAX_TASK_THREADS = 64
Mode = Literal["direct", "inbox", "none"]
Privacy = Literal["PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"]
PROGRESS_EVERY_S = 1.0


def _artifact_key(prefix: str, ident: str) -> str:
    return f"{prefix}-{ident}".lower().replace("_", "-")


def summarize(
    media: Media,
    rt: Runtime,
    *,
    chunks_total: int,
    sent: SendResult | None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "media_id": media.media_id,
        "sha256": media.sha256,
        "size_bytes": media.size_bytes,
        "content_type": media.content_type,
        "container": media.container,
        "duration_s": media.duration_s,
        "width": media.width,
        "height": media.height,
        "fps": media.fps,
        "video_codec": media.video_codec,
        "bitrate": media.bitrate,
        "has_audio": media.has_audio,
        "audio_codec": media.audio_codec,
        "video_uri": rt.store.uri(media.video_key),
        "thumbnail_uri": rt.store.uri(media.thumbnail_key),
        "metadata_uri": rt.store.uri(media.metadata_key),
        "video_url": _link(rt, media.video_key),
        "thumbnail_url": _link(rt, media.thumbnail_key),
        "thumbnail_time_ms": media.thumbnail_time_ms,
        "chunks_total": chunks_total,
        "chunks_uploaded_this_run": sent.chunks_uploaded if sent else 0,
        "bytes_uploaded_this_run": sent.bytes_uploaded if sent else 0,
        "timings_s": {k: round(v, 3) for k, v in (timings or {}).items()},
    }


def _link(rt: Runtime, key: str) -> str:
    """A link a person can open: REELFLOW_PUBLIC_BASE_URL (CDN / public bucket) when set, else
    a presigned URL (S3) or the file path (local store)."""
    base = rt.settings.public_base_url
    if base:
        return f"{base.rstrip('/')}/{key}"
    return rt.store.read_url(key)


SUMMARY_FIELDS = (
    "media_id",
    "sha256",
    "size_bytes",
    "content_type",
    "duration_s",
    "width",
    "height",
    "fps",
    "video_codec",
    "bitrate",
    "has_audio",
    "video_uri",
    "thumbnail_uri",
    "metadata_uri",
    "chunks_total",
    "chunks_uploaded_this_run",
    "bytes_uploaded_this_run",
)


def _summary_markdown(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | `{summary.get(k)}` |" for k in SUMMARY_FIELDS)
    parts = [f"# Ingested {summary['media_id']}\n"]
    thumb = summary.get("thumbnail_url", "")
    if thumb.startswith(("http://", "https://")):
        parts.append(f"[![thumbnail]({thumb})]({summary.get('video_url')})\n")
    parts.append(f"| field | value |\n|---|---|\n{rows}\n")
    publish = summary.get("publish")
    if publish:
        outcome = (
            f"post id `{publish.get('post_id')}`"
            if publish.get("post_id")
            else f"fail reason `{publish.get('fail_reason')}`"
            if publish.get("fail_reason")
            else "no public post id (TikTok gives one only for public, moderated posts)"
        )
        parts.append(
            f"\n## TikTok\n\npublish id `{publish.get('publish_id')}`, status "
            f"`{publish.get('status')}`, {outcome}, chunks sent this run "
            f"`{publish.get('chunks_sent_this_run')}` of `{publish.get('chunks_total')}`\n"
        )
    return "\n".join(parts)


def _give_up(rt: Runtime, state: SessionState, exc: ReelflowError) -> None:
    """Terminal failure: abort the staged upload so nothing is orphaned; keep it if retryable."""
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    if exc.retryable:
        rt.catalog.update_session(state.session_id, error=str(exc)[:500])
        log.warning("upload_kept_for_resume", error=str(exc))
        return
    rt.store.abort_upload(state.staging_key, state.upload_id)
    if rt.store.exists(state.staging_key):
        rt.store.delete(state.staging_key)
    rt.catalog.forget_parts(state.upload_id)
    rt.catalog.update_session(state.session_id, status="aborted", error=str(exc)[:500])
    log.error("upload_aborted", error=str(exc))


def _stage_and_store(
    ref: SourceRef,
    meta: VideoMeta,
    rt: Runtime,
    chunk_size: int,
    parallel: int,
    timings: dict[str, float],
    leases: Leases,
    name: str,
    owner: str,
) -> tuple[Media, SessionState, SendResult | None]:
    """Steps 2-5 under the source lease; terminal errors abort, the rest stay resumable."""
    state = open_upload_session(ref, meta, chunk_size, rt)
    leases.renew(name, owner, session_id=state.session_id)
    sent: SendResult | None = None
    try:
        if state.status in ("assembled", "completed") and state.sha256:
            sha256_hex, staged = state.sha256, state.staging_key
        else:
            progress_id = create_progress_artifact(
                progress=0.0,
                key=_artifact_key("upload", state.session_id),
                description=f"chunk upload of {ref.name} ({state.plan.count} parts)",
            )

            # Posted from a thread of its own (an API round trip each, ~35 ms measured), at
            # most once a second; the final 100 % goes out while the upload is assembled.
            with ProgressReporter(progress_id, every_s=PROGRESS_EVERY_S) as progress:
                t0 = time.perf_counter()
                sent = send_source(
                    ref, state, rt, concurrency=parallel, on_progress=progress.report
                )
                timings["upload"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                staged = assemble_upload(state, sent.sha256_hex, sent.part_digests_b64, rt)
                timings["assemble"] = time.perf_counter() - t0
            sha256_hex = sent.sha256_hex

        t0 = time.perf_counter()
        thumb = make_thumbnail(staged, sha256_hex, meta, rt)
        timings["thumbnail"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        media = store_media(state.session_id, staged, sha256_hex, ref, meta, thumb, rt)
        timings["store"] = time.perf_counter() - t0
    except ReelflowError as exc:
        # Unexpected errors, kills and cancellations skip this: the upload stays resumable and
        # the cleanup deployment removes it if nobody comes back.
        _give_up(rt, state, exc)
        raise
    return media, state, sent


def _run_owner() -> str:
    """The lease owner: this flow run's id (the cancellation hook finds its leases by it)."""
    from prefect.runtime import flow_run

    return str(flow_run.get_id() or f"pid-{os.getpid()}")


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
        leases.release(lease.name, owner, note=what)
        get_logger(session_id=lease.session_id).warning("ingest_interrupted", state=what)


def _basename(source: str) -> str:
    return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "video"


def _run_name() -> str:
    """Flow runs are named after the file, so the UI's run list reads like an upload log."""
    from prefect.runtime import flow_run

    return f"ingest-{_basename(str(flow_run.parameters.get('source', '')))}"


def _tag_run(account: str | None, mode: str) -> None:
    """Tag this run with its account and mode (a deployment run cannot be tagged per event)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    wanted = {f"mode:{mode}"} | ({f"account:{account}"} if account else set())
    with get_client(sync_client=True) as client:
        current = set(client.read_flow_run(UUID(run_id)).tags or [])
        if not wanted <= current:
            client.update_flow_run(UUID(run_id), tags=sorted(current | wanted))


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
    options_error: str | None = None,
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
            it when due). Must include a timezone.
        options_error: Set by the S3 event bridge when a sidecar/metadata was invalid: the run
            fails with that validation error before anything is uploaded.
    """
    configure_logging()
    if options_error:
        raise ValidationError(options_error, reason="bad_publish_options")
    publish_mode = mode or ("direct" if account else "none")
    if publish_mode != "none" and not account:
        raise ValidationError(f"mode {publish_mode!r} needs an account", reason="no_account")
    if publish_at is not None and publish_at.tzinfo is None:
        raise ValidationError(
            "publish_at needs a timezone (e.g. 2026-12-01T18:00:00+00:00)",
            reason="naive_publish_at",
        )
    _tag_run(account, publish_mode)
    settings = Settings()
    rt = Runtime.from_settings(settings)
    if publish_mode != "none" and account:
        _check_publish_request(rt, account, caption, privacy_level, publish_mode)
    summary = _ingest(
        source,
        rt,
        chunk_size_bytes or settings.chunk_size_bytes,
        concurrency or settings.upload_concurrency,
    )
    summary["publish"] = None
    if publish_mode != "none" and account:
        summary["publish"] = _publish_or_queue(
            rt, summary, account, caption, privacy_level, publish_mode, publish_at
        )
    create_markdown_artifact(
        markdown=_summary_markdown(summary),
        key=_artifact_key("ingest", summary["media_id"]),
        description=f"ingest of {_basename(source)}",
    )
    return summary


def _check_publish_request(
    rt: Runtime, account: str, caption: str | None, privacy: str | None, mode: str
) -> None:
    """Refuse bad publish options before a single byte is uploaded (not after the upload)."""
    from flows.publish import DEFAULT_PRIVACY, post_options
    from storage.publishing import get_account

    post_options(mode, privacy or DEFAULT_PRIVACY, caption)
    if get_account(rt.catalog.engine, account) is None:
        raise ValidationError(
            f"no TikTok account {account!r} (add it with `reelflow accounts add`)",
            reason="unknown_account",
        )


def _publish_or_queue(
    rt: Runtime,
    summary: dict[str, Any],
    account: str,
    caption: str | None,
    privacy: str | None,
    mode: str,
    publish_at: datetime | None,
) -> dict[str, Any]:
    from flows.publish import DEFAULT_PRIVACY, publish_stored_media

    if publish_at is not None and publish_at > datetime.now(UTC):
        row = queue_publish(
            rt.catalog.engine,
            media_id=summary["media_id"],
            account=account,
            mode=mode,
            privacy=privacy,
            caption=caption,
            due_at=publish_at,
        )
        get_logger(media_id=summary["media_id"]).info("publish_scheduled", due_at=str(publish_at))
        return {
            "publish_id": None,
            "status": "SCHEDULED",
            "post_id": None,
            "publish_at": row.due_at.isoformat(),
            "chunks_total": None,
            "chunks_sent_this_run": 0,
        }
    return publish_stored_media(
        rt, summary["media_id"], account, caption, privacy or DEFAULT_PRIVACY, mode
    )


def _ingest(source: str, rt: Runtime, chunk_size: int, parallel: int) -> dict[str, Any]:
    """Steps 1-5; returns the storage summary (deduplicated when the source is known)."""
    settings = rt.settings
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    checked = validate_video(source, rt)
    timings["validate"] = time.perf_counter() - t0
    ref, meta = checked.source, checked.meta

    leases = Leases(rt.catalog.engine)
    name = lease_name(ref.fingerprint, rt.store.url)
    owner = _run_owner()

    def stored_already() -> dict[str, Any] | None:
        """Same source already ingested into this store (maybe by a concurrent run)."""
        done = rt.catalog.completed_session_for(ref.fingerprint, rt.store.url)
        media = rt.catalog.get_media(done.media_id) if done and done.media_id else None
        if done and media and rt.store.exists(media.video_key):
            get_logger(media_id=media.media_id).info("ingest_deduplicated", source=ref.name)
            return summarize(media, rt, chunks_total=done.parts_total, sent=None, timings=timings)
        return None

    if (found := stored_already()) is not None:
        return found
    with leases.hold(name, owner, wait_s=settings.lease_wait_s, on_wait=stored_already) as waited:
        if waited is not None:
            return cast(dict[str, Any], waited)
        if (found := stored_already()) is not None:  # finished while we took the lease
            return found
        media, state, sent = _stage_and_store(
            ref, meta, rt, chunk_size, parallel, timings, leases, name, owner
        )
    summary = summarize(media, rt, chunks_total=state.plan.count, sent=sent, timings=timings)
    get_logger(media_id=media.media_id, upload_id=state.upload_id).info(
        "ingest_completed", chunks_uploaded=summary["chunks_uploaded_this_run"]
    )
    return summary
