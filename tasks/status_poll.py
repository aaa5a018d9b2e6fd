"""Step 7, status-poll: follow a TikTok publish until a terminal status or a deadline.

``poll_publish_status`` polls ``status/fetch`` with growing intervals (under the shared status
rate limit) and records every answer in the ledger:

* ``PUBLISH_COMPLETE`` → ``published``, with ``publicaly_available_post_id`` (TikTok's spelling)
  as ``post_id`` when TikTok sent one (only public, moderated posts get one);
* ``SEND_TO_USER_INBOX`` → ``sent_to_inbox``, the practical end of an inbox upload;
* ``FAILED`` → ``failed`` with TikTok's ``fail_reason`` and ``log_id``; the caller raises
  :class:`~reelflow.tiktok.errors.TikTokPublishFailedError` (not raised here: a Prefect retry of this
  task could only read the same FAILED again);
* the deadline passing first → ``processing``, which a later run (or the reconcile deployment)
  picks up by polling again, never by a new init.

Must not: init, upload, or sleep past the deadline it was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import retry_if_retryable
from reelflow.logging import get_logger
from reelflow.tiktok.client import PublishStatus
from reelflow.tiktok.errors import TikTokPublishFailedError
from storage.publishing import Publish, record_poll_deadline, record_tiktok_status
from tasks.publish_context import PublishContext
from tasks.tiktok_publish import fetch_status_now

FIRST_POLL_INTERVAL_S = 1.0
MAX_POLL_INTERVAL_S = 15.0
POLL_BACKOFF = 1.5
DEFAULT_POLL_DEADLINE_S = 300.0  # TikTok: 1 GB processes in about a minute, 4 GB in over two
TERMINAL_STATUSES = frozenset({"PUBLISH_COMPLETE", "SEND_TO_USER_INBOX", "FAILED"})


@dataclass(frozen=True)
class PollOutcome:
    status: str  # TikTok's last status
    post_id: str | None
    fail_reason: str | None
    log_id: str | None
    deadline_reached: bool
    polls: int


def publish_failed(
    fail_reason: str, publish_id: str, log_id: str | None
) -> TikTokPublishFailedError:
    """The FAILED error, its message naming TikTok's log_id too (what TikTok support asks for)."""
    error = TikTokPublishFailedError(fail_reason, publish_id, log_id)
    if log_id and log_id not in error.message:
        error.message = f"{error.message} [log_id {log_id}]"
        error.args = (error.message,)
    return error


def record_status(ctx: PublishContext, row_id: str, st: PublishStatus, *, size: int) -> Publish:
    """Write one status answer into the ledger (terminal statuses close the row)."""
    return record_tiktok_status(
        ctx.rt.catalog.engine,
        row_id,
        status=st.status,
        post_id=st.post_ids[0] if st.post_ids else None,
        fail_reason=st.fail_reason,
        log_id=st.log_id,
        size=size,
    )


# NO_CACHE on purpose: a status is a moment's truth. Prefect retries (5xx, 429, dropped
# connections) restart the loop, but the deadline is absolute, so a retry never extends it.
@task(
    name="poll-tiktok-status",
    cache_policy=NO_CACHE,
    retries=4,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def poll_publish_status(
    ctx: PublishContext,
    row_id: str,
    publish_id: str,
    *,
    video_size: int,
    deadline_at: float,
    first_interval_s: float = FIRST_POLL_INTERVAL_S,
    max_interval_s: float = MAX_POLL_INTERVAL_S,
) -> PollOutcome:
    """Poll until TikTok reports a terminal status or ``deadline_at`` (epoch seconds) passes."""
    log = get_logger(account=ctx.tokens.name, publish_id=publish_id)
    interval = first_interval_s
    polls = 0
    while True:
        st = fetch_status_now(ctx, publish_id)
        polls += 1
        record_status(ctx, row_id, st, size=video_size)
        if st.status in TERMINAL_STATUSES:
            post_id = st.post_ids[0] if st.post_ids else None
            log.info(
                "tiktok_publish_settled",
                status=st.status,
                post_id=post_id,
                fail_reason=st.fail_reason,
                log_id=st.log_id,
                polls=polls,
            )
            return PollOutcome(st.status, post_id, st.fail_reason, st.log_id, False, polls)
        remaining = deadline_at - time.time()
        if remaining <= 0:
            # Bytes were all acknowledged before polling started; keep that fact, mark the wait.
            record_poll_deadline(ctx.rt.catalog.engine, row_id)
            log.warning("tiktok_poll_deadline_reached", status=st.status, polls=polls)
            return PollOutcome(st.status, None, None, st.log_id, True, polls)
        time.sleep(min(interval, remaining))
        interval = min(interval * POLL_BACKOFF, max_interval_s)
