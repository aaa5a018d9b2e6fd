"""A concatenation's final upload assembled by the store from its partials' objects.

tus-js-client's ``parallelUploads`` sends a file as several partial uploads, each staged and
then completed into its own object, and creates the final one (``Upload-Concat: final;…``),
whose staged multipart upload must hold their bytes in order. The parts of that upload are
planned purely (:func:`reelflow.planning.plan_concatenation`) and made here by the store:
``copy_part`` (S3 UploadPartCopy of a byte range; the local store's ``copy_file_range``), so no
byte of a partial is uploaded a second time. Only a partial too small to be a part on its own
(< 5 MiB, not the last) is read and sent, merged with what follows it (bounded: below 5 MiB plus
one part).

The ledger stays the one chunk-upload and a PATCH write: one row per part of the final, with
its offset, size, ETag and SHA-256. A copied part that is exactly one of a partial's parts has
the SHA-256 that partial's PATCH recorded; a copied range spanning two (a partial's last, short
part joined to the one before it) is hashed here by reading it once (no write); a merged part
is hashed in memory. When the store reports its own SHA-256 of a copy (real S3 does; moto and
the local store do not) it must equal the ledger's. The whole file's SHA-256 is not computed
here: the pipeline's assembly reads the completed object once for it, as for every upload
(docs/gateway.md, "Concatenation").

Must not: speak HTTP, check partial uploads' states or owners (the handler does), complete the
final's multipart upload or start the pipeline (the hand-off does), touch the partials' rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from reelflow.errors import IntegrityCheckError
from reelflow.planning import Chunk, ConcatPart, b64, plan_concatenation, source_parts
from reelflow.rules import MAGIC_BYTES_NEEDED
from storage import gateway_uploads as uploads
from storage.base import PartReceipt
from storage.gateway_uploads import GatewayUpload
from storage.tus_buffer import AppendResult, BufferWriter, put_part, upload_log

READ_BYTES = 8 * 1024 * 1024  # one read of a range that is hashed or merged
# UploadPartCopy requests in flight at once: each is a server-side copy of one part (S3 copies
# in the background of the request), so a few overlap the round trips of a many-part final.
COPY_CONCURRENCY = 8


@dataclass(frozen=True)
class ConcatSource:
    """One partial as the store holds it: its completed object and how it was staged."""

    key: str
    length: int
    part_size: int
    digests: Mapping[int, str]  # its ledger: part number -> SHA-256 (base64)


@dataclass(frozen=True)
class ConcatStats:
    """What assembling a final moved, by kind of byte."""

    copied_bytes: int = 0  # copied by the store (nothing through this process)
    merged_bytes: int = 0  # read and uploaded again (partials too small to be a part)
    hashed_bytes: int = 0  # read only, for the SHA-256 of a copied range spanning two parts


def source_of(partial: GatewayUpload, digests: Mapping[int, str]) -> ConcatSource:
    """A partial upload (completed into its staging key) as a source of a final."""
    return ConcatSource(partial.staging_key, partial.length or 0, partial.part_size, digests)


class FinalAssembly:
    """One final's parts made from its sources (a freshly created, empty ``receiving`` row)."""

    def __init__(
        self,
        writer: BufferWriter,
        row: GatewayUpload,
        sources: Sequence[ConcatSource],
        first_bytes_check: Callable[[bytes], object] | None,
    ) -> None:
        self.w = writer
        self.row = row
        self.sources = sources
        self.check = first_bytes_check
        self.stats = ConcatStats()

    def run(self) -> AppendResult:
        row = self.row
        length = sum(s.length for s in self.sources)
        if row.length != length or row.offset != 0 or row.parts_bytes != 0:
            raise IntegrityCheckError(
                f"the final upload is not an empty upload of {length} bytes", upload_id=row.id
            )
        for s in self.sources:
            self._check_ledger(s)
        plan = plan_concatenation([(s.length, s.part_size) for s in self.sources])
        if self.check is not None:
            self.check(self._head())
        copies = [p for p in plan if p.copy]
        with ThreadPoolExecutor(max_workers=COPY_CONCURRENCY) as pool:
            futures: list[Future[None]] = [pool.submit(self._copy, p) for p in copies]
            try:
                for part in plan:
                    if not part.copy:
                        self._merge(part)
            finally:
                errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        self.stats = ConcatStats(
            copied_bytes=sum(p.chunk.length for p in copies),
            merged_bytes=sum(p.merged_bytes for p in plan),
            hashed_bytes=sum(p.chunk.length for p in copies if p.source_part is None),
        )
        assert row.session_id is not None  # the writer checked
        self.w.fenced_catalog(None).update_session(
            row.session_id, size_bytes=length, parts_total=len(plan)
        )
        done = self.w.cas(
            row,
            None,
            parts_bytes=length,
            offset=length,
            next_part=len(plan) + 1,
            state=uploads.RECEIVED,
        )
        upload_log(done).info(
            "tus_final_assembled",
            length=length,
            parts=len(plan),
            partials=len(self.sources),
            **dataclasses.asdict(self.stats),
        )
        upload_log(done).info("tus_upload_received", length=length, parts=len(plan))
        return AppendResult(done, length, True)

    def _check_ledger(self, s: ConcatSource) -> None:
        """The plan assumes each source was staged in parts of its part size: its ledger must
        say so (a part the plan copies whole takes its SHA-256 from there)."""
        planned = {c.part_number for c in source_parts(s.length, s.part_size)}
        if set(s.digests) != planned:
            raise IntegrityCheckError(
                f"the partial {s.key} has ledger parts {sorted(s.digests)[:10]}, "
                f"planned {sorted(planned)[:10]}",
                upload_id=self.row.id,
            )

    def _read(self, key: str, start: int, length: int) -> bytes:
        data = self.w.store.read_range(key, start, length)
        if len(data) != length:
            raise IntegrityCheckError(
                f"{key} ended at {start + len(data)}, expected {start + length} bytes",
                upload_id=self.row.id,
            )
        return data

    def _head(self) -> bytes:
        """The final's first bytes (across partials when the first is tiny), for the check."""
        head = bytearray()
        for s in self.sources:
            if len(head) >= MAGIC_BYTES_NEEDED:
                break
            take = min(s.length, MAGIC_BYTES_NEEDED - len(head))
            if take:
                head += self._read(s.key, 0, take)
        return bytes(head)

    def _copy(self, part: ConcatPart) -> None:
        (piece,) = part.pieces
        src = self.sources[piece.source]
        if part.source_part is not None:
            expected = src.digests[part.source_part]
        else:
            expected = self._hash_range(src.key, piece.offset, piece.length)
        row = self.row
        assert row.upload_id is not None and row.session_id is not None
        receipt = self.w.store.copy_part(
            row.staging_key, row.upload_id, part.chunk, src.key, piece.offset
        )
        if receipt.size != part.chunk.length or (
            receipt.sha256_b64 is not None and receipt.sha256_b64 != expected
        ):
            raise IntegrityCheckError(
                f"part {part.chunk.part_number}: the store's copy is not the partial's bytes",
                upload_id=row.id,
                part_number=part.chunk.part_number,
            )
        self._record(part.chunk, dataclasses.replace(receipt, sha256_b64=expected))

    def _record(self, chunk: Chunk, receipt: PartReceipt) -> None:
        row = self.row
        assert row.upload_id is not None and row.session_id is not None
        self.w.fenced_catalog(None).record_part(
            row.session_id, row.upload_id, chunk.offset, receipt
        )

    def _hash_range(self, key: str, start: int, length: int) -> str:
        digest, pos = hashlib.sha256(), 0
        while pos < length:
            block = self._read(key, start + pos, min(READ_BYTES, length - pos))
            digest.update(block)
            pos += len(block)
        return b64(digest.digest())

    def _merge(self, part: ConcatPart) -> None:
        """The fallback: pieces too small for a part of their own, read and sent as one."""
        data = bytearray()
        for piece in part.pieces:
            key = self.sources[piece.source].key
            pos = 0
            while pos < piece.length:
                take = min(READ_BYTES, piece.length - pos)
                data += self._read(key, piece.offset + pos, take)
                pos += take
        put_part(self.w.store, self.w.fenced_catalog(None), self.row, None, part.chunk, data)
