"""Step 2, chunk-upload: the tasks that stage a source as a resumable multipart upload.

* ``open_upload_session`` finds or starts the session for (source fingerprint, store, chunk
  size), then reconciles the ledger with the store's own list of parts (ListParts).
* ``upload_window`` is one Prefect task per window of consecutive parts (``reelflow.windows``):
  retried with backoff + jitter on retryable errors, a retry sending only the parts with no
  receipt yet; its result kept under (session, upload id, window, part range) so a re-run of
  the flow finds finished windows ``Cached``. Each part's ledger row is written after the store
  acknowledged that part (``send_part``). It gets the chunks through a :class:`WindowFeed` and
  the run's UploadPart slots from its caller.
* ``give_up_upload``: keep a failed run's upload for a later run, or abort it.

Must not: submit tasks or wait for them: reading the source and driving ``upload_window`` runs is
the flow layer's (``flows/chunk_pipeline.py``). Arguments are checked (:func:`check_upload_args`)
before a session or an upload exists, so a bad chunk size or concurrency leaves nothing behind.
The run's catalog carries its lease's fence: a run that lost its lease sends no further part, and
its ledger writes are refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import (
    LeaseLostError,
    ReelflowError,
    StorageError,
    TransientStorageError,
    UploadNotFoundError,
    is_retryable,
    retry_if_retryable,
)
from reelflow.ingest_options import check_chunk_size, check_concurrency, check_memory_budget
from reelflow.logging import get_logger
from reelflow.planning import (
    Chunk,
    ChunkPlan,
    b64,
    plan_chunks,
    reconcile_parts,
    session_id_for,
    upload_key,
)
from reelflow.rules import VideoMeta
from reelflow.sources import SourceRef
from storage.base import PartReceipt
from storage.catalog import UploadSession
from storage.runtime import Runtime


@dataclass(frozen=True)
class SessionState:
    session_id: str
    upload_id: str
    staging_key: str
    status: str
    plan: ChunkPlan
    confirmed: dict[int, PartReceipt] = field(default_factory=dict)
    forgotten: frozenset[int] = frozenset()
    sha256: str | None = None


def check_upload_args(
    chunk_size: object, concurrency: object, *, memory_budget_bytes: int | None = None
) -> None:
    """Refuse a chunk size or concurrency no upload can use, by the one set of rules every
    caller uses (``reelflow.ingest_options``); ``concurrency`` None means "not known here"
    (checked again before the parts are sent)."""
    check_chunk_size(chunk_size)  # type: ignore[arg-type]
    if concurrency is None:
        return
    check_concurrency(concurrency)  # type: ignore[arg-type]
    if memory_budget_bytes is not None:
        check_memory_budget(chunk_size, concurrency, memory_budget_bytes)  # type: ignore[arg-type]


def _start_upload(rt: Runtime, row: UploadSession) -> UploadSession:
    upload_id = rt.store.create_upload(row.staging_key, row.content_type)
    get_logger(session_id=row.id, upload_id=upload_id).info("upload_started", parts=row.parts_total)
    return rt.catalog.update_session(row.id, upload_id=upload_id, status="open", error=None)


# NO_CACHE on purpose: this task's job is to look at the store's truth on every run.
@task(
    name="open-upload-session",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def open_upload_session(
    source: SourceRef,
    meta: VideoMeta,
    chunk_size: int,
    rt: Runtime,
    concurrency: int | None = None,
) -> SessionState:
    check_upload_args(chunk_size, concurrency)
    rt.catalog.check_fence()
    plan = plan_chunks(source.size_bytes, chunk_size)
    # The buffers hold the plan's chunk size (grown to S3's 5 MiB minimum or to fit 10 000 parts).
    budget = rt.settings.memory_budget_bytes
    check_upload_args(plan.chunk_size, concurrency, memory_budget_bytes=budget)
    sid = session_id_for(source.fingerprint, rt.store.url, plan.chunk_size)
    row = rt.catalog.get_session(sid)
    if row is None or row.status == "aborted":
        row = rt.catalog.save_session(
            UploadSession(
                id=sid,
                source_uri=source.public_uri,
                source_fingerprint=source.fingerprint,
                store_url=rt.store.url,
                staging_key=upload_key(sid, meta.container),  # the video's final key
                size_bytes=source.size_bytes,
                chunk_size=plan.chunk_size,
                parts_total=plan.count,
                content_type=meta.content_type,
                ext=meta.container,
            )
        )
    if row.status in ("assembled", "completed") and row.upload_id:
        return SessionState(
            sid, row.upload_id, row.staging_key, row.status, plan, sha256=row.sha256
        )
    if row.upload_id is None:
        row = _start_upload(rt, row)
    upload_id = str(row.upload_id)
    try:
        remote = rt.store.list_parts(row.staging_key, upload_id)
    except UploadNotFoundError:
        if (adopted := _adopt_completed(rt, row, plan)) is not None:
            return adopted
        # Aborted or expired behind our back (lifecycle rule, cleanup): start over, cleanly.
        rt.catalog.forget_parts(upload_id)
        row = _start_upload(rt, row)
        upload_id = str(row.upload_id)
        remote = {}
    ledger = rt.catalog.ledger_parts(upload_id)
    rec = reconcile_parts(plan, ledger, remote)
    if rec.forget:
        rt.catalog.forget_parts(upload_id, set(rec.forget))
    for n in sorted(rec.adopted):  # acknowledged by the store, killed before the ledger write
        rt.catalog.record_part(sid, upload_id, plan.chunks[n - 1].offset, remote[n])
    get_logger(session_id=sid, upload_id=upload_id).info(
        "upload_session_reconciled",
        parts_total=plan.count,
        parts_in_store=len(rec.confirmed),
        parts_forgotten=len(rec.forget),
        parts_adopted=len(rec.adopted),
    )
    confirmed = {n: remote[n] for n in rec.confirmed}
    return SessionState(sid, upload_id, row.staging_key, row.status, plan, confirmed, rec.forget)


def _adopt_completed(rt: Runtime, row: UploadSession, plan: ChunkPlan) -> SessionState | None:
    """A run killed between CompleteMultipartUpload (or the local rename) and its "assembled"
    write leaves no upload to list, but the whole object at the staging key. ``assemble``
    records the source's SHA-256 on the session before it completes (the intent), so the object
    is adopted when its size and read-back SHA-256 match that intent: one read of the object
    instead of sending every part again (a kill in assemble used to re-send the whole file)."""
    if not row.sha256 or row.upload_id is None:
        return None
    if rt.store.size(row.staging_key) != plan.size_bytes:
        return None
    if rt.store.sha256_hex(row.staging_key) != row.sha256:
        return None
    rt.catalog.update_session(row.id, status="assembled")
    get_logger(session_id=row.id, upload_id=row.upload_id).info(
        "upload_adopted_after_completion", sha256=row.sha256
    )
    return SessionState(
        row.id, row.upload_id, row.staging_key, "assembled", plan, sha256=row.sha256
    )


CHUNK_RESULTS_PREFIX = "reelflow-chunks"


# A window task waits this long for the reader's next chunk (the reader itself waits at most as
# long for a buffer a PUT gives back); past it the attempt fails retryably.
FEED_WAIT_S = 900.0
_POLL_S = 0.2


@dataclass(frozen=True)
class PartSent:
    """One part the store acknowledged in this run (its ledger row is written)."""

    part_number: int
    size: int
    etag: str
    sha256_b64: str


def send_part(
    rt: Runtime,
    session_id: str,
    upload_id: str,
    key: str,
    chunk: Chunk,
    data: bytes | bytearray,
    put_slots: threading.Semaphore | None = None,
) -> PartSent:
    """Send one part and record it in the ledger once the store acknowledged it.

    ``put_slots`` is the run's bound on UploadPart requests on the wire (the chunk pipeline
    owns it, shared by every window of the run); a call on its own has none.
    """
    # Hashed here, in parallel across parts; the whole-file hash has a thread of its own.
    sha256_b64 = b64(hashlib.sha256(data).digest())
    rt.catalog.check_fence()
    with put_slots or contextlib.nullcontext():
        rt.catalog.check_fence()  # the lease may have gone while this part waited for a slot
        receipt = rt.store.upload_part(key, upload_id, chunk, data, sha256_b64)
    rt.catalog.record_part(session_id, upload_id, chunk.offset, receipt)
    get_logger(session_id=session_id, upload_id=upload_id).debug(
        "chunk_uploaded", part_number=chunk.part_number, size=chunk.length
    )
    return PartSent(chunk.part_number, receipt.size, receipt.etag, sha256_b64)


class WindowFeed:
    """The hand-off of one window's chunks from the run's single reader to its task run.

    The reader ``put``s each chunk it read for a part the store lacks; the ``upload-window`` run
    ``take``s them, and hands each acknowledged part to ``on_sent`` (which gives the buffer back,
    keeps the digest and moves the progress). A part whose PUT failed goes back to the front, so
    the task's next attempt sends exactly the parts that have no receipt yet, from the same
    buffer (the source is read once). Like a chunk buffer, the feed is opaque to Prefect's
    parameter traversal (not a dataclass or a collection) and refuses to be pickled: it never
    enters a cache key or leaves this process; the key is what the window *is*.
    """

    __slots__ = ("_abandoned", "_cond", "_expected", "_fed", "_on_sent", "_ready", "sent")

    def __init__(
        self,
        expected: int,
        on_sent: Callable[[PartSent, bytes | bytearray], None] = lambda sent, data: None,
    ) -> None:
        self._expected = expected  # parts of the window the store lacks: all the reader feeds
        self._on_sent = on_sent
        self._cond = threading.Condition()
        self._ready: deque[tuple[Chunk, bytes | bytearray]] = deque()
        self._fed = 0
        self._abandoned = False
        self.sent: list[PartSent] = []  # acknowledged in this run, over all attempts

    @property
    def expected(self) -> int:
        return self._expected

    def __repr__(self) -> str:
        return f"WindowFeed({self._fed}/{self._expected} fed, {len(self.sent)} sent)"

    def __reduce__(self) -> Any:
        raise TypeError("WindowFeed refers to buffers of this process; it is never serialized")

    # --- the reader's side
    def put(self, chunk: Chunk, data: bytes | bytearray) -> None:
        with self._cond:
            self._ready.append((chunk, data))
            self._fed += 1
            self._cond.notify()

    def abandon(self) -> None:
        """The run stopped reading: a task still waiting for a chunk stops too."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    # --- the task's side
    def take(self, stop: threading.Event) -> tuple[Chunk, bytes | bytearray] | None:
        """The next part to send; None once every part was handed out (or a sibling failed)."""
        deadline = time.monotonic() + FEED_WAIT_S
        with self._cond:
            while True:
                if stop.is_set():
                    return None
                if self._abandoned:  # the run is failing: what is left stays for a later run
                    raise StorageError("the run stopped reading before this window was sent")
                if self._ready:
                    return self._ready.popleft()
                if self._fed >= self._expected:
                    return None
                if time.monotonic() >= deadline:
                    raise TransientStorageError(
                        f"no chunk reached this window in {FEED_WAIT_S:.0f} s"
                    )
                self._cond.wait(_POLL_S)

    def give_back(self, chunk: Chunk, data: bytes | bytearray) -> None:
        """A part whose PUT failed: first in line for the next attempt."""
        with self._cond:
            self._ready.appendleft((chunk, data))
            self._cond.notify()

    def acknowledged(self, sent: PartSent, data: bytes | bytearray) -> None:
        with self._cond:
            self.sent.append(sent)
        self._on_sent(sent, data)


