"""Step 6, tiktok-publish: the creator check, the init, and TikTok's status of a publish.

* ``check_creator``: creator_info; refuses terminally a privacy level the creator does not offer,
  a post option allowing an interaction the creator turned off (``comment_disabled_by_creator``
  and the like) or a video longer than ``max_video_post_duration_sec``
  (:class:`PublishRefusedError`).
* ``init_upload``: one FILE_UPLOAD init (Direct Post or inbox) with the chunk plan it computes;
  the ``publish_id`` and the (encrypted) upload URL are in the ledger before the task returns,
  and the plan goes back to the caller in the :class:`UploadSession` (never rebuilt from the row
  within a run).
* ``fetch_upload_status``: TikTok's view of a publish (``uploaded_bytes`` is the remote truth a
  resumed run continues from, as ListParts is for S3).

The chunk PUTs are :mod:`tasks.tiktok_chunks`; the shared context :mod:`tasks.publish_context`;
rate limits and Retry-After :mod:`tasks.tiktok_limits`.

Must not: decide *whether* to init (the flow's ``publish_stored_media`` reads the ledger and
TikTok's status for that), or put a token or an upload URL into a task parameter, a log event
or an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import IntegrityCheckError, PublishRefusedError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.publish_rules import PublishRequest, check_caption, check_creator_settings
from reelflow.tiktok.client import PublishStatus
from reelflow.tiktok.plan import (
    TikTokUploadPlan,
    plan_tiktok_upload,
    plan_tiktok_upload_with_chunk_size,
)
from storage.publishing import Publish, record_init
from tasks.publish_context import PublishContext
from tasks.tiktok_limits import honouring_retry_after


def check_post_duration(limit_s: float | None, duration_s: float, account: str) -> None:
    """Refuse a video longer than the creator's ``max_video_post_duration_sec``."""
    if limit_s is not None and duration_s > limit_s:
        raise PublishRefusedError(
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
    ctx.take_rate_slot("creator_info")
    with honouring_retry_after():
        info = ctx.tokens.call(ctx.client.creator_info)
    log = get_logger(account=ctx.tokens.name)
    privacy = request.privacy_level
    if request.is_direct and privacy not in info.privacy_level_options:
        raise PublishRefusedError(
            f"TikTok account {ctx.tokens.name!r} does not offer privacy level {privacy!r} "
            f"(it offers {', '.join(info.privacy_level_options)})",
            reason="privacy_level_not_offered",
        )
    creator = {
        "privacy_level_options": list(info.privacy_level_options),
        "max_video_post_duration_sec": info.max_video_post_duration_sec,
        "comment_disabled": info.comment_disabled,
        "duet_disabled": info.duet_disabled,
        "stitch_disabled": info.stitch_disabled,
    }
    if request.is_direct:
        check_creator_settings(request.post, creator, ctx.tokens.name)
    limit = info.max_video_post_duration_sec
    if duration_s is not None:
        check_post_duration(limit, duration_s, ctx.tokens.name)
    log.info("creator_checked", privacy_options=list(info.privacy_level_options), max_s=limit)
    return creator


@dataclass(frozen=True)
class UploadSession:
    """A TikTok upload session: its ``publish_id`` and the chunk plan it was initialised with."""

    publish_id: str
    plan: TikTokUploadPlan


def session_of(row: Publish) -> UploadSession:
    """The session a ledger row records (a resumed run continues it with the same plan)."""
    if row.publish_id is None or row.chunk_size is None:
        raise IntegrityCheckError(f"publish {row.id} has no upload session to send to")
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
    ctx: PublishContext,
    row_id: str,
    request: PublishRequest,
    *,
    video_size: int,
    post_info: dict[str, Any] | None,
    reason: str,
) -> UploadSession:
    """Open a new upload session for ledger row ``row_id`` (a video of ``video_size`` bytes)."""
    plan = plan_tiktok_upload(video_size, ctx.preferred_chunk_bytes)
    ctx.take_rate_slot("init")
    with honouring_retry_after():
        if request.is_direct:
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
    ctx.take_rate_slot("status")
    with honouring_retry_after():
        return ctx.tokens.call(lambda token: ctx.client.fetch_status(token, publish_id))
