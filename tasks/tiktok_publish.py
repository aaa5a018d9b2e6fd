"""Step 6, tiktok-publish: creator check, init, and one task per chunk PUT to TikTok.

* ``check_creator``: creator_info; refuses terminally a privacy level the creator does not offer
  or a video longer than ``max_video_post_duration_sec`` (:class:`PublishRefused`).
* ``init_upload``: one FILE_UPLOAD init (Direct Post or inbox); the ``publish_id`` and the
  (encrypted) upload URL are in the ledger before the task returns.
* ``fetch_upload_status``: TikTok's view of a publish (``uploaded_bytes`` is the remote truth a
  resumed run continues from, as ListParts is for S3).
* ``put_chunk``: one PUT, streamed from the stored object (a file seek for the local store, one
  ranged GET for S3); a 416 re-syncs to the byte TikTok expects instead of failing.
* ``send_chunks``: the chunk loop, bounded. TikTok requires order, so PUTs never overlap, but the
  next chunk's task starts while the current PUT is on the wire and each ledger write overlaps
  the next PUT (:mod:`reelflow.tiktok.cursor`).
* ``take_rate_slot``: TikTok's per-user limits (init 6/min, creator_info 20/min, status 30/min)
  as Prefect global concurrency limits used as rate limits, so every concurrent run on any
  machine sharing the Prefect API respects them.

Must not: decide *whether* to init (the flow's ``publish_stored_media`` reads the ledger and
TikTok's status for that), hold a whole video in memory, or put a token or an upload URL into a
task parameter, a log event or an exception message.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import requests
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import rate_limit
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff
from requests.adapters import HTTPAdapter

from reelflow.errors import IntegrityError, PublishError, retry_if_retryable
from reelflow.logging import get_logger, install_log_redaction
from reelflow.publish_rules import UPLOADED, UPLOADING, PublishRequest, check_caption
from reelflow.tiktok.client import PublishStatus, TikTokClient, build_session
from reelflow.tiktok.cursor import UploadCursor
from reelflow.tiktok.errors import TikTokApiError, TikTokRateLimited, UploadOutOfSync
from reelflow.tiktok.plan import (
    DEFAULT_PREFERRED_CHUNK_BYTES,
    PlannedChunk,
    TikTokUploadPlan,
    first_unacknowledged_chunk,
    plan_tiktok_upload,
    plan_tiktok_upload_with_chunk_size,
)
from reelflow.tiktok.tokens import TokenManager
from storage.base import ObjectStore
from storage.crypto import SecretBox
from storage.publishing import (
    Publish,
    get_publish,
    record_init,
    record_progress,
)
from storage.runtime import Runtime

# Per user token, per minute (DP, UP: init 6; CI: creator_info 20; ST: status 30).
RATE_LIMITS_PER_MIN = {"init": 6, "creator_info": 20, "status": 30}
RATE_WAIT_TIMEOUT_S = 600.0  # a slot not free after this long fails the attempt (retryable)
MAX_RETRY_AFTER_S = 120.0  # honour Retry-After up to this; beyond it Prefect's backoff decides
STREAM_BLOCK_BYTES = 1024 * 1024


class PublishRefused(PublishError):
    """reelflow refuses to start a publish TikTok would refuse (privacy, duration, caption).

    Terminal: the same request gets the same answer until the creator's settings change.
    """

    exit_code = 2

    def __init__(self, message: str, *, reason: str, **context: Any) -> None:
        super().__init__(message, reason=reason, **context)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect pickles exceptions into task states
        return (_rebuild_refused, (self.message, self.reason, self.context))


def _rebuild_refused(message: str, reason: str, context: dict[str, Any]) -> PublishRefused:
    context = {k: v for k, v in context.items() if k != "reason"}
    return PublishRefused(message, reason=reason, **context)


def upload_session() -> requests.Session:
    """The client's pooled session, sending streamed chunk bodies in 1 MiB blocks.

    urllib3 reads a file body 16 KiB at a time, one Python read and one ``sendall`` each: for a
    10 MB chunk that is ~600 round trips through Python, measurable against a plain ``bytes``
    PUT. Larger blocks keep the stream (memory stays at one block) at the speed of a bytes PUT.
    """
    session = build_session()
    for adapter in session.adapters.values():
        if isinstance(adapter, HTTPAdapter):
            adapter.poolmanager.connection_pool_kw["blocksize"] = STREAM_BLOCK_BYTES
    return session


# urllib3 logs every request line at DEBUG, upload URL (and its upload_token) included.
_HTTP_DEBUG_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


def guard_http_debug_logs() -> None:
    """Attach the one redacting filter to urllib3's loggers once per process (idempotent)."""
    install_log_redaction(_HTTP_DEBUG_LOGGERS)


