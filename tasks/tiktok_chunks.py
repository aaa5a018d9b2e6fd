"""Step 6, tiktok-publish: the chunk PUTs of one upload session, in order, window by window.

* ``upload_window``: one Prefect task per *window* of consecutive chunks, sized by bytes
  (``REELFLOW_TIKTOK_WINDOW_BYTES``, :mod:`reelflow.tiktok.windows`). It PUTs its chunks in
  order, each streamed from the stored object (a file seek for the local store; for S3 one
  ranged GET, fetched while the chunk before it is on the wire, never more than one ahead). The
  ledger write of each acknowledged position runs on a thread of its own, overlapping the next
  PUT; a 416 re-syncs to the byte TikTok expects instead of failing. A retry of the window starts
  from the position its failed attempt left TikTok at, never from the window's first chunk.
* ``send_chunks``: the window loop over the :class:`~tasks.tiktok_publish.UploadSession`'s plan,
  bounded. TikTok requires order, so PUTs never overlap, but the next window's task starts while
  the current one's last PUT is on the wire. The one :class:`~reelflow.tiktok.cursor.UploadCursor`
  that orders them is made here and handed to each window as an argument; each task returns the
  position it left TikTok at and what it sent.

A window no larger than one chunk is the earlier one-task-per-chunk design (both are measured in
docs/publish-speed.md). Why windows: each task run costs client and server CPU (state events,
the API recording them) that the two shared cores took from the PUTs themselves.

Must not: init a session (the flow decides that), hold a whole video in memory, or put the
upload URL into a task parameter, a log event or an exception message.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff
from sqlalchemy.engine import Engine

from reelflow.errors import (
    IntegrityCheckError,
    LeaseLostError,
    ReelflowError,
    is_retryable,
    retry_if_retryable,
)
from reelflow.logging import get_logger
from reelflow.publish_rules import UPLOADED, UPLOADING
from reelflow.tiktok.cursor import UploadCursor
from reelflow.tiktok.errors import UploadOutOfSyncError
from reelflow.tiktok.plan import PlannedChunk, TikTokUploadPlan, first_unacknowledged_chunk
from reelflow.tiktok.windows import chunk_starting_at, window_at
from storage.base import ObjectStore
from storage.publishing import record_progress
from tasks.publish_context import PublishContext
from tasks.tiktok_limits import honouring_retry_after
from tasks.tiktok_publish import UploadSession, fetch_status_now

Progress = Callable[[int, int], None]


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


class ChunkBodies:
    """The bodies of one window's chunks. A local file is streamed (nothing to fetch); from S3
    the next chunk's ranged GET runs on one thread while the current PUT is on the wire, so a
    window holds at most the chunk sending and the one after it."""

    def __init__(self, store: ObjectStore, key: str, window: tuple[PlannedChunk, ...]) -> None:
        self.store, self.key, self.window = store, key, window
        self._local = store.url.startswith("file:")
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, Future[bytes]] | None = None

    def _fetch(self, k: int) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tiktok-prefetch")
        chunk = self.window[k]
        return self._pool.submit(self.store.read_range, self.key, chunk.first_byte, chunk.length)

    @contextmanager
    def open(self, k: int) -> Iterator[IO[bytes] | bytes]:
        chunk = self.window[k]
        if self._local:
            with open_chunk(self.store, self.key, chunk.first_byte, chunk.length) as body:
                yield body
            return
        ahead, self._ahead = self._ahead, None
        fetched = ahead[1] if ahead is not None and ahead[0] == k else self._fetch(k)
        if ahead is not None and ahead[0] != k:  # a re-sync jumped past it
            ahead[1].cancel()
        yield fetched.result()

    def fetch_ahead(self, k: int) -> None:
        """Start the GET of the chunk after ``k`` (called once ``k`` is about to go out)."""
        if not self._local and self._ahead is None and k + 1 < len(self.window):
            self._ahead = (k + 1, self._fetch(k + 1))

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class LedgerWrites:
    """The ledger writes of one window, on one thread, in the cursor's ticket order: the next
    PUT goes out while the previous chunk's position reaches the catalog (~2 ms on SQLite)."""

    def __init__(self, engine: Engine, row_id: str, publish_id: str, total: int) -> None:
        self.engine, self.row_id, self.publish_id, self.total = engine, row_id, publish_id, total
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tiktok-ledger")
        self._writes: list[Future[None]] = []

    def record(self, cursor: UploadCursor, ticket: int, next_byte: int) -> None:
        self.raise_failed()  # a row that is no longer this session stops the window here

        def write() -> None:
            with cursor.in_order(ticket):
                _record(self.engine, self.row_id, self.publish_id, next_byte, self.total)

        self._writes.append(self._pool.submit(write))

    def raise_failed(self) -> None:
        for done in [w for w in self._writes if w.done()]:
            done.result()

    def finish(self, *, failing: bool) -> None:
        """Wait for every write; re-raise the first failure unless one is already on its way."""
        self._pool.shutdown(wait=True)
        if not failing:
            for write in self._writes:
                write.result()


