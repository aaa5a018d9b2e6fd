"""The chunk pipeline: read a source once and drive one ``upload-window`` task run per window.

``send_source`` reads the source front to back (through the run's sources edge), hashing the
whole file from the same bytes, and hands every chunk the store does not hold yet to its
window's task run (``reelflow.windows``: consecutive parts of the plan, up to
``REELFLOW_TASK_WINDOW_BYTES``). At most ``concurrency`` parts are on the wire across all
windows (a semaphore around UploadPart, as ``concurrency`` means for boto3; this call owns it
and hands it to each task run), and the next window's task run is submitted when the reader
enters a window, so a Prefect task's start and finish (~20 ms measured, in which it sends
nothing) do not leave a slot idle. Chunks are read into ``concurrency + 1`` reused buffers
whatever the window's size: the reader reads the next chunk only once a PUT gave one back. A
thread of its own keeps the whole-file SHA-256.

Orchestration only: ordering, bounding and collecting task runs. Sending a part and writing its
ledger row is the task's (``tasks/chunk_upload.py``); reading is the sources edge's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from reelflow.digests import WholeDigest
from reelflow.errors import TransientStorageError
from reelflow.logging import get_logger
from reelflow.sources import BufferPool, SourceRef
from reelflow.windows import Window, plan_windows
from storage.runtime import Runtime
from tasks.chunk_upload import (
    PartSent,
    SessionState,
    WindowFeed,
    check_upload_args,
    upload_window,
)

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


class _Held:
    """Chunks read and not yet given back (sent, or already in the store): the reader's bound.

    Windows give buffers back from their PUT threads; the reader waits here before each read
    (bounded: a held buffer belongs to a PUT, and each PUT is bounded by the store client's
    timeouts and its task's retries), checking the windows' futures so a failed window stops it.
    """

    def __init__(self, buffers: BufferPool) -> None:
        self.buffers = buffers
        self.count = 0
        self.cond = threading.Condition()

    def hold(self) -> None:
        with self.cond:
            self.count += 1

    def give(self, buffer: bytes | bytearray) -> None:
        with self.cond:
            self.buffers.give(buffer)
            self.count -= 1
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_at_most(self, limit: int, check: Callable[[], None]) -> None:
        deadline = time.monotonic() + INFLIGHT_DRAIN_S
        while True:
            check()  # outside the lock: PUT threads give buffers back meanwhile
            with self.cond:
                if self.count <= limit:
                    return
                if time.monotonic() >= deadline:
                    raise TransientStorageError(
                        f"no part was acknowledged in {INFLIGHT_DRAIN_S:.0f} s"
                    )
                self.cond.wait(0.2)


def send_source(
    source: SourceRef,
    state: SessionState,
    rt: Runtime,
    *,
    concurrency: int,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    window_bytes: int | None = None,
) -> SendResult:
    """Read the source once; send what the store lacks; return whole-file and per-part hashes.

    Parts the store already holds are not sent again; their checksum is the store's own (when it
    reports one). They are not re-verified against the source here: the whole-file SHA-256 of
    this read is checked against the stored object at the end, which covers them. A window
    whose every part is stored is still submitted, with nothing to send: a re-run shows it
    ``Cached``. ``window_bytes`` defaults to the run's ``task_window_bytes`` setting.
    """
    check_upload_args(
        state.plan.chunk_size, concurrency, memory_budget_bytes=rt.settings.memory_budget_bytes
    )
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    windows = plan_windows(
        state.plan, window_bytes if window_bytes is not None else rt.settings.task_window_bytes
    )
    # This call's UploadPart slots: every window of this upload waits on the same semaphore.
    put_slots = threading.BoundedSemaphore(concurrency)
    whole = WholeDigest()
    digests: dict[int, str] = {}
    hashed_of: dict[int, Future[None]] = {}  # a part's whole-file hash step, until it is sent
    # concurrency + 1 chunks are held at most, whatever the window: the next chunk is read
    # once a PUT (of any window) gave its buffer back.
    held = _Held(BufferPool(state.plan.chunk_size, concurrency + 1))
    counts = {"done": 0, "uploaded": 0, "bytes": 0, "already": 0}
    lock = threading.Lock()
    total = state.plan.count
    # Only a window with nothing to send may be answered from its cache record.
    refreshing = upload_window.with_options(refresh_cache=True)
    feeds: list[WindowFeed] = []
    running: list[Any] = []  # window futures not yet collected, in window order

    def part_done(part_number: int, sha256_b64: str | None, sent_bytes: int | None) -> None:
        with lock:
            if sha256_b64:
                digests[part_number] = sha256_b64
            if sent_bytes is None:
                counts["already"] += 1
            else:
                counts["uploaded"] += 1
                counts["bytes"] += sent_bytes
            counts["done"] += 1
            on_progress(counts["done"], total)  # per part, from whichever thread it ended on

    def on_sent(sent: PartSent, data: bytes | bytearray) -> None:
        with lock:
            hashed = hashed_of.pop(sent.part_number)
        hashed.result()  # the whole-file hash is past this buffer (it nearly always is)
        held.give(data)  # nothing reads this buffer any more
        part_done(sent.part_number, sent.sha256_b64, sent.size)

    def submit(window: Window) -> None:
        missing = sum(1 for c in window.chunks if c.part_number not in state.confirmed)
        feed = WindowFeed(missing, on_sent)
        runner = refreshing if missing else upload_window
        future: Any = runner.submit(
            state.session_id,
            state.upload_id,
            state.staging_key,
            window.index,
            window.first_part,
            window.last_part,
            feed,
            rt,
            put_slots,
            put_pool,
        )
        future.wrapped_future.add_done_callback(lambda _: held.wake())
        feeds.append(feed)
        running.append(future)

    def collect(block: bool = False) -> None:
        # Re-raises a window's final error (after its retries) in the reader's thread, also
        # when a later window failed first. ``result`` of an ended future reads the state it
        # ended in (no API call, unlike ``state`` before ``wait``).
        while running and (block or running[0].wrapped_future.done()):
            running[0].result()
            running.pop(0)
        for fut in running:
            if fut.wrapped_future.done():
                fut.result()

    # The whole-file SHA-256 runs on its own thread, in read order, beside the uploads: on the
    # reading thread it cost as much as the reads themselves (measured) and held back each part.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reelflow-sha256")
    # The run's PUT threads, shared by its windows: one more than the slots, so a part is
    # hashed and waiting when a PUT ends; reused threads, whatever the number of windows.
    put_pool = ThreadPoolExecutor(concurrency + 1, thread_name_prefix="reelflow-put")
    window_of = {c.part_number: w.index for w in windows for c in w.chunks}
    try:
        reader = iter(rt.sources.iter_chunks(source, state.plan.chunks, held.buffers))
        while True:
            held.wait_at_most(concurrency, collect)  # a buffer is free for the next read
            item = next(reader, None)
            if item is None:
                break
            chunk, data = item
            rt.catalog.check_fence()  # lost the lease: send nothing more
            held.hold()
            hashed = hasher.submit(whole.update, data)
            index = window_of[chunk.part_number]
            # This window and the next are submitted: the next one starts while this one sends.
            while len(feeds) <= min(index + 1, len(windows) - 1):
                submit(windows[len(feeds)])
            stored = state.confirmed.get(chunk.part_number)
            if stored is not None:
                hashed.result()
                held.give(data)
                part_done(chunk.part_number, stored.sha256_b64, None)
                continue
            with lock:
                hashed_of[chunk.part_number] = hashed
            feeds[index].put(chunk, data)
            del data
        while len(feeds) < len(windows):  # only when the plan has no chunk to read
            submit(windows[len(feeds)])
        collect(block=True)
    except BaseException:
        # Whatever stops this run (a lost lease, a failed part, a bug), no part it started may
        # still be writing once it has failed: stop the windows and wait for the PUTs on the wire.
        for feed in feeds:
            feed.abandon()
        wait_futures([f.wrapped_future for f in running], timeout=INFLIGHT_DRAIN_S)
        raise
    finally:
        put_pool.shutdown(wait=True)
        hasher.shutdown(wait=True)
    sha = whole.sha256_hex
    log.info(
        "source_sent",
        sha256=sha,
        parts_total=total,
        parts_uploaded=counts["uploaded"],
        parts_already_stored=counts["already"],
        bytes_uploaded=counts["bytes"],
        windows=len(windows),
    )
    return SendResult(
        sha,
        digests,
        counts["uploaded"],
        counts["bytes"],
        counts["already"],
        whole.crc64nvme_b64,
    )