class PublishContext:
    """What the tasks of one publish run share; a plain class so Prefect never walks into it."""

    def __init__(
        self,
        rt: Runtime,
        client: TikTokClient,
        tokens: TokenManager,
        box: SecretBox,
        *,
        preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES,
    ) -> None:
        self.rt, self.client, self.tokens, self.box = rt, client, tokens, box
        self.preferred_chunk_bytes = preferred_chunk_bytes
        self.limits_ready: set[str] = set()
        self._upload_urls: dict[str, str] = {}
        guard_http_debug_logs()

    def upload_url(self, row_id: str, publish_id: str) -> str:
        """The session's upload URL, decrypted once per run (never a task parameter)."""
        url = self._upload_urls.get(publish_id)
        if url is None:
            row = get_publish(self.rt.catalog.engine, row_id)
            if row is None or row.publish_id != publish_id or not row.upload_url_enc:
                raise IntegrityError(f"publish {row_id} is no longer session {publish_id}")
            url = self._upload_urls[publish_id] = self.box.open(row.upload_url_enc)
        return url

    def __repr__(self) -> str:  # appears in Prefect's task-run logs: no secrets
        return f"PublishContext(account={self.tokens.name!r})"


# ----- rate limits and Retry-After ------------------------------------------------------------


def rate_limit_name(kind: str, rate_key: str) -> str:
    return f"tiktok-{kind}-{hashlib.sha256(rate_key.encode()).hexdigest()[:16]}"


def rate_limit_shape(per_window: int, window_s: float) -> tuple[int, float]:
    """(slots, decay per second) such that no ``window_s`` window sees more than ``per_window``.

    A leaky bucket of ``L`` slots decaying at ``d``/s admits at most ``L + window_s * d`` calls
    in any window; TikTok counts a sliding one-minute window. Half the budget as burst and half
    as steady rate (``L = n/2``, ``d = (n - L) / window``) keeps the sum at ``n``: one publish's
    few calls go out at once, and concurrent runs wait for a slot instead of meeting a 429.
    """
    slots = max(1, per_window // 2)
    return slots, (per_window - slots) / window_s


def _ensure_limit(ctx: PublishContext, name: str, per_window: int) -> None:
    if name in ctx.limits_ready:
        return
    slots, decay = rate_limit_shape(per_window, ctx.rt.settings.tiktok_rate_window_s)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # a concurrent run made it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=name, limit=slots, slot_decay_per_second=decay, active=True
                    )
                )
    ctx.limits_ready.add(name)


def take_rate_slot(ctx: PublishContext, kind: str) -> None:
    """Block until TikTok's ``kind`` limit for this account has room (shared by all runs)."""
    name = rate_limit_name(kind, ctx.tokens.rate_key)
    _ensure_limit(ctx, name, RATE_LIMITS_PER_MIN[kind])
    try:
        rate_limit(name, timeout_seconds=RATE_WAIT_TIMEOUT_S, strict=True)
    except TimeoutError:
        raise TikTokRateLimited(
            f"no {kind} slot for account {ctx.tokens.name!r} within {RATE_WAIT_TIMEOUT_S:.0f}s",
            code="local_rate_limit_wait",
            http_status=None,
        ) from None


@contextmanager
def honouring_retry_after() -> Iterator[None]:
    """Wait out a retryable error's Retry-After before Prefect's own retry delay starts."""
    try:
        yield
    except TikTokApiError as exc:
        if exc.retryable and exc.retry_after_s:
            time.sleep(min(exc.retry_after_s, MAX_RETRY_AFTER_S))
        raise


# ----- tasks -----------------------------------------------------------------------------------