# NO_CACHE on purpose: where to resume comes from TikTok's uploaded_bytes, read at the start of
# every run; a cached window result would be a second, staler ledger (and would survive a
# re-init).
@task(
    name="tiktok-upload-window",
    cache_policy=NO_CACHE,
    retries=6,
    retry_delay_seconds=exponential_backoff(0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def upload_window(
    ctx: PublishContext,
    row_id: str,
    publish_id: str,
    window: tuple[PlannedChunk, ...],
    total: int,
    video_key: str,
    content_type: str,
    cursor: UploadCursor | None = None,
    on_progress: Progress | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """PUT ``window``'s chunks in order from TikTok's position when ``cursor`` (the position the
    run's pipelined windows share) says it is this window's turn; alone it starts at once.

    Returns ``{next_byte, chunks, bytes, complete}``: where TikTok is now, and the chunks and
    bytes this task sent; ``on_sent`` hears of each sent chunk at once (a later failure raises
    and returns nothing). A retryable failure of the window's first chunk (in this attempt)
    raises (Prefect retries it, from TikTok's position); of a later chunk, it ends the window
    there, so the flow starts the next window at that chunk with a retry budget of its own.
    """
    log = get_logger(account=ctx.tokens.name, publish_id=publish_id)
    cursor = cursor or UploadCursor(window[0].first_byte)
    retrying = current_task_run.run_count > 1
    # A retry goes on from where the failed attempt left TikTok, not from the window's start.
    position = cursor.position if retrying else window[0].first_byte
    outcome: dict[str, Any] = {"next_byte": position, "chunks": 0, "bytes": 0, "complete": False}
    k = chunk_starting_at(window, position)
    if k is None:
        return outcome
    url = ctx.upload_url(row_id, publish_id)
    if not retrying and window[0].index > 0:
        # Fetch the first body only once the chunk before it is on the wire (one ahead).
        previous = window[0].first_byte // window[0].index
        if not cursor.wait_until(window[0].first_byte - previous):
            return outcome | {"next_byte": cursor.position}
    bodies = ChunkBodies(ctx.rt.store, video_key, window)
    ledger = LedgerWrites(ctx.rt.catalog.engine, row_id, publish_id, total)
    first = True
    try:
        # Each step sends one chunk or re-syncs past it; a few re-syncs per chunk at most.
        for _ in range(4 * len(window) + 4):
            if k is None:
                break
            chunk = window[k]
            sent, next_byte, complete = _put_one(
                ctx, url, publish_id, content_type, bodies, k, chunk, total, cursor, first
            )
            if next_byte is None:
                if first:  # not this window's turn: the position moved elsewhere
                    outcome["next_byte"] = cursor.position
                break
            first = False
            if sent is None:  # a retryable failure after progress: the window ends here
                break
            ticket = cursor.advance(next_byte)
            time.sleep(0)  # a window waiting for this byte is waiting for the GIL: yield it
            ledger.record(cursor, ticket, next_byte)
            if sent:
                outcome["chunks"] += 1
                outcome["bytes"] += chunk.length
                if on_sent is not None:
                    on_sent(chunk.length)
            outcome["next_byte"] = position = next_byte
            if on_progress is not None:
                on_progress(next_byte, total)
            if complete or next_byte >= total:
                outcome["complete"] = True
                break
            k = chunk_starting_at(window, position)
    finally:
        bodies.close()
        ledger.finish(failing=sys.exc_info()[0] is not None)
    log.debug("tiktok_window_uploaded", chunks=outcome["chunks"], next_byte=outcome["next_byte"])
    return outcome


def _put_one(
    ctx: PublishContext,
    url: str,
    publish_id: str,
    content_type: str,
    bodies: ChunkBodies,
    k: int,
    chunk: PlannedChunk,
    total: int,
    cursor: UploadCursor,
    first: bool,
) -> tuple[bool | None, int | None, bool]:
    """One chunk's PUT: ``(sent, next_byte, complete)``. ``next_byte`` None: not this window's
    turn, nothing sent. ``sent`` None: a retryable failure on a chunk after the window's first
    (the window stops; the error is logged and the next window sends that chunk again)."""
    log = get_logger(account=ctx.tokens.name)
    try:
        with honouring_retry_after(), bodies.open(k) as body:
            # The body is open (an S3 chunk already fetched) before the turn comes.
            if first and not cursor.wait_turn(chunk.first_byte):
                return False, None, False
            bodies.fetch_ahead(k)
            try:
                result = ctx.client.put_chunk(
                    url,
                    data=body,
                    first_byte=chunk.first_byte,
                    last_byte=chunk.last_byte,
                    total=total,
                    content_type=content_type,
                )
            except UploadOutOfSyncError:
                raise
            except BaseException:
                cursor.note_unanswered(chunk.first_byte)  # it may have landed: a 416 will say
                raise
    except UploadOutOfSyncError as exc:
        # TikTok is elsewhere than this chunk (an earlier copy landed, or the ledger is behind):
        # continue from the byte TikTok expects; ask status/fetch when the reply did not say.
        next_byte = exc.next_byte
        if next_byte is None:
            next_byte = fetch_status_now(ctx, publish_id).uploaded_bytes or 0
        log.info(
            "tiktok_upload_resynced", chunk=chunk.index, sent_from=chunk.first_byte,
            next_byte=next_byte,
        )  # fmt: skip
        # TikTok past a chunk whose earlier PUT went unanswered: that copy landed.
        landed = next_byte > chunk.last_byte and cursor.was_unanswered(chunk.first_byte)
        return landed, next_byte, next_byte >= total
    except ReelflowError as exc:
        if first or not is_retryable(exc) or isinstance(exc, LeaseLostError):
            raise
        log.warning(
            "tiktok_window_cut", chunk=chunk.index, error=type(exc).__name__,
            code=getattr(exc, "code", None), http_status=getattr(exc, "http_status", None),
        )  # fmt: skip
        return None, cursor.position, False
    acknowledged = result.acknowledged_last_byte
    next_byte = chunk.last_byte + 1 if acknowledged is None else acknowledged + 1
    return True, next_byte, result.complete or next_byte >= total


def _record(engine: Engine, row_id: str, publish_id: str, next_byte: int, total: int) -> None:
    status = UPLOADED if next_byte >= total else UPLOADING
    if not record_progress(engine, row_id, publish_id, bytes_acknowledged=next_byte, status=status):
        raise IntegrityCheckError(f"publish {row_id} is no longer session {publish_id}")


@dataclass
class Tally:
    """Chunks and bytes this run actually sent (re-syncs send nothing)."""

    chunks: int = 0
    bytes: int = 0

    def add(self, length: int) -> None:
        """One chunk sent; called by the sending window's thread (one sends at a time)."""
        self.chunks += 1
        self.bytes += length


PIPELINE_DEPTH = 2  # the window on the wire and the one whose task is starting behind it


def send_chunks(
    ctx: PublishContext,
    row_id: str,
    session: UploadSession,
    *,
    video_key: str,
    content_type: str,
    start_byte: int,
    tally: Tally,
    on_progress: Progress = lambda done, total: None,
    window_bytes: int | None = None,
) -> int:
    """PUT every chunk from the one holding ``start_byte`` on, in order, until TikTok's 201.

    Chunks go in windows of at most ``window_bytes`` (default: the settings'); at most
    :data:`PIPELINE_DEPTH` window tasks are in flight; only the one holding TikTok's next
    expected byte sends. A window that leaves TikTok anywhere but the next window's first byte
    (a 416 re-sync, a window cut short by a failure) releases the waiting one unsent and the loop
    starts a new window from there. ``on_progress`` is called per acknowledged chunk, from the
    sending task's thread. Returns the plan's chunk count; ``tally`` counts what was sent even if
    a later PUT raises.
    """
    publish_id, plan = session.publish_id, session.plan
    if window_bytes is None:
        window_bytes = ctx.rt.settings.tiktok_window_bytes
    index = first_unacknowledged_chunk(plan, start_byte)
    if index >= plan.total_chunk_count:
        return plan.total_chunk_count
    on_progress(plan.chunks[index].first_byte, plan.video_size)  # from the flow's own context
    cursor = UploadCursor(plan.chunks[index].first_byte)
    pending: deque[tuple[int, PrefectFuture[dict[str, Any]]]] = deque()

    def drain() -> None:
        """Release and collect every waiting task (each returns unsent, or re-raises)."""
        cursor.close()
        try:
            while pending:
                _, fut = pending.popleft()
                fut.result()
        finally:
            for _, fut in pending:  # an error above: still let the rest finish before leaving
                fut.wait()
            pending.clear()

    try:
        # Every step either advances or re-syncs to TikTok's position; more than a few re-syncs
        # per chunk means the server and this plan disagree for good.
        for _ in range(4 * plan.total_chunk_count + 8):
            while len(pending) < PIPELINE_DEPTH and index < plan.total_chunk_count:
                window = window_at(plan, plan.chunks[index].first_byte, window_bytes)
                fut = _submit_window(
                    ctx, row_id, publish_id, window, plan, video_key, content_type, cursor,
                    on_progress, tally.add,
                )  # fmt: skip
                pending.append((window[0].first_byte, fut))
                index = window[-1].index + 1
            if not pending:
                return plan.total_chunk_count
            _, fut = pending.popleft()
            result = fut.result()  # re-raises the task's final error (after its retries)
            on_progress(result["next_byte"], plan.video_size)
            if result["complete"]:
                return plan.total_chunk_count
            if pending and pending[0][0] == result["next_byte"]:
                continue  # the usual case: the next window is already going out
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


def _submit_window(
    ctx: PublishContext,
    row_id: str,
    publish_id: str,
    window: tuple[PlannedChunk, ...],
    plan: TikTokUploadPlan,
    video_key: str,
    content_type: str,
    cursor: UploadCursor,
    on_progress: Progress,
    on_sent: Callable[[int], None],
) -> PrefectFuture[dict[str, Any]]:
    return upload_window.submit(
        ctx,
        row_id,
        publish_id,
        window,
        plan.video_size,
        video_key,
        content_type,
        cursor,
        on_progress,
        on_sent,
    )
