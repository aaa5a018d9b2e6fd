"""One PATCH body through an upload's part buffer: whole parts, a durable tail, the first bytes.

Owns the buffer of one request (:class:`PartBuffer`): the durable tail read back and verified,
the body cut into parts of exactly ``part_size`` (each uploaded, recorded in the ledger, then
counted by one CAS of the row), the bytes short of a part kept as a fresh tail object, the last
short part at ``Upload-Length``, and the first-bytes check before anything is committed. The
order of those writes is what makes a kill anywhere safe: docs/gateway.md.

Must not: create, terminate or purge an upload, or spool a checksummed body (the writer,
:mod:`storage.tus_writer`, does, and calls this); speak HTTP or parse tus headers.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from reelflow.errors import (
    InputRejectedError,
    IntegrityCheckError,
    ReelflowError,
    StorageError,
)
from reelflow.logging import get_logger
from reelflow.planning import Chunk, b64
from reelflow.rules import MAGIC_BYTES_NEEDED
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence

# A tail is read back in pieces of this size, so the read never needs a second part buffer.
TAIL_READ_BYTES = 8 * 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class LengthExceededError(InputRejectedError):
    """The body goes past ``Upload-Length`` (or a declared length is below the offset)."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="length_exceeded", **context)


@dataclass(frozen=True)
class AppendResult:
    row: GatewayUpload  # as written: row.offset is the new Upload-Offset
    bytes_written: int  # bytes of this PATCH now counted in row.offset
    completed: bool  # the last byte is durable: row.state == "received"


class BufferWriter(Protocol):
    """What the buffer needs of the writer (:class:`storage.tus_writer.TusWriter` is one)."""

    store: ObjectStore
    catalog: Catalog
    part_size: int

    def fenced_catalog(self, fence: Fence | None) -> Catalog: ...

    def cas(self, cur: GatewayUpload, fence: Fence | None, **fields: Any) -> GatewayUpload: ...

    def finish_zero_length(
        self, row: GatewayUpload, *, fence: Fence | None = None
    ) -> GatewayUpload: ...

    def discard_tails(self, row: GatewayUpload) -> None: ...


