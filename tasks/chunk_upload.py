"""Step 2, chunk-upload: stage the source in the store as a resumable multipart upload.

* ``open_upload_session`` finds or starts the session for (source fingerprint, store, chunk
  size), then reconciles the ledger with the store's own list of parts (ListParts).
* ``send_source`` reads the source once, front to back, hashing the whole file from the same
  bytes, and submits ``upload_chunk`` for every chunk the store does not hold yet. At most
  ``concurrency`` parts are on the wire (a semaphore around UploadPart, as ``concurrency`` means
  for boto3), and one more task is in flight, so a Prefect task's start and finish (~20 ms
  measured, in which it sends nothing) do not leave a slot idle. Chunks are read into
  ``concurrency + 1`` reused buffers; a thread of its own keeps the whole-file SHA-256.
* ``upload_chunk`` is one Prefect task per part: retried with backoff + jitter on retryable
  errors, cached by (upload id, part, range, checksum) so a re-run of the flow finds finished
  parts ``Cached``; the ledger row is written after the store acknowledged the part.

Arguments are checked (:func:`check_upload_args`) before a session or an upload exists, so a
bad chunk size or concurrency leaves nothing behind. The run's catalog carries its lease's
fence: a run that lost its lease sends no further part, and its ledger writes are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import UploadNotFound, retry_if_retryable
from reelflow.ingest_options import check_chunk_size, check_concurrency, check_memory_budget
from reelflow.logging import get_logger
from reelflow.planning import (
    Chunk,
    ChunkPlan,
    b64,
    plan_chunks,
    reconcile_parts,
    session_id_for,
    staging_key,
)
from reelflow.rules import VideoMeta
from reelflow.sources import BufferPool, SourceRef
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


@dataclass(frozen=True)
class SendResult:
    sha256_hex: str
    part_digests_b64: dict[int, str]
    chunks_uploaded: int
    bytes_uploaded: int
    chunks_already_stored: int


# A run that lost its lease leaves at most ``concurrency`` PUTs in flight; waiting for them
# (each bounded by the store client's own timeouts) keeps the failed run from writing later.
INFLIGHT_DRAIN_S = 300.0


def check_upload_args(
    chunk_size: object, concurrency: object, *, memory_budget_bytes: int | None = None
) -> None:
    """Refuse a chunk size or concurrency no upload can use, by the one set of rules every
    caller uses (``reelflow.ingest_options``); ``concurrency`` None means "not known here"
    (checked again by ``send_source``)."""
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
                staging_key=staging_key(sid, meta.container),
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
    except UploadNotFound:
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

# upload id -> the run's UploadPart slots (send_source sets it; a task run alone has none).
_PUT_SLOTS: dict[str, threading.Semaphore] = {}


@task(
    name="upload-chunk",
    # The cache key is what the part *is* (session = source version × store × chunk size, the
    # multipart upload, the part number), never the bytes: hashing a chunk for the key would
    # double its memory (reference/prefect-notes.md §1). Keyed by a path rather than by task
    # source, a code fix does not re-send finished parts, and `cleanup` can delete a finished
    # session's records by prefix.
    result_storage_key=CHUNK_RESULTS_PREFIX
    + "/{parameters[session_id]}/{parameters[upload_id]}-{parameters[part_number]}.json",
    persist_result=True,
    retries=4,
    retry_delay_seconds=exponential_backoff(1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def upload_chunk(
    session_id: str,
    upload_id: str,
    key: str,
    part_number: int,
    offset: int,
    length: int,
    data: bytes | bytearray,
    rt: Runtime,
) -> dict[str, Any]:
    # Hashed here, in parallel across parts; the whole-file hash has a thread of its own.
    sha256_b64 = b64(hashlib.sha256(data).digest())
    rt.catalog.check_fence()
    with _PUT_SLOTS.get(upload_id) or contextlib.nullcontext():
        rt.catalog.check_fence()  # the lease may have gone while this part waited for a slot
        receipt = rt.store.upload_part(
            key, upload_id, Chunk(part_number, offset, length), data, sha256_b64
        )
    rt.catalog.record_part(session_id, upload_id, offset, receipt)
    get_logger(session_id=session_id, upload_id=upload_id).debug(
        "chunk_uploaded", part_number=part_number, size=length
    )
    return {
        "part_number": part_number,
        "size": receipt.size,
        "etag": receipt.etag,
        "sha256_b64": sha256_b64,
    }


def send_source(
    source: SourceRef,
    state: SessionState,
    rt: Runtime,
    *,
    concurrency: int,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> SendResult:
    """Read the source once; send what the store lacks; return whole-file and per-part hashes.

    Parts the store already holds are not sent again; their checksum is the store's own (when it
    reports one). They are not re-verified against the source here: the whole-file SHA-256 of
    this read is checked against the stored object at the end, which covers them.
    """
    check_upload_args(
        state.plan.chunk_size, concurrency, memory_budget_bytes=rt.settings.memory_budget_bytes
    )
    _PUT_SLOTS[state.upload_id] = threading.BoundedSemaphore(concurrency)
    try:
        return _send(source, state, rt, concurrency=concurrency, on_progress=on_progress)
    finally:
        _PUT_SLOTS.pop(state.upload_id, None)


def _send(
    source: SourceRef,
    state: SessionState,
    rt: Runtime,
    *,
    concurrency: int,
    on_progress: Callable[[int, int], None],
) -> SendResult:
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    whole = hashlib.sha256()
    digests: dict[int, str] = {}
    # (task future, its chunk buffer, the whole-file hash's future for that buffer)
    inflight: list[tuple[Any, bytes | bytearray, Future[None]]] = []
    # concurrency + 1 tasks hold one buffer each; the next chunk is read once one of them ends.
    buffers = BufferPool(state.plan.chunk_size, concurrency + 1)
    done = uploaded = bytes_uploaded = already = 0
    total = state.plan.count

    def drain(limit: int) -> None:
        nonlocal done, uploaded, bytes_uploaded
        while len(inflight) > limit:
            finished, _ = wait_futures(
                [f.wrapped_future for f, _, _ in inflight], return_when=FIRST_COMPLETED
            )
            for item in [x for x in inflight if x[0].wrapped_future in finished]:
                inflight.remove(item)
                fut, buffer, hashed = item
                hashed.result()  # the whole-file hash is past it (it nearly always is)
                buffers.give(buffer)  # nothing reads this buffer any more
                result = fut.result()  # re-raises the task's final error (after its retries)
                digests[result["part_number"]] = result["sha256_b64"]
                if fut.state.name != "Cached":
                    uploaded += 1
                    bytes_uploaded += result["size"]
                done += 1
                on_progress(done, total)

    # The whole-file SHA-256 runs on its own thread, in read order, beside the uploads: on the
    # reading thread it cost as much as the reads themselves (measured) and held back each part.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reelflow-sha256")
    try:
        for chunk, data in rt.sources.iter_chunks(source, state.plan.chunks, buffers):
            rt.catalog.check_fence()  # lost the lease: send nothing more
            hashed = hasher.submit(whole.update, data)
            stored = state.confirmed.get(chunk.part_number)
            if stored is not None:
                hashed.result()
                buffers.give(data)
                if stored.sha256_b64:
                    digests[chunk.part_number] = stored.sha256_b64
                already += 1
                done += 1
                on_progress(done, total)
                continue
            runner = upload_chunk
            if chunk.part_number in state.forgotten:
                # The ledger (and so the cache) believed in a part the store does not hold.
                runner = upload_chunk.with_options(refresh_cache=True)
            future = runner.submit(
                state.session_id,
                state.upload_id,
                state.staging_key,
                chunk.part_number,
                chunk.offset,
                chunk.length,
                data,
                rt,
            )
            inflight.append((future, data, hashed))
            del data
            # ``concurrency`` tasks sending and one starting or finishing; the next chunk is
            # read when one of them ends (so at most ``concurrency + 1`` chunks are held).
            drain(concurrency)
        drain(0)
    except BaseException:
        # Whatever stops this run (a lost lease, a failed part, a bug), no part it started may
        # still be writing once it has failed: wait for the PUTs on the wire.
        wait_futures([f.wrapped_future for f, _, _ in inflight], timeout=INFLIGHT_DRAIN_S)
        raise
    finally:
        hasher.shutdown(wait=True)
    sha = whole.hexdigest()
    log.info(
        "source_sent",
        sha256=sha,
        parts_total=total,
        parts_uploaded=uploaded,
        parts_already_stored=already,
        bytes_uploaded=bytes_uploaded,
    )
    return SendResult(sha, digests, uploaded, bytes_uploaded, already)