def check_post_duration(limit_s: float | None, duration_s: float, account: str) -> None:
    """Refuse a video longer than the creator's ``max_video_post_duration_sec``."""
    if limit_s is not None and duration_s > limit_s:
        raise PublishRefused(
            f"the video is {duration_s:.1f}s long; TikTok account {account!r} may post "
            f"at most {limit_s}s (max_video_post_duration_sec)",
            reason="video_too_long",
        )


# NO_CACHE on purpose: a creator's options change (privacy, caps, bans); an old answer could
# approve a post TikTok would now refuse.
@task(
    name="query-creator-info",
    cache_policy=NO_CACHE,
    retries=4,
    retry_delay_seconds=exponential_backoff(1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def check_creator(
    ctx: PublishContext, request: PublishRequest, *, duration_s: float | None
) -> dict[str, Any]:
    """creator_info, then refuse what this creator cannot post (privacy level, duration).

    ``duration_s`` None skips the duration check (asked before the video is validated: the
    caller checks it with :func:`check_post_duration` once it is known).
    """
    check_caption(request.caption)  # before the rate-limited call: a refusal costs nothing
    take_rate_slot(ctx, "creator_info")
    with honouring_retry_after():
        info = ctx.tokens.call(ctx.client.creator_info)
    log = get_logger(account=ctx.tokens.name)
    privacy = request.privacy_level
    if request.mode == "direct" and privacy not in info.privacy_level_options:
        raise PublishRefused(
            f"TikTok account {ctx.tokens.name!r} does not offer privacy level {privacy!r} "
            f"(it offers {', '.join(info.privacy_level_options)})",
            reason="privacy_level_not_offered",
        )
    limit = info.max_video_post_duration_sec
    if duration_s is not None:
        check_post_duration(limit, duration_s, ctx.tokens.name)
    log.info("creator_checked", privacy_options=list(info.privacy_level_options), max_s=limit)
    return {
        "privacy_level_options": list(info.privacy_level_options),
        "max_video_post_duration_sec": limit,
        "comment_disabled": info.comment_disabled,
        "duet_disabled": info.duet_disabled,
        "stitch_disabled": info.stitch_disabled,
    }


@dataclass(frozen=True)
class UploadSession:
    """A TikTok upload session: its ``publish_id`` and the chunk plan it was initialised with."""

    publish_id: str
    plan: TikTokUploadPlan


def session_of(row: Publish) -> UploadSession:
    """The session a ledger row records (a resumed run continues it with the same plan)."""
    if row.publish_id is None or row.chunk_size is None:
        raise IntegrityError(f"publish {row.id} has no upload session to send to")
    return UploadSession(
        row.publish_id, plan_tiktok_upload_with_chunk_size(row.video_size, row.chunk_size)
    )


# NO_CACHE on purpose: every init is a decision the flow takes from the ledger; a cached init
# would hand back a publish_id whose upload URL may have expired.
@task(
    name="init-tiktok-upload",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def init_upload(
    ctx: PublishContext, row_id: str, *, post_info: dict[str, Any] | None, reason: str
) -> UploadSession:
    row = get_publish(ctx.rt.catalog.engine, row_id)
    if row is None:
        raise KeyError(row_id)
    plan = plan_tiktok_upload(row.video_size, ctx.preferred_chunk_bytes)
    take_rate_slot(ctx, "init")
    with honouring_retry_after():
        if row.mode == "direct":
            result = ctx.tokens.call(
                lambda token: ctx.client.init_direct_post(
                    token,
                    post_info=post_info or {},
                    video_size=plan.video_size,
                    chunk_size=plan.chunk_size,
                    total_chunk_count=plan.total_chunk_count,
                )
            )
        else:
            result = ctx.tokens.call(
                lambda token: ctx.client.init_inbox(
                    token,
                    video_size=plan.video_size,
                    chunk_size=plan.chunk_size,
                    total_chunk_count=plan.total_chunk_count,
                )
            )
    # Written before anything else happens: a kill after this line resumes this session.
    row = record_init(
        ctx.rt.catalog.engine,
        ctx.box,
        row_id,
        publish_id=result.publish_id,
        upload_url=result.upload_url,
        chunk_size=plan.chunk_size,
        chunks_total=plan.total_chunk_count,
        reason=reason,
    )
    get_logger(account=ctx.tokens.name, media_id=row.media_id).info(
        "tiktok_upload_initialized",
        publish_id=result.publish_id,
        chunk_size=plan.chunk_size,
        chunks_total=plan.total_chunk_count,
        reason=reason,
        inits=row.inits,
    )
    return UploadSession(result.publish_id, plan)


# NO_CACHE on purpose: a status is a moment's truth.
@task(
    name="fetch-tiktok-status",
    cache_policy=NO_CACHE,
    retries=4,
    retry_delay_seconds=exponential_backoff(1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def fetch_upload_status(ctx: PublishContext, publish_id: str) -> PublishStatus:
    return fetch_status_now(ctx, publish_id)


def fetch_status_now(ctx: PublishContext, publish_id: str) -> PublishStatus:
    take_rate_slot(ctx, "status")
    with honouring_retry_after():
        return ctx.tokens.call(lambda token: ctx.client.fetch_status(token, publish_id))


@contextmanager
def open_chunk(
    store: ObjectStore, key: str, start: int, length: int
) -> Iterator[IO[bytes] | bytes]:
    """The chunk's bytes: an open file positioned at ``start`` (streamed), or one ranged GET."""
    if store.url.startswith("file:"):
        with open(store.read_url(key), "rb") as fh:
            fh.seek(start)
            yield fh
    else:
        yield store.read_range(key, start, length)


# NO_CACHE on purpose: where to resume comes from TikTok's uploaded_bytes, read at the start of
# every run; a cached chunk result would be a second, staler ledger (and would survive a re-init).
@task(
    name="put-tiktok-chunk",
    cache_policy=NO_CACHE,
    retries=6,
    retry_delay_seconds=exponential_backoff(0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def put_chunk(
    ctx: PublishContext,
    row_id: str,
    publish_id: str,
    index: int,
    first_byte: int,
    last_byte: int,
    total: int,
    video_key: str,
    content_type: str,
    cursor: UploadCursor | None = None,
) -> dict[str, Any]:
    """PUT one chunk when ``cursor`` (the position the run's pipelined chunks share) says it
    is this chunk's turn; alone (no cursor) it is sent at once."""
    engine = ctx.rt.catalog.engine
    url = ctx.upload_url(row_id, publish_id)
    log = get_logger(account=ctx.tokens.name, publish_id=publish_id)
    cursor = cursor or UploadCursor(first_byte)
    try:
        with (
            honouring_retry_after(),
            open_chunk(ctx.rt.store, video_key, first_byte, last_byte - first_byte + 1) as body,
        ):
            # The body is open (an S3 chunk already fetched) before the turn comes.
            if not cursor.wait_turn(first_byte):
                return {"next_byte": cursor.position, "sent": False, "complete": False}
            result = ctx.client.put_chunk(
                url,
                data=body,
                first_byte=first_byte,
                last_byte=last_byte,
                total=total,
                content_type=content_type,
            )
    except UploadOutOfSync as exc:
        # TikTok is elsewhere than this chunk (an earlier copy landed, or the ledger is behind):
        # continue from the byte TikTok expects; ask status/fetch when the reply did not say.
        next_byte = exc.next_byte
        if next_byte is None:
            next_byte = fetch_status_now(ctx, publish_id).uploaded_bytes or 0
        with cursor.in_order(cursor.advance(next_byte)):
            _record(engine, row_id, publish_id, next_byte, total)
        log.info("tiktok_upload_resynced", chunk=index, sent_from=first_byte, next_byte=next_byte)
        # A retry that finds TikTok past this chunk: the earlier attempt's copy landed.
        landed = next_byte > last_byte and current_task_run.run_count > 1
        return {"next_byte": next_byte, "sent": landed, "complete": next_byte >= total}
    acknowledged = result.acknowledged_last_byte
    next_byte = last_byte + 1 if acknowledged is None else acknowledged + 1
    # The next chunk's PUT goes out now, while this one's ledger write happens. Its thread is
    # waiting for the GIL: yield it, or the PUT waits for this write to reach SQLite (~2 ms).
    ticket = cursor.advance(next_byte)
    time.sleep(0)
    with cursor.in_order(ticket):
        _record(engine, row_id, publish_id, next_byte, total)
    log.debug("tiktok_chunk_uploaded", chunk=index, http_status=result.http_status)
    return {"next_byte": next_byte, "sent": True, "complete": result.complete or next_byte >= total}


def _record(engine: Any, row_id: str, publish_id: str, next_byte: int, total: int) -> None:
    status = UPLOADED if next_byte >= total else UPLOADING
    if not record_progress(engine, row_id, publish_id, bytes_acknowledged=next_byte, status=status):
        raise IntegrityError(f"publish {row_id} is no longer session {publish_id}")


@dataclass
class Tally:
    """Chunks and bytes this run actually sent (re-syncs send nothing)."""

    chunks: int = 0
    bytes: int = 0


PIPELINE_DEPTH = 2  # the chunk on the wire and the one whose task is starting behind it


def send_chunks(
    ctx: PublishContext,
    row_id: str,
    session: UploadSession,
    *,
    video_key: str,
    content_type: str,
    start_byte: int,
    tally: Tally,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """PUT every chunk from the one holding ``start_byte`` on, in order, until TikTok's 201.

    At most :data:`PIPELINE_DEPTH` chunk tasks are in flight; only the one whose first byte is
    TikTok's next expected byte sends. A reply that moves TikTok's position anywhere but the next
    chunk (a 416 re-sync) releases the waiting task unsent and the loop restarts from there.
    Returns the plan's chunk count; ``tally`` counts what was sent even if a later PUT raises.
    """
    publish_id, plan = session.publish_id, session.plan
    index = first_unacknowledged_chunk(plan, start_byte)
    if index >= plan.total_chunk_count:
        return plan.total_chunk_count
    cursor = UploadCursor(plan.chunks[index].first_byte)
    pending: deque[tuple[PlannedChunk, PrefectFuture[dict[str, Any]]]] = deque()

    def count(chunk: PlannedChunk, result: dict[str, Any]) -> None:
        if result["sent"]:
            tally.chunks += 1
            tally.bytes += chunk.length

    def drain() -> None:
        """Release and collect every waiting task (each returns unsent, or re-raises)."""
        cursor.close()
        try:
            while pending:
                chunk, fut = pending.popleft()
                count(chunk, fut.result())
        finally:
            for _, fut in pending:  # an error above: still let the rest finish before leaving
                fut.wait()
            pending.clear()

    try:
        # Every step either advances or re-syncs to TikTok's position; more than a few re-syncs
        # per chunk means the server and this plan disagree for good.
        for _ in range(4 * plan.total_chunk_count + 8):
            while len(pending) < PIPELINE_DEPTH and index < plan.total_chunk_count:
                chunk = plan.chunks[index]
                pending.append(
                    (
                        chunk,
                        _submit_chunk(
                            ctx, row_id, publish_id, chunk, plan, video_key, content_type, cursor
                        ),
                    )
                )
                index += 1
            if not pending:
                return plan.total_chunk_count
            chunk, fut = pending.popleft()
            result = fut.result()  # re-raises the task's final error (after its retries)
            count(chunk, result)
            on_progress(result["next_byte"], plan.video_size)
            if result["complete"]:
                return plan.total_chunk_count
            if pending and pending[0][0].first_byte == result["next_byte"]:
                continue  # the usual case: the next chunk is already going out
            drain()
            position = cursor.position
            index = first_unacknowledged_chunk(plan, position)
            if index >= plan.total_chunk_count:
                return plan.total_chunk_count
            cursor.reset(plan.chunks[index].first_byte)
    finally:
        failing = sys.exc_info()[0] is not None
        try:
            drain()
        except Exception:
            if not failing:  # the first error is the one to report
                raise
    raise IntegrityError(
        f"publish {row_id}: TikTok's upload position did not advance", publish_id=publish_id
    )


def _submit_chunk(
    ctx: PublishContext,
    row_id: str,
    publish_id: str,
    chunk: PlannedChunk,
    plan: TikTokUploadPlan,
    video_key: str,
    content_type: str,
    cursor: UploadCursor,
) -> PrefectFuture[dict[str, Any]]:
    return put_chunk.submit(
        ctx,
        row_id,
        publish_id,
        chunk.index,
        chunk.first_byte,
        chunk.last_byte,
        plan.video_size,
        video_key,
        content_type,
        cursor,
    )
