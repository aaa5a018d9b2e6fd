"""The chunk pipeline: read a source once and drive one ``upload-chunk`` task run per missing part.

``send_source`` reads the source front to back (through the run's sources edge), hashing the
whole file from the same bytes, and submits ``upload_chunk`` for every chunk the store does not
hold yet. At most ``concurrency`` parts are on the wire (a semaphore around UploadPart, as
``concurrency`` means for boto3; this call owns it and hands it to each task run), and one more
task is in flight, so a Prefect task's start and finish (~20 ms measured, in which it sends
nothing) do not leave a slot idle. Chunks are read into ``concurrency + 1`` reused buffers and
handed to the tasks as :class:`~tasks.chunk_upload.ChunkBytes` references; a thread of its own
keeps the whole-file SHA-256.

Orchestration only: ordering, bounding and collecting task runs. Sending a part and writing its
ledger row is the task's (``tasks/chunk_upload.py``); reading is the sources edge's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from reelflow.digests import WholeDigest
from reelflow.logging import get_logger
from reelflow.sources import BufferPool, SourceRef
from storage.runtime import Runtime
from tasks.chunk_upload import ChunkBytes, SessionState, check_upload_args, upload_chunk

# A run that lost its lease leaves at most ``concurrency`` PUTs in flight; waiting for them
# (each bounded by the store client's own timeouts) keeps the failed run from writing later.
INFLIGHT_DRAIN_S = 300.0


@dataclass(frozen=True)
class SendResult:
    sha256_hex: str
    part_digests_b64: dict[int, str]
    chunks_uploaded: int
    bytes_uploaded: int
    chunks_already_stored: int
    # The whole file's CRC64NVME, from the same read as the SHA-256: S3 checks it at completion.
    crc64nvme_b64: str | None = None


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
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    # This call's UploadPart slots: every part task of this upload waits on the same semaphore.
    put_slots = threading.BoundedSemaphore(concurrency)
    whole = WholeDigest()
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
                ChunkBytes(data),
                rt,
                put_slots,
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
    sha = whole.sha256_hex
    log.info(
        "source_sent",
        sha256=sha,
        parts_total=total,
        parts_uploaded=uploaded,
        parts_already_stored=already,
        bytes_uploaded=bytes_uploaded,
    )
    return SendResult(sha, digests, uploaded, bytes_uploaded, already, whole.crc64nvme_b64)