class PartBuffer:
    """One PATCH's state: the part buffer and the row as last written."""

    def __init__(
        self,
        writer: BufferWriter,
        row: GatewayUpload,
        fence: Fence | None,
        first_bytes_check: Callable[[bytes], object] | None,
    ) -> None:
        self.w = writer
        self.row = row
        self.fence = fence
        self.part_size = row.part_size or writer.part_size
        self.check = first_bytes_check if row.offset < MAGIC_BYTES_NEEDED else None
        self.buf = bytearray(self.part_size)
        self.fill = 0  # bytes of buf in use; buf[0] is the file's byte at row.parts_bytes
        self.start_offset = row.offset
        self.dirty = False  # buf holds bytes the row does not count yet

    # The file offset the buffer reaches.
    @property
    def reached(self) -> int:
        return self.row.parts_bytes + self.fill

    def run(self, body: Iterable[bytes]) -> AppendResult:
        self._read_tail()
        it = iter(body)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                break
            except BaseException:
                # The client went away: what arrived is kept, and the offset says so.
                self._end_of_body()
                raise
            self._feed(chunk)
        self._end_of_body()
        row = self.row
        return AppendResult(row, row.offset - self.start_offset, row.state == uploads.RECEIVED)

    def _read_tail(self) -> None:
        row = self.row
        if row.tail_size == 0:
            return
        if not row.tail_key or row.tail_size >= self.part_size:
            raise IntegrityCheckError(
                f"the row counts a {row.tail_size}-byte tail it cannot hold", upload_id=row.id
            )
        size = self.w.store.size(row.tail_key)
        if size != row.tail_size:
            raise IntegrityCheckError(
                f"the tail object holds {size} bytes, the row counts {row.tail_size}",
                upload_id=row.id,
            )
        pos, digest = 0, hashlib.sha256()
        while pos < row.tail_size:
            piece = self.w.store.read_range(
                row.tail_key, pos, min(TAIL_READ_BYTES, row.tail_size - pos)
            )
            if not piece:
                raise IntegrityCheckError("the tail object ended early", upload_id=row.id)
            self.buf[pos : pos + len(piece)] = piece
            digest.update(piece)
            pos += len(piece)
        # A PutObject carries no checksum of its own: a tail damaged in transit or at rest must
        # not become part of a part whose checksum is computed from it.
        if b64(digest.digest()) != row.tail_sha256:
            raise IntegrityCheckError(
                "the tail object does not hold the bytes the row counts", upload_id=row.id
            )
        self.fill = row.tail_size

    def _feed(self, chunk: bytes) -> None:
        row = self.row
        if row.length is not None and self.reached + len(chunk) > row.length:
            raise past_length(row, self.reached + len(chunk))
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_size - self.fill)
            self.buf[self.fill : self.fill + take] = view[:take]
            self.fill += take
            self.dirty = True
            view = view[take:]
            self._check_head()
            if self.fill == self.part_size:
                self._commit_part()

    def _check_head(self, *, final: bool = False) -> None:
        """Call the first-bytes check once the file's head is buffered (nothing of it is
        committed yet: a part is larger than the head)."""
        if self.check is None or self.row.parts_bytes != 0:
            return
        need = MAGIC_BYTES_NEEDED
        if self.row.length is not None:
            need = min(need, self.row.length)
        if self.fill >= need or final:
            check, self.check = self.check, None
            check(bytes(self.buf[: min(self.fill, MAGIC_BYTES_NEEDED)]))

    def _commit_part(self) -> None:
        """Send the buffer as part ``next_part``; advance the row only after the store and the
        ledger hold it."""
        row = self.row
        if self.fill < len(self.buf):
            del self.buf[self.fill :]  # the last, short part: the buffer ends with it
        data = self.buf
        offset = row.parts_bytes
        put_part(
            self.w.store,
            self.w.fenced_catalog(self.fence),
            row,
            self.fence,
            Chunk(row.next_part, offset, self.fill),
            data,
        )
        end = offset + self.fill
        fields: dict[str, Any] = {
            "parts_bytes": end,
            "next_part": row.next_part + 1,
            "tail_size": 0,
            "tail_key": None,
            "tail_sha256": None,
            "offset": end,
        }
        if row.length is not None and end == row.length:
            self._sync_session(end, row.next_part)
            fields["state"] = uploads.RECEIVED
        old_tail = row.tail_key
        self.row = self.w.cas(row, self.fence, **fields)
        self.fill, self.dirty = 0, False
        upload_log(self.row).debug(
            "tus_part_uploaded", part_number=row.next_part, size=end - offset
        )
        if self.row.state == uploads.RECEIVED:
            self._received()
        elif old_tail:
            self._delete_quietly(old_tail)

    def _end_of_body(self) -> None:
        row = self.row
        if row.state != uploads.RECEIVING:
            return
        if row.length == 0:
            if self.check is not None:
                self._check_head(final=True)
            self.row = self.w.finish_zero_length(row, fence=self.fence)
            return
        if row.length is not None and self.reached == row.length:
            self._check_head(final=True)
            if self.fill > 0:
                self._commit_part()  # the last, short part (tail included)
                return
            # Every byte is in parts already (a length declared after the last one).
            self._sync_session(row.length, row.next_part - 1)
            self.row = self.w.cas(row, self.fence, state=uploads.RECEIVED)
            self._received()
            return
        if not self.dirty:
            return
        self._save_tail()

    def _save_tail(self) -> None:
        """Keep the bytes short of a part as a fresh tail object, then point the row at it."""
        row = self.row
        del self.buf[self.fill :]  # in place: the buffer is not needed after this
        key = uploads.new_tail_key(row.id)
        if self.fence is not None:
            self.fence.check()
        # Both stores take a bytearray (a file write, botocore's blob); bytes() would copy it.
        self.w.store.put_bytes(key, cast(bytes, self.buf), DEFAULT_CONTENT_TYPE)
        old_tail = row.tail_key
        try:
            self.row = self.w.cas(
                row,
                self.fence,
                tail_key=key,
                tail_size=self.fill,
                tail_sha256=sha256_b64(self.buf),
                offset=row.parts_bytes + self.fill,
            )
        except ReelflowError:
            self._delete_quietly(key)  # no row names it
            raise
        self.dirty = False
        upload_log(self.row).debug("tus_tail_saved", tail_size=self.fill)
        if old_tail:
            self._delete_quietly(old_tail)

    def _sync_session(self, length: int, parts: int) -> None:
        """A deferred length is known now: the ledger's session says what to assemble."""
        row = self.row
        assert row.session_id is not None
        session = self.w.catalog.get_session(row.session_id)
        if session is not None and (session.size_bytes, session.parts_total) != (length, parts):
            self.w.fenced_catalog(self.fence).update_session(
                row.session_id, size_bytes=length, parts_total=parts
            )

    def _received(self) -> None:
        upload_log(self.row).info(
            "tus_upload_received", length=self.row.length, parts=self.row.next_part - 1
        )
        with contextlib.suppress(StorageError):
            # Stale tails only cost space: purge after the pipeline removes any left.
            self.w.discard_tails(self.row)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.w.store.delete(key)
        except StorageError as exc:  # an orphan tail costs space only; purge removes it
            upload_log(self.row).warning("tus_tail_delete_failed", error=str(exc)[:200])


def put_part(
    store: ObjectStore,
    catalog: Catalog,
    cur: GatewayUpload,
    fence: Fence | None,
    chunk: Chunk,
    data: bytes | bytearray,
) -> None:
    """Upload one part with its SHA-256, then record it in ``catalog``'s ledger (the order
    chunk-upload keeps: the ledger never names a part the store does not hold)."""
    if fence is not None:
        fence.check()
    assert cur.upload_id is not None and cur.session_id is not None  # the writer checked
    receipt = store.upload_part(cur.staging_key, cur.upload_id, chunk, data, sha256_b64(data))
    catalog.record_part(cur.session_id, cur.upload_id, chunk.offset, receipt)


def past_length(row: GatewayUpload, reached: int) -> LengthExceededError:
    return LengthExceededError(
        f"the body goes past Upload-Length {row.length} (to {reached})", upload_id=row.id
    )


def sha256_b64(data: bytes | bytearray) -> str:
    return b64(hashlib.sha256(data).digest())


def upload_log(row: GatewayUpload) -> Any:
    return get_logger(gateway_upload=row.id, upload_id=row.upload_id)
