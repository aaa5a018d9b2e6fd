"""The ``publish-media`` flow: publish one stored media to one TikTok account, exactly once.

:func:`publish_stored_media` is the orchestration, shared with the ingest flow (which calls it
inside its own run). It reads the ledger row of (media × account × post options) and, for a row
with a live session, TikTok's status, and picks exactly one way forward (:func:`next_step`):

* nothing acknowledged yet, or no session → creator check, then init (the row exists first);
* bytes partly acknowledged → continue from the first chunk TikTok has not acknowledged;
* every byte acknowledged, or TikTok already past ``PROCESSING_UPLOAD`` → poll only, never init;
* the upload URL expired mid-upload (403) → re-init and start over, recorded in the row.

A publish is identified by (media, account) (:func:`select_publish`): asking again with an
edited caption finds the existing publish and posts nothing, unless ``again`` is set, which
makes one more publish (a new generation) for those options; re-running that same request
finds that generation instead of posting a third time.

Orchestration only: ordering, parameters, artifacts. TikTok I/O lives in ``tasks/``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
)
from prefect.runtime import flow_run as current_flow_run

from reelflow.errors import ReelflowError, TransientStorageError, ValidationError
from reelflow.ingest_options import check_publish_request
from reelflow.logging import configure_logging, get_logger
from reelflow.progress import ProgressReporter
from reelflow.publish_rules import (
    DEFAULT_PRIVACY,
    DONE_STATES,
    FAILED,
    SETTLED_STATES,
    UPLOADED,
    UPLOADING,
    PublishRequest,
    Step,
    direct_post_info,
    needs_remote_status,
    next_step,
    post_options,
    request_from_options,
)
from reelflow.settings import Settings
from reelflow.tiktok.client import PublishStatus, TikTokClient
from reelflow.tiktok.errors import (
    TikTokInvalidRequest,
    UploadSessionNotFound,
    UploadUrlExpired,
)
from reelflow.tiktok.plan import DEFAULT_PREFERRED_CHUNK_BYTES
from reelflow.tiktok.tokens import TokenManager
from storage.accounts import AccountTokenStore
from storage.catalog import Media
from storage.clock import aware, utcnow
from storage.crypto import secret_box
from storage.leases import Fence, Leases
from storage.publishing import (
    Publish,
    ensure_publish,
    get_publish,
    ledger_options,
    options_hash,
    publish_generation,
    publish_row_id,
    publishes_for,
    replace_pending_options,
    stored_options,
    update_publish,
)
from storage.runtime import Runtime
from tasks.status_poll import (
    DEFAULT_POLL_DEADLINE_S,
    FIRST_POLL_INTERVAL_S,
    poll_publish_status,
    publish_failed,
    record_status,
)
from tasks.tiktok_publish import (
    PublishContext,
    Tally,
    UploadSession,
    check_creator,
    check_post_duration,
    fetch_upload_status,
    init_upload,
    send_chunks,
    session_of,
    upload_session,
)

MAX_REINITS_PER_RUN = 2  # an expired URL twice in one run means the upload cannot finish in 1 h
SCOPE_PUBLISH = "video.publish"
PROGRESS_INTERVAL_S = 2.0
MAX_GENERATION_RACES = 16  # concurrent --again runs of other options taking the same generation


def select_publish(rows: list[Publish], options: dict[str, Any], *, again: bool) -> Publish | None:
    """Pure: the existing publish a request is, or None when a new one must be made.

    ``rows`` are every publish of one media to one account. Without ``again`` the request *is*
    the existing publish, whatever its caption: the plain one (generation 0) unless it failed,
    else the latest that did not fail, else the latest (so the answer stays the same one).
    With ``again`` it is an earlier ``again`` publish (generation ≥ 1) of exactly these options
    that did not fail, so re-running the same ``--again`` never posts a third time.
    """
    ordered = sorted(rows, key=lambda r: (publish_generation(r), aware_ts(r.created_at)))
    if not again:
        alive = [r for r in ordered if r.status != FAILED]
        plain = [r for r in alive if publish_generation(r) == 0]
        best = plain or alive or ordered
        return best[-1] if best else None
    same = [
        r
        for r in ordered
        if publish_generation(r) >= 1 and stored_options(r) == options and r.status != FAILED
    ]
    return same[-1] if same else None


def aware_ts(value: Any) -> float:
    """Sort key of a stored timestamp (SQLite hands them back naive)."""
    return float(aware(value).timestamp())


def _find_or_make_publish(engine: Any, media: Media, request: PublishRequest) -> Publish:
    """The ledger row for this request: an existing publish, or a new one (generation 0, or the
    next generation for ``again``), inserted before TikTok hears of it."""
    account, again, options = request.account, request.again, post_options(request)
    for _ in range(MAX_GENERATION_RACES):
        rows = publishes_for(engine, media.media_id, account)
        found = select_publish(rows, options, again=again)
        if found is not None:
            return found
        generation = max((publish_generation(r) for r in rows), default=0) + 1 if again else 0
        stored = ledger_options(options, generation)
        row = ensure_publish(
            engine,
            Publish(
                id=publish_row_id(media.media_id, account, generation),
                media_id=media.media_id,
                account=account,
                options_hash=options_hash(stored),
                options_json=json.dumps(stored, sort_keys=True),
                mode=request.mode,
                video_size=media.size_bytes,
            ),
        )
        if not again or stored_options(row) == options:
            return row  # ours, or a concurrent run's of the same request
        # a concurrent --again with other options took this generation: take the next one
    raise TransientStorageError(
        f"publish of {media.media_id} to {account!r}: {MAX_GENERATION_RACES} concurrent "
        "re-posts took every generation tried; run it again"
    )


def check_creator_before_upload(rt: Runtime, request: PublishRequest) -> dict[str, Any]:
    """creator_info for a publish that will follow an ingest, asked before any byte is sent.

    Refuses (``PublishRefused``, terminal) a privacy level the creator does not offer; returns
    the creator's limits (``max_video_post_duration_sec``) for :func:`check_duration_for_creator`
    once the video's duration is known. Uses the same rate-limited task as the publish itself.
    """
    settings = rt.settings
    box = secret_box(settings)
    with TikTokClient(
        settings.tiktok_api_base,
        client_key=settings.tiktok_client_key,
        client_secret=settings.tiktok_client_secret.get_secret_value(),
    ) as client:
        tokens = TokenManager(
            client, AccountTokenStore(rt.catalog.engine, box), request.account, clock=utcnow
        )
        if request.mode != "direct" and SCOPE_PUBLISH not in tokens.scopes:
            return {}  # the inbox flow never asks creator_info without the publish scope
        ctx = PublishContext(rt, client, tokens, box)
        return check_creator(ctx, request, duration_s=None)


def check_duration_for_creator(creator: dict[str, Any], account: str, duration_s: float) -> None:
    """The validated duration against what :func:`check_creator_before_upload` returned."""
    check_post_duration(creator.get("max_video_post_duration_sec"), duration_s, account)


def _lease_owner() -> str:
    """This flow run (the ingest flow's crash hook frees its leases), or this thread."""
    run_id = current_flow_run.get_id()
    return str(run_id) if run_id else f"pid-{os.getpid()}-{threading.get_ident()}"


def _key(prefix: str, row_id: str) -> str:
    return f"{prefix}-{row_id}".lower().replace("_", "-")


class _Run:
    """One run's bookkeeping: timings, counters and the progress artifact."""

    def __init__(self, ctx: PublishContext, row: Publish, media: Media) -> None:
        self.ctx, self.row_id, self.media = ctx, row.id, media
        self.tally = Tally()
        self.timings: dict[str, float] = {}
        self.progress: ProgressReporter | None = None
        self.chunks_total = row.chunks_total
        self.session: UploadSession | None = None  # the session this run sends to
        size = max(1, media.size_bytes)
        self.progress_id = create_progress_artifact(
            progress=100.0 * row.bytes_acknowledged / size,
            key=_key("tiktok-upload", row.id),
            description=f"TikTok upload of {media.media_id} to {row.account}",
        )

    def on_progress(self, done: int, total: int) -> None:
        # Each update is an API call (~20 ms measured): posted from a thread of its own, at most
        # one per interval, so the chunk loop never waits for one; the last is posted on close.
        if self.progress is None:
            self.progress = ProgressReporter(self.progress_id, every_s=PROGRESS_INTERVAL_S)
        self.progress.report(done, total)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def _remote_status(ctx: PublishContext, publish_id: str) -> PublishStatus | None:
    try:
        return fetch_upload_status(ctx, publish_id)
    except TikTokInvalidRequest as exc:
        if exc.code in ("invalid_publish_id", "token_not_authorized_for_specified_publish_id"):
            return None
        raise


def _init(run: _Run, request: PublishRequest, reason: str) -> None:
    """Check the creator, then open a new upload session (recorded before this returns)."""
    ctx, media = run.ctx, run.media
    creator: dict[str, Any] = {}
    if request.mode == "direct" or SCOPE_PUBLISH in ctx.tokens.scopes:
        with run.timed("creator_info"):
            creator = check_creator(ctx, request, duration_s=media.duration_s)
    post_info = direct_post_info(request, creator, media.thumbnail_time_ms)
    with run.timed("init"):
        run.session = init_upload(ctx, run.row_id, post_info=post_info, reason=reason)
    run.chunks_total = run.session.plan.total_chunk_count


def _upload(run: _Run, step: Step, request: PublishRequest) -> None:
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
        except (UploadUrlExpired, UploadSessionNotFound) as exc:
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
            reason = "upload_url_expired" if isinstance(exc, UploadUrlExpired) else "upload_lost"
            get_logger(account=ctx.tokens.name, media_id=run.media.media_id).warning(
                "tiktok_upload_restarted",
                reason=reason,
                publish_id=row.publish_id,
                bytes_acknowledged=row.bytes_acknowledged,
            )
            _init(run, request, reason)
            start = 0


def _summary(run: _Run, row: Publish) -> dict[str, Any]:
    return {
        "publish_id": row.publish_id,
        "status": row.tiktok_status,
        "post_id": row.post_id,
        "fail_reason": row.fail_reason,
        "chunks_total": row.chunks_total or run.chunks_total,
        "chunks_sent_this_run": run.tally.chunks,
        "bytes_sent_this_run": run.tally.bytes,
        "ledger_status": row.status,
        "inits": row.inits,
        "account": row.account,
        "media_id": row.media_id,
        "mode": row.mode,
        "generation": publish_generation(row),
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
    }


def _markdown(summary: dict[str, Any], error: ReelflowError | None) -> str:
    lines = [
        f"# TikTok publish of {summary['media_id']} to {summary['account']}",
        "",
        "| field | value |",
        "|---|---|",
    ]
    shown = ("publish_id", "status", "ledger_status", "post_id", "fail_reason", "inits", "mode")
    lines += [f"| {k} | `{summary.get(k)}` |" for k in shown]
    lines.append(f"| chunks | {summary['chunks_sent_this_run']} sent / {summary['chunks_total']} |")
    if error is not None:
        code = getattr(error, "code", None) or getattr(error, "reason", None)
        lines.append(f"| error | `{code}`: {error} |")
        lines.append(f"| log_id | `{getattr(error, 'log_id', None)}` |")
    return "\n".join(lines) + "\n"


def publish_stored_media(
    rt: Runtime,
    media_id: str,
    request: PublishRequest,
    *,
    poll_deadline_s: float = DEFAULT_POLL_DEADLINE_S,
    poll_interval_s: float = FIRST_POLL_INTERVAL_S,
    preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES,
    row_id: str | None = None,
) -> dict[str, Any]:
    """Publish ``media_id`` (already in the catalog and store) as ``request`` asks; safe to re-run.

    A media is published to an account once: when it already was (whatever the caption), the
    existing publish is returned (``options_differ`` says the request's options were not the
    ones posted), and resumed or polled if unfinished. ``request.again`` posts once more with
    these options (a new generation); the same request again finds that one. ``row_id`` drives
    one given ledger row (:func:`resume_publish`) instead of choosing.

    Returns ``{publish_id, status, post_id, fail_reason, chunks_total, chunks_sent_this_run,
    ...}``; ``status`` is TikTok's. Raises typed errors: ``PublishRefused`` and TikTok policy or
    validation errors (terminal), ``TikTokPublishFailed`` (FAILED, with fail_reason and log_id),
    ``AuthorizationRevoked``. A poll deadline is not an error: the row stays ``processing``.
    """
    account = request.account
    options = post_options(request)  # the rules again: a caller may have built it by hand
    media = rt.catalog.get_media(media_id)
    if media is None:
        raise ValidationError(f"no stored media {media_id!r}", reason="media_not_found")
    box = secret_box(rt.settings)
    settings = rt.settings
    with TikTokClient(
        settings.tiktok_api_base,
        client_key=settings.tiktok_client_key,
        client_secret=settings.tiktok_client_secret.get_secret_value(),
        session=upload_session(),
    ) as client:
        tokens = TokenManager(
            client, AccountTokenStore(rt.catalog.engine, box), account, clock=utcnow
        )
        ctx = PublishContext(rt, client, tokens, box, preferred_chunk_bytes=preferred_chunk_bytes)
        if row_id is not None:
            given = get_publish(rt.catalog.engine, row_id)
            if given is None or (given.media_id, given.account) != (media_id, account):
                raise ValidationError(
                    f"no publish {row_id!r} of {media_id} to {account!r}",
                    reason="publish_not_found",
                )
            row = given
        else:
            row = _find_or_make_publish(rt.catalog.engine, media, request)
        log = get_logger(account=account, media_id=media_id, publish_row=row.id)
        log.info("tiktok_publish_started", ledger_status=row.status, publish_id=row.publish_id)
        run = _Run(ctx, row, media)
        engine = rt.catalog.engine

        def settled() -> bool | None:
            """While another run holds the publish: has it brought it to a resting state?"""
            latest = get_publish(engine, row.id)
            return True if latest is not None and latest.status in SETTLED_STATES else None

        # One live run per publish (duplicate triggers, a double click): the others wait for it,
        # then find the outcome. A killed holder on this host frees the lease at once.
        with Leases(engine).hold(
            row.id, _lease_owner(), wait_s=settings.lease_wait_s, on_wait=settled
        ) as held:
            error: ReelflowError | None = None
            latest = get_publish(engine, row.id)
            assert latest is not None
            if stored_options(latest) != options and row_id is None:
                # Nothing reached TikTok yet (refused before init): the new request's options
                # replace the old ones. Anything TikTok has keeps the options it was sent.
                replace_pending_options(engine, row.id, options, request.mode)
                latest = get_publish(engine, row.id)
                assert latest is not None
            differ = stored_options(latest) != options
            if differ:
                log.info("tiktok_publish_exists", publish_id=latest.publish_id, again=request.again)
            try:
                _drive(
                    run,
                    request_from_options(stored_options(latest), account, again=request.again),
                    poll_deadline_s,
                    poll_interval_s,
                    fence=held.fence,
                )
            except ReelflowError as exc:
                error = exc
                code = getattr(exc, "code", None) or getattr(exc, "reason", None)
                fields: dict[str, Any] = {
                    "error_code": code,
                    "log_id": getattr(exc, "log_id", None),
                }
                latest = get_publish(engine, row.id)
                if latest is not None and latest.status != FAILED:
                    fields["fail_reason"] = str(exc)[:500]
                update_publish(engine, row.id, **fields)
                raise
            finally:
                run.close_progress()
                final = get_publish(engine, row.id)
                assert final is not None
                summary = _summary(run, final)
                summary["options_differ"] = stored_options(final) != options
                create_markdown_artifact(
                    markdown=_markdown(summary, error),
                    key=_key("tiktok-publish", row.id),
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
    run: _Run,
    request: PublishRequest,
    poll_deadline_s: float,
    poll_interval_s: float,
    *,
    fence: Fence | None = None,
) -> None:
    """One publish from wherever its ledger row stands. Between steps the lease is checked: a
    run whose heartbeat lost the publish to another run stops (LeaseLostError, retryable)
    instead of sending beside it."""

    def still_ours() -> None:
        if fence is not None:
            fence.check()

    ctx, engine = run.ctx, run.ctx.rt.catalog.engine
    row = get_publish(engine, run.row_id)
    assert row is not None
    remote = None
    if needs_remote_status(row):
        assert row.publish_id is not None
        remote = _remote_status(ctx, row.publish_id)  # the remote truth, before anything else
        if remote is not None:
            record_status(ctx, run.row_id, remote, size=row.video_size)
            row = get_publish(engine, run.row_id)
            assert row is not None
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
    elif row.status == UPLOADING:  # TikTok holds every byte: record it, then only poll
        update_publish(engine, run.row_id, status=UPLOADED, bytes_acknowledged=row.video_size)
    row = get_publish(engine, run.row_id)
    assert row is not None and row.publish_id is not None
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
    """
    configure_logging()
    request = check_publish_request(account, mode, privacy, caption, again=again)
    rt = Runtime.from_settings(Settings())
    return publish_stored_media(
        rt,
        media_id,
        request,
        poll_deadline_s=poll_deadline_s,
        preferred_chunk_bytes=chunk_size_bytes or DEFAULT_PREFERRED_CHUNK_BYTES,
    )


def resume_publish(rt: Runtime, row_id: str) -> dict[str, Any]:
    """Drive one ledger row on with the options it was made with (reconciliation)."""
    row = get_publish(rt.catalog.engine, row_id)
    if row is None:
        raise ValidationError(f"no publish {row_id!r}", reason="publish_not_found")
    request = request_from_options(stored_options(row), row.account)
    return publish_stored_media(rt, row.media_id, request, row_id=row.id)
