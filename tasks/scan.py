"""Step 4a, scan: stream the assembled object through ClamAV's daemon before it is stored.

The bytes scanned are the bytes stored: the object is read back from the store (local file or
S3 ranged GETs) in fixed blocks, hashed on the way, and that hash must equal the SHA-256 the
assemble step verified. A signature found is :class:`~reelflow.errors.InfectedError` (terminal: the
flow aborts the staged upload, nothing is stored); clamd unreachable is retryable.
``REELFLOW_CLAMD_URL`` unset means scanning is off and the flow does not call this task.

Must not: speak clamd's protocol (reelflow.clamd does) or delete anything (the flow decides).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.clamd import ClamdClient, check_scannable
from reelflow.errors import (
    InfectedError,
    IntegrityCheckError,
    ScannerUnavailableError,
    retry_if_retryable,
)
from reelflow.logging import get_logger
from reelflow.planning import video_key
from reelflow.rules import VideoMeta
from storage.base import ObjectStore
from storage.runtime import Runtime

# One block in memory at a time, whatever the object's size.
SCAN_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ScanReport:
    """What the summary says: ``verdict`` "clean" (with clamd's version) or "off"."""

    verdict: str
    engine: str | None = None
    bytes_scanned: int = 0


SCAN_OFF = ScanReport("off")


def read_blocks(
    store: ObjectStore, key: str, size_bytes: int, block_bytes: int = SCAN_BLOCK_BYTES
) -> Iterator[bytes]:
    """The object front to back in ``block_bytes`` ranges (constant memory)."""
    offset = 0
    while offset < size_bytes:
        block = store.read_range(key, offset, min(block_bytes, size_bytes - offset))
        if not block:
            raise IntegrityCheckError(
                f"{key} ended at {offset} bytes while scanning; expected {size_bytes}"
            )
        offset += len(block)
        yield block


def _hashing(blocks: Iterator[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    for block in blocks:
        digest.update(block)
        yield block


# NO_CACHE on purpose: a verdict holds only for the signatures clamd has loaded now, and it must
# be about the bytes about to be stored; a resumed run scans again (one read of the object).
@task(
    name="scan-video",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def scan_video(staged_key: str, sha256_hex: str, meta: VideoMeta, rt: Runtime) -> ScanReport:
    url = rt.settings.clamd_url
    if not url:
        return SCAN_OFF
    log = get_logger(sha256=sha256_hex)
    # A resumed run may find the video already moved to its content key (as the thumbnail does).
    final_key = video_key(sha256_hex, meta.container)
    key = final_key if rt.store.exists(final_key) else staged_key
    size = rt.store.size(key)
    if size is None:
        raise IntegrityCheckError(f"{key} vanished before it was scanned")
    check_scannable(size)
    client = ClamdClient(url, timeout_s=rt.settings.clamd_timeout_s)
    engine = client.version()
    digest = hashlib.sha256()
    result = client.scan(_hashing(read_blocks(rt.store, key, size), digest))
    if result.signature:
        log.error("malware_found", signature=result.signature, key=key, engine=engine)
        raise InfectedError(
            f"ClamAV found {result.signature} in the video; it was not stored",
            signature=result.signature,
        )
    if result.bytes_scanned != size:
        raise ScannerUnavailableError(
            f"clamd answered after {result.bytes_scanned} of {size} bytes; no verdict"
        )
    if digest.hexdigest() != sha256_hex:
        raise IntegrityCheckError(f"the scanned bytes of {key} do not hash to {sha256_hex}")
    log.info("video_scanned", verdict="clean", engine=engine, size=size)
    return ScanReport("clean", engine, size)
