"""Assemble a received tus upload where its bytes already are: no byte is uploaded a second time.

The gateway streamed the upload into a staged multipart upload (``storage.tus_writer``), part by
part, each part's SHA-256 in the same ledger chunk-upload uses. Here the store's own list of parts
(``ListParts``) is checked against the upload's plan (its length cut in its part size; a
concatenation's final: the parts its ledger lists, copied from its partials) and the
ledger (count, sizes, per-part SHA-256, ETags); only then is the upload completed (S3
CompleteMultipartUpload; local fsync + rename). The store's composite checksum, when it reports
one, must equal the ledger's; then the assembled object is read **once** for its whole-file
SHA-256, the identity the media is stored under. A mismatch deletes the assembled object.

Idempotent: a session already ``assembled`` returns its SHA-256; a run killed between the
completion and the ledger write finds the multipart upload gone and the object whole, and hashes it.

Must not: change the ``gateway_upload`` row (the flow does), or decide what a failure deletes.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import IntegrityCheckError, UploadNotFoundError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.planning import Chunk, ChunkPlan, check_parts_against_plan, composite_sha256
from storage import gateway_uploads
from storage.runtime import Runtime


@dataclass(frozen=True)
class Assembled:
    """The assembled object of one received upload."""

    staging_key: str
    sha256_hex: str
    size_bytes: int
    parts: int


def received_plan(length: int, part_size: int) -> ChunkPlan:
    """The parts the gateway wrote: ``part_size`` each, the last one shorter; a 0-byte upload is
    one empty part (S3 needs at least one). Exactly the writer's cut, never re-planned."""
    if part_size <= 0:
        raise IntegrityCheckError(f"upload part size {part_size} is not positive")
    chunks = tuple(
        Chunk(part_number=i + 1, offset=off, length=min(part_size, length - off))
        for i, off in enumerate(range(0, length, part_size))
    ) or (Chunk(1, 0, 0),)
    return ChunkPlan(size_bytes=length, chunk_size=part_size, chunks=chunks)


def final_plan(length: int, part_size: int, sizes: Mapping[int, int]) -> ChunkPlan:
    """A concatenation's final has the parts its partials' layout gave it (copied ranges, of
    varying sizes; ``storage.tus_concat``): the plan is its ledger's, which must number its
    parts 1..n and add up to ``length``."""
    chunks, offset = [], 0
    for n in range(1, len(sizes) + 1):
        if n not in sizes:
            raise IntegrityCheckError(f"the final's ledger has no part {n} of {len(sizes)}")
        chunks.append(Chunk(part_number=n, offset=offset, length=sizes[n]))
        offset += sizes[n]
    if offset != length or not chunks:
        raise IntegrityCheckError(f"the final's ledger holds {offset} bytes of {length}")
    return ChunkPlan(size_bytes=length, chunk_size=part_size, chunks=tuple(chunks))


def _hash_whole(rt: Runtime, key: str, size_bytes: int) -> str:
    stored = rt.store.size(key)
    if stored != size_bytes:
        raise IntegrityCheckError(f"assembled object has {stored} bytes, expected {size_bytes}")
    return rt.store.sha256_hex(key)  # the one read of the bytes this step makes


# NO_CACHE on purpose: idempotence comes from the ledger session, which this step moves to
# "assembled" (with the SHA-256) once the object is whole.
@task(
    name="assemble-received",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def assemble_received(upload: str, rt: Runtime) -> Assembled:
    """Complete the staged multipart upload of gateway upload ``upload``; its SHA-256."""
    row = gateway_uploads.get(rt.catalog.engine, upload)
    if row is None or row.length is None or not row.upload_id or not row.session_id:
        raise IntegrityCheckError(
            f"gateway upload {upload} has no complete staged upload to assemble"
        )
    key, length = row.staging_key, row.length
    ledger = rt.catalog.ledger_parts(row.upload_id)
    if row.kind == "final":
        plan = final_plan(length, row.part_size, {n: p.size for n, p in ledger.items()})
    else:
        plan = received_plan(length, row.part_size)
    log = get_logger(upload=upload, session_id=row.session_id)
    session = rt.catalog.get_session(row.session_id)
    if session is not None and session.status in ("assembled", "completed") and session.sha256:
        return Assembled(key, session.sha256, length, plan.count)
    try:
        remote = rt.store.list_parts(key, row.upload_id)
    except UploadNotFoundError:
        # Completed by a run killed before it wrote "assembled" (or aborted: then no object).
        if rt.store.size(key) != length:
            raise IntegrityCheckError(
                f"the staged upload of {upload} vanished before assembly"
            ) from None
        rt.catalog.verify_fence()
        sha256_hex = _hash_whole(rt, key, length)
        rt.catalog.update_session(row.session_id, status="assembled", sha256=sha256_hex)
        log.info("received_upload_adopted", sha256=sha256_hex)
        return Assembled(key, sha256_hex, length, plan.count)
    digests = {n: p.sha256_b64 for n, p in ledger.items() if p.sha256_b64}
    problems = check_parts_against_plan(plan, remote, digests, ledger)
    problems += [
        f"part {c.part_number}: no SHA-256 in the ledger"
        for c in plan.chunks
        if c.part_number in ledger and c.part_number not in digests
    ]
    if problems:
        raise IntegrityCheckError("parts do not match the upload: " + "; ".join(problems[:5]))
    rt.catalog.verify_fence()
    # The store's ETags with the ledger's SHA-256s (some servers' ListParts omit checksums).
    parts = [
        dataclasses.replace(remote[c.part_number], sha256_b64=digests[c.part_number])
        for c in plan.chunks
    ]
    reported = rt.store.complete_upload(key, row.upload_id, parts)
    expected = composite_sha256([base64.b64decode(digests[c.part_number]) for c in plan.chunks])
    try:
        if reported and reported.split("-")[0] != expected.split("-")[0]:
            raise IntegrityCheckError(f"store composite checksum {reported} != ledger's {expected}")
        sha256_hex = _hash_whole(rt, key, length)
    except IntegrityCheckError:
        rt.store.delete(key)  # nothing half-verified may stay around
        raise
    rt.catalog.update_session(row.session_id, status="assembled", sha256=sha256_hex)
    log.info("received_upload_assembled", sha256=sha256_hex, parts=plan.count, composite=expected)
    return Assembled(key, sha256_hex, length, plan.count)
