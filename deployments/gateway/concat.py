"""The concatenation extension's final step: a final upload's bytes from its partial uploads.

tus-js-client's ``parallelUploads`` sends a file as several partial uploads at once, then
creates the final one (``Upload-Concat: final;/uploads/a /uploads/b``), which must then hold
the partials' bytes in order. Each partial was staged as its own multipart upload; here each
one is completed into its object, read back in blocks of :data:`READ_BLOCK_BYTES` and written
into the final upload by the same writer a PATCH uses (so the final's parts, ledger and first
bytes check are a PATCH's), then the partials' objects are removed.

This is the simplest correct approach, and it is a second pass over the bytes of a
concatenated upload (read + write in the store, on the gateway's network): a server-side copy
(S3 UploadPartCopy of part-aligned ranges) could avoid it later. Memory: one read block plus the
writer's part buffer.

Must not: speak HTTP or decide statuses (the handler does), or touch a single upload.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from reelflow.errors import IntegrityCheckError
from reelflow.tus import TusError
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog
from storage.gateway_uploads import GatewayUpload

READ_BLOCK_BYTES = 1024 * 1024


def complete_partial(store: ObjectStore, catalog: Catalog, row: GatewayUpload) -> None:
    """Complete a received partial's multipart upload into its staging key (idempotent: an
    object already there is a completion a killed request already made)."""
    if store.exists(row.staging_key):
        return
    if not row.upload_id:
        raise IntegrityCheckError(
            "the partial upload has no staged multipart upload", upload_id=row.id
        )
    parts = catalog.ledger_parts(row.upload_id)
    if not parts:
        raise IntegrityCheckError("the partial upload's ledger holds no part", upload_id=row.id)
    store.complete_upload(row.staging_key, row.upload_id, [parts[n] for n in sorted(parts)])


def partial_bytes(store: ObjectStore, partials: Sequence[GatewayUpload]) -> Iterator[bytes]:
    """The partials' bytes in order, in blocks (their uploads completed first)."""
    for row in partials:
        length = row.length or 0
        pos = 0
        while pos < length:
            block = store.read_range(row.staging_key, pos, min(READ_BLOCK_BYTES, length - pos))
            if not block:
                raise IntegrityCheckError(
                    f"partial upload ended at byte {pos} of {length}", upload_id=row.id
                )
            pos += len(block)
            yield block


def check_partials(partials: Sequence[GatewayUpload]) -> None:
    """What a final may be made of: partial uploads whose every byte arrived."""
    for row in partials:
        if row.kind != "partial":
            raise TusError(400, f"upload {row.id} is not a partial upload", reason="bad_concat")
        if row.state != uploads.RECEIVED:
            # No `concatenation-unfinished`: the final is assembled at its creation.
            raise TusError(
                400,
                f"partial upload {row.id} is not finished ({row.offset} of "
                f"{row.length if row.length is not None else '?'} bytes)",
                reason="partial_unfinished",
            )
