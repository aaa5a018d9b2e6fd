"""Step 6, tiktok-publish: the chunk PUTs of one upload session, in order, pipelined.

* ``put_chunk``: one PUT, streamed from the stored object (a file seek for the local store, one
  ranged GET for S3); a 416 re-syncs to the byte TikTok expects instead of failing. The ledger
  write of the acknowledged position overlaps the next chunk's PUT.
* ``send_chunks``: the chunk loop over the :class:`~tasks.tiktok_publish.UploadSession`'s plan,
  bounded. TikTok requires order, so PUTs never overlap, but the next chunk's task starts while
  the current PUT is on the wire. The one :class:`~reelflow.tiktok.cursor.UploadCursor` that
  orders them is made here and handed to each ``put_chunk`` as an argument; each task returns
  the position it left TikTok at.

Must not: init a session (the flow decides that), hold a whole video in memory, or put the
upload URL into a task parameter, a log event or an exception message.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff
from sqlalchemy.engine import Engine

from reelflow.errors import IntegrityCheckError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.publish_rules import UPLOADED, UPLOADING
from reelflow.tiktok.cursor import UploadCursor
from reelflow.tiktok.errors import UploadOutOfSyncError
from reelflow.tiktok.plan import PlannedChunk, TikTokUploadPlan, first_unacknowledged_chunk
from storage.base import ObjectStore
from storage.publishing import record_progress
from tasks.publish_context import PublishContext
from tasks.tiktok_limits import honouring_retry_after
from tasks.tiktok_publish import UploadSession, fetch_status_now


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
    except UploadOutOfSyncError as exc:
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


def _record(engine: Engine, row_id: str, publish_id: str, next_byte: int, total: int) -> None:
    status = UPLOADED if next_byte >= total else UPLOADING
    if not record_progress(engine, row_id, publish_id, bytes_acknowledged=next_byte, status=status):
        raise IntegrityCheckError(f"publish {row_id} is no longer session {publish_id}")


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
    raise IntegrityCheckError(
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
