"""Step 2, chunk-upload: the tasks that stage a source as a resumable multipart upload.

* ``open_upload_session`` finds or starts the session for (source fingerprint, store, chunk
  size), then reconciles the ledger with the store's own list of parts (ListParts).
* ``upload_chunk`` is one Prefect task per part: retried with backoff + jitter on retryable
  errors, its result kept under (session, upload id, part number) so a re-run of the flow
  finds finished parts ``Cached``; the ledger row is written after the store acknowledged the part. It gets the
  chunk as a :class:`ChunkBytes` reference and the run's UploadPart slots from its caller.
* ``give_up_upload``: keep a failed run's upload for a later run, or abort it.

Must not: submit tasks or wait for them: reading the source and driving ``upload_chunk`` runs is
the flow layer's (``flows/chunk_pipeline.py``). Arguments are checked (:func:`check_upload_args`)
before a session or an upload exists, so a bad chunk size or concurrency leaves nothing behind.
The run's catalog carries its lease's fence: a run that lost its lease sends no further part, and
its ledger writes are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import LeaseLostError, ReelflowError, UploadNotFoundError, retry_if_retryable
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


class ChunkBytes:
    """A reference to one chunk's bytes, in a buffer of this process, handed to ``upload_chunk``.

    A task's parameters are what Prefect may hash into a cache key, resolve, or serialize; the
    chunk itself must be none of these (hashing it would double its memory, and the buffer is
    reused for a later chunk once the task ends). This handle is opaque to Prefect's traversal
    (not a dataclass or a collection) and refuses to be pickled, so its bytes never leave this
    process or enter a key: the key is what the part *is* (see ``upload_chunk``).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"ChunkBytes({len(self.data)} bytes)"

    def __reduce__(self) -> Any:
        raise TypeError("ChunkBytes refers to a buffer of this process; it is never serialized")


@task(
    name="upload-chunk",
    # The cache key is what the part *is* (session = source version × store × chunk size, the
    # multipart upload, the part number), never the bytes: hashing a chunk for the key would
    # double its memory. Keyed by a path rather than by task source, a code fix does not re-send
    # finished parts, and `cleanup` can delete a finished session's records by prefix.
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
    chunk: ChunkBytes,
    rt: Runtime,
    put_slots: threading.Semaphore | None = None,
) -> dict[str, Any]:
    """Send one part and record it in the ledger once the store acknowledged it.

    ``put_slots`` is the run's bound on UploadPart requests on the wire (the chunk pipeline
    owns it); a task run on its own has none.
    """
    data = chunk.data
    # Hashed here, in parallel across parts; the whole-file hash has a thread of its own.
    sha256_b64 = b64(hashlib.sha256(data).digest())
    rt.catalog.check_fence()
    with put_slots or contextlib.nullcontext():
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
