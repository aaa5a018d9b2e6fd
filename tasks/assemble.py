"""Step 3, assemble: complete the staged upload only when every part matches the plan.

The store's own list of parts is checked against the plan (count, sizes, the SHA-256 of each
chunk as read from the source in this run); only then is the upload completed (S3
CompleteMultipartUpload; local fsync + atomic rename). The whole file is then verified: for an
upload at its final video key on S3, by the store itself against the whole-file CRC64NVME read
from the source (storage/s3.py: the Complete carries it and HeadObject must report it); for a
staged upload, the store's composite checksum when it reports one; and a read-back SHA-256 of
the assembled object when ``REELFLOW_VERIFY_READBACK`` asks for it (the default for the local
store). A mismatch deletes the object: nothing is published.

Completion is fenced: a run whose lease token is stale (another run took the source over) is
refused with ``LeaseLostError`` before it completes anything, and its "assembled" write too.
"""

from __future__ import annotations

import base64

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import IntegrityCheckError, UploadNotFoundError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.planning import check_parts_against_plan, composite_sha256
from storage.runtime import Runtime
from tasks.chunk_upload import SessionState


def _verify_whole(rt: Runtime, key: str, sha256_hex: str, size_bytes: int) -> None:
    stored_size = rt.store.size(key)
    if stored_size != size_bytes:
        raise IntegrityCheckError(
            f"assembled object has {stored_size} bytes, expected {size_bytes}"
        )
    if rt.settings.verify_readback_for(rt.store.url):
        actual = rt.store.sha256_hex(key)
        if actual != sha256_hex:
            raise IntegrityCheckError(
                f"assembled object sha256 {actual} != source sha256 {sha256_hex}"
            )


# NO_CACHE on purpose: idempotence comes from the session status in the catalog, which a
# completed upload moves to "assembled" in the same step.
@task(
    name="assemble-upload",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def assemble_upload(
    state: SessionState,
    sha256_hex: str,
    part_digests_b64: dict[int, str],
    rt: Runtime,
    crc64nvme_b64: str | None = None,
) -> str:
    """Returns the key of the verified, assembled object (its final key for a session opened
    at one). ``crc64nvme_b64``: the whole file's, from the same read as ``sha256_hex``."""
    log = get_logger(session_id=state.session_id, upload_id=state.upload_id)
    row = rt.catalog.get_session(state.session_id)
    if row is not None and row.status in ("assembled", "completed"):
        return state.staging_key
    try:
        remote = rt.store.list_parts(state.staging_key, state.upload_id)
    except UploadNotFoundError as exc:
        raise IntegrityCheckError("the staged upload vanished before assembly") from exc
    ledger = rt.catalog.ledger_parts(state.upload_id)
    problems = check_parts_against_plan(state.plan, remote, part_digests_b64, ledger)
    if problems:
        raise IntegrityCheckError("parts do not match the plan: " + "; ".join(problems[:5]))
    parts = [remote[c.part_number] for c in state.plan.chunks]
    rt.catalog.verify_fence()
    # The intent, before the store acts: a run killed right after completion finds the object
    # by this SHA-256 and adopts it (chunk_upload._adopt_completed) instead of re-sending it.
    rt.catalog.update_session(state.session_id, sha256=sha256_hex)
    reported = rt.store.complete_upload(
        state.staging_key, state.upload_id, parts, crc64nvme_b64=crc64nvme_b64
    )
    known = all(c.part_number in part_digests_b64 for c in state.plan.chunks)
    expected = (
        composite_sha256(
            [base64.b64decode(part_digests_b64[c.part_number]) for c in state.plan.chunks]
        )
        if known
        else None
    )
    try:
        if reported and expected and reported.split("-")[0] != expected.split("-")[0]:
            raise IntegrityCheckError(f"store composite checksum {reported} != expected {expected}")
        _verify_whole(rt, state.staging_key, sha256_hex, state.plan.size_bytes)
    except IntegrityCheckError:
        rt.store.delete(state.staging_key)  # nothing half-verified may stay around
        raise
    rt.catalog.update_session(state.session_id, status="assembled", sha256=sha256_hex)
    log.info(
        "upload_assembled",
        sha256=sha256_hex,
        parts=len(parts),
        composite=expected if reported else None,  # None: the store checked a full-object CRC
        crc64nvme=crc64nvme_b64,
    )
    return state.staging_key
