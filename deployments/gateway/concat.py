"""The concatenation extension's final step: a final upload's bytes from its partial uploads.

tus-js-client's ``parallelUploads`` sends a file as several partial uploads at once, then
creates the final one (``Upload-Concat: final;/uploads/a /uploads/b``), which must then hold
the partials' bytes in order. Each partial was staged as its own multipart upload; here each
one is completed into its object, and the final's staged upload gets its parts from those
objects, copied by the store (S3 UploadPartCopy; the local store's ``copy_file_range``): no
byte of a partial is uploaded a second time (:mod:`storage.tus_concat` says what is read and
why). The final's parts and ledger are then a PATCH's; the caller purges the partials.

Must not: speak HTTP or decide statuses (the handler does), or touch a single upload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reelflow.errors import IntegrityCheckError
from reelflow.tus import TusError
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog
from storage.gateway_uploads import GatewayUpload
from storage.tus_concat import source_of
from storage.tus_writer import AppendResult, TusWriter


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


def assemble_final(
    writer: TusWriter,
    row: GatewayUpload,
    partials: Sequence[GatewayUpload],
    *,
    first_bytes_check: Callable[[bytes], object] | None = None,
) -> AppendResult:
    """Complete each partial into its object, then fill the final's staged upload from those
    objects, copied by the store (:meth:`TusWriter.concatenate`): the partials' bytes are not
    uploaded again. The partials' objects stay until the caller purges them."""
    for p in partials:
        complete_partial(writer.store, writer.catalog, p)
    sources = []
    for p in partials:
        assert p.upload_id is not None  # complete_partial checked
        ledger = writer.catalog.ledger_parts(p.upload_id)
        digests = {n: r.sha256_b64 for n, r in ledger.items() if r.sha256_b64}
        sources.append(source_of(p, digests))
    return writer.concatenate(row, sources, first_bytes_check=first_bytes_check)


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