def _first_error(errors: list[BaseException]) -> BaseException:
    # A terminal error among them decides: the task must not retry what cannot succeed.
    return next((e for e in errors if not is_retryable(e)), errors[0])


@task(
    name="upload-window",
    # The cache key is what the window *is* (session = source version x store x chunk size,
    # the multipart upload, the window's place and part range in the plan), never the bytes.
    # Keyed by a path rather than by task source, a code fix does not re-send finished windows,
    # and `cleanup` can delete a finished session's records by prefix. The pipeline refreshes
    # the record of any window with a part the store lacks, so a hit only ever skips a window
    # whose every part is confirmed (ListParts + ledger).
    result_storage_key=CHUNK_RESULTS_PREFIX
    + "/{parameters[session_id]}/{parameters[upload_id]}-w{parameters[window_index]}"
    + "-{parameters[first_part]}-{parameters[last_part]}.json",
    persist_result=True,
    retries=4,
    retry_delay_seconds=exponential_backoff(1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def upload_window(
    session_id: str,
    upload_id: str,
    key: str,
    window_index: int,
    first_part: int,
    last_part: int,
    feed: WindowFeed,
    rt: Runtime,
    put_slots: threading.Semaphore | None = None,
    put_pool: Executor | None = None,
) -> dict[str, Any]:
    """Send the window's parts the store lacks as the reader feeds them; each part's ledger row
    is written once the store acknowledged it.

    ``put_pool`` is the run's PUT threads (``concurrency + 1``, shared by every window, so a
    part is hashed and waiting at ``put_slots`` when a PUT ends, and no window starts threads
    of its own); without one, parts are sent one by one on this thread. A failed PUT stops this
    attempt from taking more parts; its PUTs on the wire end first, then the error is raised
    (a retry resumes with the parts that have no receipt).
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def send(chunk: Chunk, data: bytes | bytearray) -> None:
        try:
            sent = send_part(rt, session_id, upload_id, key, chunk, data, put_slots)
        except BaseException as exc:
            feed.give_back(chunk, data)
            errors.append(exc)
            stop.set()
            return
        feed.acknowledged(sent, data)

    pending: list[Future[None]] = []
    try:
        while (item := feed.take(stop)) is not None:
            chunk, data = item
            if put_pool is None:
                send(chunk, data)
                continue
            pending = [f for f in pending if not f.done()]
            pending.append(put_pool.submit(contextvars.copy_context().run, send, chunk, data))
    except BaseException as exc:  # the feed was abandoned or ran dry
        errors.append(exc)
    finally:
        wait_futures(pending)
    if errors:
        raise _first_error(errors)
    return {
        "window": window_index,
        "first_part": first_part,
        "last_part": last_part,
        "parts_sent": len(feed.sent),
        "bytes_sent": sum(s.size for s in feed.sent),
    }


def give_up_upload(state: SessionState, exc: Exception, rt: Runtime) -> None:
    """A failed staging run's last word on its upload: keep it for a later run, or abort it.

    Kept: retryable errors; an unexpected (non-reelflow) error once parts are stored; anything
    when this run no longer holds the lease (the upload is the new holder's). Aborted: terminal
    errors, and unexpected ones while nothing is stored yet (nothing worth resuming). Not a task:
    it runs in the flow's ``except`` for a failure a task already reported, and a kill during it
    leaves the upload resumable (the cleanup deployment removes what nobody comes back for).
    """
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    fence = rt.catalog.fence
    if isinstance(exc, LeaseLostError) or (fence is not None and fence.lost):
        log.warning("upload_left_to_lease_holder", error=str(exc))
        return
    if isinstance(exc, ReelflowError) and exc.retryable:
        rt.catalog.update_session(state.session_id, error=str(exc)[:500])
        log.warning("upload_kept_for_resume", error=str(exc))
        return
    if not isinstance(exc, ReelflowError) and rt.catalog.ledger_parts(state.upload_id):
        rt.catalog.update_session(state.session_id, error=f"{type(exc).__name__}: {exc}"[:500])
        log.warning("upload_kept_for_resume", error=str(exc), error_type=type(exc).__name__)
        return
    try:
        rt.catalog.verify_fence()  # abort only what this run still holds
    except LeaseLostError:
        log.warning("upload_left_to_lease_holder", error=str(exc))
        return
    rt.store.abort_upload(state.staging_key, state.upload_id)
    if rt.store.exists(state.staging_key):
        rt.store.delete(state.staging_key)
    rt.catalog.forget_parts(state.upload_id)
    rt.catalog.update_session(state.session_id, status="aborted", error=str(exc)[:500])
    log.error("upload_aborted", error=str(exc))
