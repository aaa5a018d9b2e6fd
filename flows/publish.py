"""The ``publish-media`` flow: publish one stored media to one TikTok account, exactly once.

:func:`publish_stored_media` is the orchestration, shared with the ingest flow (which calls it
inside its own run). It reads the ledger row of (media × account × post options) and, for a row
with a live session, TikTok's status, and picks exactly one way forward (:func:`next_step`):

* nothing acknowledged yet, or no session → creator check, then init (the row exists first);
* bytes partly acknowledged → continue from the first chunk TikTok has not acknowledged;
* every byte acknowledged, or TikTok already past ``PROCESSING_UPLOAD`` → poll only, never init;
* the upload URL expired mid-upload (403) → re-init and start over, recorded in the row.

A publish is identified by (media, account) (:func:`reelflow.publish_rules.select_publish`,
applied by :func:`storage.publishing.find_or_make_publish`): asking again with an edited caption finds the existing publish and posts nothing, unless ``again`` is set, which
makes one more publish (a new generation) for those options; re-running that same request
finds that generation instead of posting a third time.

Orchestration only: ordering, parameters, artifacts. The rules are :mod:`reelflow.publish_rules`,
TikTok I/O lives in ``tasks/``, every ledger write is a function of :mod:`storage.publishing`.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
)

from flows.publish_run import PublishRun, artifact_key, run_summary, summary_markdown
from flows.run_context import run_owner
from reelflow.errors import InputRejectedError, ReelflowError
from reelflow.ingest_options import check_publish_request, post_options_from
from reelflow.logging import configure_logging, get_logger
from reelflow.publish_rules import (
    DEFAULT_PRIVACY,
    DONE_STATES,
    FAILED,
    SETTLED_STATES,
    UPLOADING,
    PublishRequest,
    Step,
    asks_creator_info,
    direct_post_info,
    needs_remote_status,
    next_step,
    post_options,
)
from reelflow.rules import check_postable
from reelflow.settings import Settings
from reelflow.tiktok.client import PublishStatus
from reelflow.tiktok.errors import (
    TikTokInvalidRequestError,
    UploadSessionNotFoundError,
    UploadUrlExpiredError,
)
from reelflow.tiktok.plan import DEFAULT_PREFERRED_CHUNK_BYTES
from storage.catalog import DELETING, Media
from storage.leases import Fence, Leases
from storage.publishing import (
    Publish,
    find_or_make_publish,
    get_publish,
    record_all_acknowledged,
    record_run_error,
    replace_pending_options,
)
from storage.runtime import Runtime
from tasks.publish_context import PublishContext, open_publish_context
from tasks.status_poll import (
    DEFAULT_POLL_DEADLINE_S,
    FIRST_POLL_INTERVAL_S,
    poll_publish_status,
    publish_failed,
    record_status,
)
from tasks.tiktok_chunks import send_chunks
from tasks.tiktok_publish import (
    check_creator,
    check_post_duration,
    fetch_upload_status,
    init_upload,
    session_of,
)

MAX_REINITS_PER_RUN = 2  # an expired URL twice in one run means the upload cannot finish in 1 h


def check_creator_before_upload(rt: Runtime, request: PublishRequest) -> dict[str, Any]:
    """creator_info for a publish that will follow an ingest, asked before any byte is sent.

    Refuses (``PublishRefusedError``, terminal) a privacy level the creator does not offer; returns
    the creator's limits (``max_video_post_duration_sec``) for :func:`check_duration_for_creator`
    once the video's duration is known. Uses the same rate-limited task as the publish itself.
    """
    with open_publish_context(rt, request.account) as ctx:
        if not asks_creator_info(request, ctx.tokens.scopes):
            return {}
        return check_creator(ctx, request, duration_s=None)


def check_duration_for_creator(creator: dict[str, Any], account: str, duration_s: float) -> None:
    """The validated duration against what :func:`check_creator_before_upload` returned."""
    check_post_duration(creator.get("max_video_post_duration_sec"), duration_s, account)


def _remote_status(ctx: PublishContext, publish_id: str) -> PublishStatus | None:
    try:
        return fetch_upload_status(ctx, publish_id)
    except TikTokInvalidRequestError as exc:
        if exc.code in ("invalid_publish_id", "token_not_authorized_for_specified_publish_id"):
            return None
        raise


def _init(run: PublishRun, request: PublishRequest, reason: str) -> None:
    """Check the creator, then open a new upload session (recorded before this returns)."""
    ctx, media = run.ctx, run.media
    creator: dict[str, Any] = {}
    if asks_creator_info(request, ctx.tokens.scopes):
        with run.timed("creator_info"):
            creator = check_creator(ctx, request, duration_s=media.duration_s)
    post_info = direct_post_info(request, creator, media.thumbnail_time_ms)
    with run.timed("init"):
        run.session = init_upload(
            ctx,
            run.row_id,
            request,
            video_size=run.video_size,
            post_info=post_info,
            reason=reason,
        )
    run.chunks_total = run.session.plan.total_chunk_count


def _upload(run: PublishRun, step: Step, request: PublishRequest) -> None:
    """Send the chunks; on an expired or unknown upload URL re-init and start over (bounded)."""
    ctx, engine = run.ctx, run.ctx.rt.catalog.engine
    start = step.from_byte
    for attempt in range(MAX_REINITS_PER_RUN + 1):
        assert run.session is not None  # inited this run, or the row's (see _drive)
        try:
            with run.timed("upload"):
                send_chunks(
                    ctx,
                    run.row_id,
                    run.session,
                    video_key=run.media.video_key,
                    content_type=run.media.content_type,
                    start_byte=start,
                    tally=run.tally,
                    on_progress=run.on_progress,
                )
            return
        except (UploadUrlExpiredError, UploadSessionNotFoundError) as exc:
            row = get_publish(engine, run.row_id)
            assert row is not None and row.publish_id is not None
            remote = _remote_status(ctx, row.publish_id)
            if remote is not None:
                record_status(ctx, run.row_id, remote, size=row.video_size)
            after = next_step(row, remote)
            if after.action in ("poll", "failed"):
                return  # TikTok has everything, or gave up: the caller polls / reports it
            if attempt == MAX_REINITS_PER_RUN:
                raise
            reason = (
                "upload_url_expired" if isinstance(exc, UploadUrlExpiredError) else "upload_lost"
            )
            get_logger(account=ctx.tokens.name, media_id=run.media.media_id).warning(
                "tiktok_upload_restarted",
                reason=reason,
                publish_id=row.publish_id,
                bytes_acknowledged=row.bytes_acknowledged,
            )
            _init(run, request, reason)
            start = 0


def publish_stored_media(
    rt: Runtime,
    media_id: str,
    request: PublishRequest,
    *,
    poll_deadline_s: float = DEFAULT_POLL_DEADLINE_S,
    poll_interval_s: float = FIRST_POLL_INTERVAL_S,
    preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES,
) -> dict[str, Any]:
    """Publish ``media_id`` (already in the catalog and store) as ``request`` asks; safe to re-run.

    A media is published to an account once: when it already was (whatever the caption), the
    existing publish is returned (``options_differ`` says the request's options were not the
    ones posted), and resumed or polled if unfinished. ``request.again`` posts once more with
    these options (a new generation); the same request again finds that one.

    Returns ``{publish_id, status, post_id, fail_reason, chunks_total, chunks_sent_this_run,
    ...}``; ``status`` is TikTok's. Raises typed errors: ``PublishRefusedError`` and TikTok
    policy or validation errors (terminal), ``TikTokPublishFailedError`` (FAILED, with fail_reason
    and log_id), ``AuthorizationRevokedError``. A poll deadline is not an error: the row stays
    ``processing``.
    """
    post_options(request)  # the rules again: a caller may have built the request by hand
    media = rt.catalog.get_media(media_id)
    # A media being deleted (storage.catalog.begin_media_delete) is no longer published.
    if media is None or media.status == DELETING:
        raise InputRejectedError(f"no stored media {media_id!r}", reason="media_not_found")
    check_postable(media.content_type, media_id=media_id)  # no ledger row, no call to TikTok
    row = find_or_make_publish(rt.catalog.engine, media_id, media.size_bytes, request)
    return _publish_row(
        rt,
        media,
        row,
        request,
        poll_deadline_s=poll_deadline_s,
        poll_interval_s=poll_interval_s,
        preferred_chunk_bytes=preferred_chunk_bytes,
    )


def resume_publish(rt: Runtime, row_id: str) -> dict[str, Any]:
    """Drive one ledger row on, by id, with the options it was made with (reconciliation)."""
    row = get_publish(rt.catalog.engine, row_id)
    if row is None:
        raise InputRejectedError(f"no publish {row_id!r}", reason="publish_not_found")
    media = rt.catalog.get_media(row.media_id)
    if media is None:
        raise InputRejectedError(f"no stored media {row.media_id!r}", reason="media_not_found")
    return _publish_row(rt, media, row, None)


def _publish_row(
    rt: Runtime,
    media: Media,
    row: Publish,
    asked: PublishRequest | None,
    *,
    poll_deadline_s: float = DEFAULT_POLL_DEADLINE_S,
    poll_interval_s: float = FIRST_POLL_INTERVAL_S,
    preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES,
) -> dict[str, Any]:
    """Drive ``row`` under its lease; ``asked`` is the request that found it (None: the row's
    own options are the request, as when reconciliation resumes it)."""
    engine, account, media_id = rt.catalog.engine, row.account, media.media_id
    again = asked.again if asked is not None else False
    with open_publish_context(rt, account, preferred_chunk_bytes=preferred_chunk_bytes) as ctx:
        log = get_logger(account=account, media_id=media_id, publish_row=row.id)
        log.info("tiktok_publish_started", ledger_status=row.status, publish_id=row.publish_id)
        run = PublishRun(ctx, row, media)

        def settled() -> bool | None:
            """While another run holds the publish: has it brought it to a resting state?"""
            latest = get_publish(engine, row.id)
            return True if latest is not None and latest.status in SETTLED_STATES else None

        # One live run per publish (duplicate triggers, a double click): the others wait for it,
        # then find the outcome. A killed holder on this host frees the lease at once.
        with Leases(engine).hold(
            row.id, run_owner(), wait_s=rt.settings.lease_wait_s, on_wait=settled
        ) as held:
            error: ReelflowError | None = None
            latest = get_publish(engine, row.id)  # as the run we may have waited for left it
            assert latest is not None
            wanted = post_options(asked) if asked is not None else latest.post_options
            if latest.post_options != wanted and asked is not None:
                # Nothing reached TikTok yet (refused before init): the new request's options
                # replace the old ones. Anything TikTok has keeps the options it was sent.
                latest = replace_pending_options(engine, latest, asked)
            if latest.post_options != wanted:
                log.info("tiktok_publish_exists", publish_id=latest.publish_id, again=again)
            try:
                _drive(
                    run,
                    latest,
                    latest.request(again=again),
                    poll_deadline_s,
                    poll_interval_s,
                    fence=held.fence,
                )
            except ReelflowError as exc:
                error = exc
                record_run_error(
                    engine,
                    row.id,
                    code=getattr(exc, "code", None) or getattr(exc, "reason", None),
                    log_id=getattr(exc, "log_id", None),
                    message=str(exc),
                )
                raise
            finally:
                run.close_progress()
                final = get_publish(engine, row.id)
                assert final is not None
                run.report(final, error)
                summary = run_summary(run, final)
                summary["options_differ"] = final.post_options != wanted
                create_markdown_artifact(
                    markdown=summary_markdown(summary, error),
                    key=artifact_key("tiktok-publish", row.id),
                    description=f"TikTok publish of {media_id} to {account}",
                )
        log.info(
            "tiktok_publish_finished",
            status=summary["status"],
            ledger_status=summary["ledger_status"],
            post_id=summary["post_id"],
            chunks_sent=summary["chunks_sent_this_run"],
        )
        return summary


def _drive(
    run: PublishRun,
    row: Publish,
    request: PublishRequest,
    poll_deadline_s: float,
    poll_interval_s: float,
    *,
    fence: Fence | None = None,
) -> None:
    """One publish from wherever its ledger row (``row``, as read under the lease) stands.
    Between steps the lease is checked: a run whose heartbeat lost the publish to another run
    stops (LeaseLostError, retryable) instead of sending beside it."""

    def still_ours() -> None:
        if fence is not None:
            fence.check()

    ctx, engine = run.ctx, run.ctx.rt.catalog.engine
    remote = None
    if needs_remote_status(row):
        assert row.publish_id is not None
        remote = _remote_status(ctx, row.publish_id)  # the remote truth, before anything else
        if remote is not None:
            row = record_status(ctx, run.row_id, remote, size=row.video_size)
    step = next_step(row, remote)
    if step.action == "done":
        return
    if step.action == "failed":
        raise publish_failed(row.fail_reason or "", row.publish_id or "", row.log_id)
    if step.action == "init":
        still_ours()
        _init(run, request, step.reason)
    if step.action == "upload":
        run.session = session_of(row)  # the session the row records, with its chunk plan
    if step.action in ("init", "upload"):
        still_ours()
        _upload(run, step, request)
        latest = get_publish(engine, run.row_id)  # the tasks wrote it
        assert latest is not None
        row = latest
    elif row.status == UPLOADING:  # TikTok holds every byte: record it, then only poll
        row = record_all_acknowledged(engine, run.row_id, row.video_size)
    assert row.publish_id is not None
    publish_id = row.publish_id
    if row.status in DONE_STATES:
        return
    if row.status == FAILED:
        raise publish_failed(row.fail_reason or "", publish_id, row.log_id)
    still_ours()
    with run.timed("poll"):
        outcome = poll_publish_status(
            ctx,
            run.row_id,
            publish_id,
            video_size=row.video_size,
            deadline_at=time.time() + poll_deadline_s,
            first_interval_s=poll_interval_s,
        )
    if outcome.status == "FAILED":
        raise publish_failed(outcome.fail_reason or "", publish_id, outcome.log_id)


@flow(name="publish-media", log_prints=True)
def publish_media(
    media_id: str,
    account: str,
    caption: str | None = None,
    privacy: str = DEFAULT_PRIVACY,
    mode: str = "direct",
    poll_deadline_s: float = DEFAULT_POLL_DEADLINE_S,
    chunk_size_bytes: int | None = None,
    again: bool = False,
    disable_comment: bool | None = None,
    disable_duet: bool | None = None,
    disable_stitch: bool | None = None,
    brand_content_toggle: bool = False,
    brand_organic_toggle: bool = False,
) -> dict[str, Any]:
    """Publish a stored media to a TikTok account (Direct Post or inbox), exactly once.

    Args:
        media_id: A media id from the catalog (`reelflow status`).
        account: A TikTok account name added with `reelflow accounts add`.
        caption: The post's caption (Direct Post; at most 2200 UTF-16 units).
        privacy: Direct Post privacy level; must be among the creator's options.
        mode: "direct" (post now) or "inbox" (the creator finishes it in the TikTok app).
        poll_deadline_s: Stop polling after this long; the publish stays resumable and the
            reconcile-publishes deployment finishes it.
        chunk_size_bytes: Preferred TikTok chunk size for a new upload session (clamped to the
            safe 5 MiB-64 MB range; default 10 MB). A resumed session keeps its own.
        again: Post it once more even though this media was already published to this
            account (otherwise the existing publish is returned, whatever its caption).
            Running the same request again does not post a third time.
        disable_comment: Turn comments off for this post (Direct Post). Empty: as the
            creator set it in TikTok; false asks for them on, which a creator who turned them
            off cannot.
        disable_duet: Turn duets off for this post; empty/false as for comments.
        disable_stitch: Turn stitches off for this post; empty/false as for comments.
        brand_content_toggle: Commercial content disclosure: a paid partnership ("Branded
            content"); such a post cannot be SELF_ONLY.
        brand_organic_toggle: Commercial content disclosure: promotes the creator's own
            business ("Your brand").
    """
    configure_logging()
    post = post_options_from(
        {
            "disable_comment": disable_comment,
            "disable_duet": disable_duet,
            "disable_stitch": disable_stitch,
            "brand_content_toggle": brand_content_toggle,
            "brand_organic_toggle": brand_organic_toggle,
        }
    )
    request = check_publish_request(account, mode, privacy, caption, again=again, post=post)
    rt = Runtime.from_settings(Settings())
    return publish_stored_media(
        rt,
        media_id,
        request,
        poll_deadline_s=poll_deadline_s,
        preferred_chunk_bytes=chunk_size_bytes or DEFAULT_PREFERRED_CHUNK_BYTES,
    )
