"""Stream tus PATCH bodies into an upload's staged multipart upload: parts plus a durable tail.

Owns the bytes of a gateway upload from its creation to its last byte: the store's multipart
upload at ``incoming/{id}/video``, the tail objects ``incoming/{id}/tail-*``, the upload ledger
(one ``UploadSession`` ``gw_{id}`` and its parts, written with ``Catalog.record_part`` as
chunk-upload does) and the byte-counting columns of the ``gateway_upload`` row. Must not: speak
HTTP, parse tus headers, complete the multipart upload or start the pipeline (the hand-off does).

API (G3's handlers call it; it is synchronous: run ``append`` in a worker thread and feed it the
request body as an iterable of ``bytes``)::

    w = TusWriter(store, catalog, part_size=...)      # part_size >= 5 MiB (S3's minimum)
    row = w.create(GatewayUpload(id=..., owner=..., expires_at=..., length=..., ...))
    res = w.append(row, chunks, checksum=..., first_bytes_check=sniff, fence=fence)
    res.row.offset, res.completed                      # completed: row.state == "received"
    row = w.declare_length(row, length, fence=fence)   # Upload-Length after Upload-Defer-Length;
                                                       # then append (even an empty body)
    row = w.finish_zero_length(row, fence=fence)       # Upload-Length: 0 (one empty part)
    row = w.terminate(row, fence=fence)                # DELETE: state cancelled, nothing left
    w.purge(row)                                       # remove every object and ledger part

Errors: ``UploadConflictError`` (another request changed the row first, or it is not
receiving: 409; a held lease is the handler's 423), ``LeaseLostError`` (the fence went stale:
423), ``ChecksumMismatchError`` (460: nothing changed), ``LengthExceededError`` (400: bytes past
Upload-Length; what this PATCH had not committed yet is dropped, whole parts it committed
stay), ``InputRejectedError`` from
``first_bytes_check`` (the handler answers 415 and terminates the upload). Store failures
propagate as the store's typed errors, with the offset counting only what was committed.

How a PATCH is written. The buffer is the durable tail (read back from the store when
``tail_size > 0``) followed by the new bytes; it holds at most ``part_size`` bytes (one part
buffer per upload; a checksummed body is spooled to a temporary file, only its first
``SPOOL_MEMORY_BYTES`` in memory). Each time it is full: ``upload_part(next_part)`` with its
SHA-256, ``Catalog.record_part``, then one CAS of the row (``parts_bytes``, ``next_part``,
``tail_size = 0``, ``offset``) — the offset moves only after the store acknowledged the part and
the ledger holds it. When the body ends (or the client goes away) with bytes left: if they reach
``length`` they are the last, short part; otherwise they are written to a *fresh* tail object
(``put_bytes``) and the row's CAS points at it (``tail_key``, ``tail_size``, ``tail_sha256``,
checked when the tail is read back). Every part but the last is exactly ``part_size`` (so S3's
5 MiB minimum holds and the parts are ``ceil(length / part_size)``); a tail is promoted into a
real part as soon as the buffer reaches ``part_size`` again, never re-uploaded as an
ever-growing object. A checksummed PATCH is spooled
and verified before anything is committed, so a mismatch leaves the row, the store and the
ledger as they were.

Kill safety (the process may die anywhere; the client re-sends from the offset HEAD reports,
and a re-uploaded part number overwrites the part the store held):

* between ``upload_part`` and ``record_part``: the store holds part n, the ledger and the row do
  not. HEAD reports the old offset; the resumed PATCH rebuilds the same buffer (tail + the same
  bytes) and uploads part n again (an overwrite with identical bytes), records it, advances. The
  orphan part is only ever at ``next_part``, which every upload writes again before it can
  complete; on the local store it covers bytes below ``length``, so the staged file never holds
  more than the parts add up to.
* between ``record_part`` and the CAS: the ledger holds part n, the row does not. As above: the
  resumed PATCH re-uploads part n and the ledger upsert rewrites the same row; nothing the row
  counts depends on the early ledger row.
* between ``put_bytes(tail)`` and the CAS: a tail object exists that no row names (each write
  has its own key); the row still names the previous tail, untouched, of exactly ``tail_size``
  bytes. HEAD reports the old offset, and the resumed PATCH reads the old tail. The orphan is
  removed by ``purge`` (completion's clean-up, termination, expiry) which deletes the upload's
  whole prefix.
* after the CAS, before the old tail object is deleted: that object is an orphan as above.

Concurrency: every row write is ``gateway_uploads.cas_update`` on the version the writer read at
the start of the request (and, given a fence, checks the lease token in the same transaction).
Two writers on one row: the first CAS wins; the other raises ``UploadConflictError`` and, having
written only a part number the winner also holds (same bytes at the same offset) or a tail object
no row names, changes nothing the row counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from reelflow.errors import (
    ConfigurationError,
    InputRejectedError,
    IntegrityCheckError,
    ReelflowError,
    StorageError,
)
from reelflow.logging import get_logger
from reelflow.planning import S3_MAX_PART_BYTES, S3_MAX_PARTS, S3_MIN_PART_BYTES, Chunk, b64
from reelflow.rules import MAGIC_BYTES_NEEDED
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog, UploadSession
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence

# A checksummed body is held in memory up to this size, then spooled to disk: with the part
# buffer that keeps an upload's memory at about one part.
SPOOL_MEMORY_BYTES = 1024 * 1024
SPOOL_READ_BYTES = 1024 * 1024
# A tail is read back in pieces of this size, so the read never needs a second part buffer.
TAIL_READ_BYTES = 8 * 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class UploadConflictError(StorageError):
    """The upload's row changed under this request (a lost CAS, another instance's PATCH), or it
    no longer takes bytes. Nothing this request wrote is counted; a client that asks HEAD for
    the offset and sends again can succeed."""

    retryable = True
    reason = "conflict"


class ChecksumMismatchError(ReelflowError):
    """The PATCH body does not match its ``Upload-Checksum`` (tus status 460): the body was
    discarded and the offset is unchanged; sending the chunk again can succeed."""

    retryable = True
    reason = "checksum_mismatch"


class LengthExceededError(InputRejectedError):
    """The body goes past ``Upload-Length`` (or a declared length is below the offset)."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="length_exceeded", **context)


class Checksum(Protocol):
    """What the writer needs of an ``Upload-Checksum`` (``reelflow.tus.Checksum`` is one)."""

    def hasher(self) -> Any: ...

    def matches(self, digest: bytes) -> bool: ...


@dataclass(frozen=True)
class AppendResult:
    row: GatewayUpload  # as written: row.offset is the new Upload-Offset
    bytes_written: int  # bytes of this PATCH now counted in row.offset
    completed: bool  # the last byte is durable: row.state == "received"


def parts_for(length: int, part_size: int) -> int:
    """Parts an upload of ``length`` bytes is cut into (a 0-byte upload is one empty part)."""
    return max(1, math.ceil(length / part_size))


class TusWriter:
    def __init__(self, store: ObjectStore, catalog: Catalog, *, part_size: int) -> None:
        if not S3_MIN_PART_BYTES <= part_size <= S3_MAX_PART_BYTES:
            raise ConfigurationError(
                f"the gateway part size must be between {S3_MIN_PART_BYTES} (S3's minimum for "
                f"every part but the last) and {S3_MAX_PART_BYTES} bytes, got {part_size}"
            )
        self.store = store
        self.catalog = catalog
        self.part_size = part_size

    # --- creation -----------------------------------------------------------------------------
    def create(self, row: GatewayUpload) -> GatewayUpload:
        """Start the upload: the store's multipart upload at the staging key, the ledger's
        session, then the row (state ``receiving``, version 0). ``row`` carries the request's
        fields (id, owner, account, metadata, length, kind, concat_json, expires_at); this fills
        in the store's.

        Every kind is created alike (a final concatenation gets a staged upload too). A kill
        before the row is inserted leaves a multipart upload and a session no row names; the
        client got no ``201`` and creates again (a new id); cleanup finds the pending upload
        under ``incoming/`` with no row.
        """
        if row.length is not None:
            self._check_length(row.length)
        row.store_url = self.store.url
        row.staging_key = uploads.staging_key_for(row.id)
        row.part_size = self.part_size
        row.session_id = uploads.session_id_for(row.id)
        meta = json.loads(row.metadata_json or "{}")
        content_type = _content_type(meta.get("filetype"))
        row.upload_id = self.store.create_upload(row.staging_key, content_type)
        length = row.length or 0
        self.catalog.save_session(
            UploadSession(
                id=row.session_id,
                source_uri=f"tus:{row.id}",
                source_fingerprint=f"tus:{row.id}",
                store_url=self.store.url,
                staging_key=row.staging_key,
                upload_id=row.upload_id,
                size_bytes=length,
                chunk_size=self.part_size,
                parts_total=parts_for(length, self.part_size),
                content_type=content_type,
                ext=_ext(meta.get("filename")),
            )
        )
        row.state, row.version = uploads.RECEIVING, 0
        row.offset = row.parts_bytes = row.tail_size = 0
        row.next_part = 1
        created = uploads.create(self.catalog.engine, row)
        _log(created).info("tus_upload_created", length=created.length, part_size=self.part_size)
        return created

    def declare_length(
        self, row: GatewayUpload, length: int, *, fence: Fence | None = None
    ) -> GatewayUpload:
        """Set a deferred upload's length (``Upload-Length`` on a later PATCH). The ledger's
        session gets the size and part count when the last byte arrives."""
        cur = self._current(row)
        if cur.length is not None:
            if cur.length == length:
                return cur
            raise UploadConflictError(
                f"the upload's length is already {cur.length}", upload_id=cur.id
            )
        if length < cur.offset:
            raise LengthExceededError(
                f"Upload-Length {length} is below the {cur.offset} bytes already received",
                upload_id=cur.id,
            )
        self._check_length(length)
        return self._cas(cur, fence, length=length)

    def _check_length(self, length: int) -> None:
        if length < 0:
            raise InputRejectedError(f"Upload-Length must be >= 0, got {length}", reason="length")
        if parts_for(length, self.part_size) > S3_MAX_PARTS:
            raise InputRejectedError(
                f"{length} bytes need more than {S3_MAX_PARTS} parts of {self.part_size}",
                reason="length",
            )

    # --- writing ------------------------------------------------------------------------------
    def append(
        self,
        row: GatewayUpload,
        chunks: Iterable[bytes],
        *,
        checksum: Checksum | None = None,
        first_bytes_check: Callable[[bytes], object] | None = None,
        fence: Fence | None = None,
    ) -> AppendResult:
        """Write one PATCH body at ``row.offset`` (the caller checked ``Upload-Offset`` against
        it). Returns the row as written; raises as the module docstring says.

        ``first_bytes_check`` (``reelflow.rules.sniff_container``) is called once, with the
        file's first ``MAGIC_BYTES_NEEDED`` bytes (or all of a shorter file), as soon as they are
        buffered and before any of them is committed. ``fence`` is the request's hold on the
        upload: every write checks it (the CAS and the ledger in their transactions).

        When the body iterator raises (the client went away), the bytes that arrived are kept
        (tail or parts) and the exception propagates.
        """
        cur = self._current(row)
        if checksum is None:
            return _Append(self, cur, fence, first_bytes_check).run(chunks)
        with tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY_BYTES, prefix="reelflow-tus-"
        ) as spool:
            self._spool(spool, cur, chunks, checksum)
            return _Append(self, cur, fence, first_bytes_check).run(_read_spool(spool))

    def finish_zero_length(
        self, row: GatewayUpload, *, fence: Fence | None = None
    ) -> GatewayUpload:
        """Complete an upload of 0 bytes: one empty part (S3 completes nothing without a part),
        recorded in the ledger, then the row goes to ``received``. Idempotent on a kill: the
        empty part is uploaded and recorded again."""
        cur = self._current(row)
        if cur.length != 0:
            raise UploadConflictError(
                f"the upload is not of 0 bytes (length {cur.length})", upload_id=cur.id
            )
        self._put_part(cur, fence, Chunk(1, 0, 0), b"", _sha256_b64(b""))
        done = self._cas(cur, fence, next_part=2, state=uploads.RECEIVED)
        _log(done).info("tus_upload_received", length=0, parts=1)
        return done

    # --- termination --------------------------------------------------------------------------
    def terminate(
        self, row: GatewayUpload, *, fence: Fence | None = None, state: str = uploads.CANCELLED
    ) -> GatewayUpload:
        """DELETE (``state`` cancelled) or expiry (``state`` expired): the row goes to ``state``
        first, so no PATCH can commit after it, then :meth:`purge` removes every byte. Calling
        it again (after a kill mid-purge) purges again. A row a flow run took (``processing``)
        or stored is refused with ``UploadConflictError``."""
        cur = uploads.get(self.catalog.engine, row.id)
        if cur is None:
            raise UploadConflictError("the upload no longer exists", upload_id=row.id)
        if cur.state in (uploads.PROCESSING, uploads.STORED):
            raise UploadConflictError(
                f"the upload is {cur.state}: it belongs to the pipeline now", upload_id=cur.id
            )
        if cur.state not in (uploads.CANCELLED, uploads.EXPIRED):
            cur = self._cas(cur, fence, state=state)
        self.purge(cur, fence=fence)
        _log(cur).info("tus_upload_terminated", state=cur.state)
        return cur

    def purge(self, row: GatewayUpload, *, fence: Fence | None = None) -> None:
        """Remove what the upload left: the pending multipart upload, every object under its
        prefix (tails, orphan tails, a completed video not moved away), the ledger's parts; the
        session is marked aborted. Idempotent; the row is not touched."""
        catalog = self._catalog(fence)
        if row.upload_id:
            self.store.abort_upload(row.staging_key, row.upload_id)
        for key, _ in self.store.list_objects(uploads.upload_prefix(row.id)):
            self.store.delete(key)
        if row.upload_id:
            catalog.forget_parts(row.upload_id)
        if row.session_id and catalog.get_session(row.session_id) is not None:
            catalog.update_session(row.session_id, status="aborted")

    def discard_tails(self, row: GatewayUpload) -> None:
        """Delete the upload's tail objects (after its last byte, every one is stale)."""
        for key, _ in self.store.list_objects(uploads.upload_prefix(row.id)):
            if key != row.staging_key:
                self.store.delete(key)

    # --- helpers ------------------------------------------------------------------------------
    def _catalog(self, fence: Fence | None) -> Catalog:
        return self.catalog.fenced(fence) if fence is not None else self.catalog

    def _current(self, row: GatewayUpload) -> GatewayUpload:
        """The row as stored, which must still be the version the caller read and receiving."""
        cur = uploads.get(self.catalog.engine, row.id)
        if cur is None:
            raise UploadConflictError("the upload no longer exists", upload_id=row.id)
        if cur.version != row.version:
            raise UploadConflictError(
                "the upload changed since this request read it", upload_id=row.id
            )
        if cur.state != uploads.RECEIVING:
            raise UploadConflictError(f"the upload is {cur.state}", upload_id=row.id)
        if not cur.upload_id or not cur.session_id:
            raise IntegrityCheckError("the upload has no staged multipart upload", upload_id=row.id)
        return cur

    def _cas(self, cur: GatewayUpload, fence: Fence | None, **fields: Any) -> GatewayUpload:
        if fence is not None:
            fence.check()
        new = uploads.cas_update(self.catalog.engine, cur.id, cur.version, fence=fence, **fields)
        if new is None:
            raise UploadConflictError("another request changed the upload first", upload_id=cur.id)
        return new

    def _put_part(
        self,
        cur: GatewayUpload,
        fence: Fence | None,
        chunk: Chunk,
        data: bytes | bytearray,
        sha256_b64: str,
    ) -> None:
        """Upload one part, then record it in the ledger (the order chunk-upload keeps)."""
        if fence is not None:
            fence.check()
        assert cur.upload_id is not None and cur.session_id is not None  # _current checked
        receipt = self.store.upload_part(cur.staging_key, cur.upload_id, chunk, data, sha256_b64)
        self._catalog(fence).record_part(cur.session_id, cur.upload_id, chunk.offset, receipt)

    def _spool(
        self,
        spool: tempfile.SpooledTemporaryFile[bytes],
        cur: GatewayUpload,
        chunks: Iterable[bytes],
        checksum: Checksum,
    ) -> None:
        """Write the whole body to ``spool``, verified against ``checksum`` before any of it is
        committed; rewound for reading."""
        hasher = checksum.hasher()
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if cur.length is not None and cur.offset + size > cur.length:
                raise _past_length(cur, cur.offset + size)
            hasher.update(chunk)
            spool.write(chunk)
        if not checksum.matches(hasher.digest()):
            raise ChecksumMismatchError(
                "the body does not match Upload-Checksum: discarded", upload_id=cur.id
            )
        spool.seek(0)


class _Append:
    """One PATCH's state: the part buffer and the row as last written."""

    def __init__(
        self,
        writer: TusWriter,
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
            raise _past_length(row, self.reached + len(chunk))
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
        self.w._put_part(
            row,
            self.fence,
            Chunk(row.next_part, offset, self.fill),
            data,
            _sha256_b64(data),
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
        self.row = self.w._cas(row, self.fence, **fields)
        self.fill, self.dirty = 0, False
        _log(self.row).debug("tus_part_uploaded", part_number=row.next_part, size=end - offset)
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
            self.row = self.w._cas(row, self.fence, state=uploads.RECEIVED)
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
            self.row = self.w._cas(
                row,
                self.fence,
                tail_key=key,
                tail_size=self.fill,
                tail_sha256=_sha256_b64(self.buf),
                offset=row.parts_bytes + self.fill,
            )
        except ReelflowError:
            self._delete_quietly(key)  # no row names it
            raise
        self.dirty = False
        _log(self.row).debug("tus_tail_saved", tail_size=self.fill)
        if old_tail:
            self._delete_quietly(old_tail)

    def _sync_session(self, length: int, parts: int) -> None:
        """A deferred length is known now: the ledger's session says what to assemble."""
        row = self.row
        assert row.session_id is not None
        session = self.w.catalog.get_session(row.session_id)
        if session is not None and (session.size_bytes, session.parts_total) != (length, parts):
            self.w._catalog(self.fence).update_session(
                row.session_id, size_bytes=length, parts_total=parts
            )

    def _received(self) -> None:
        _log(self.row).info(
            "tus_upload_received", length=self.row.length, parts=self.row.next_part - 1
        )
        with contextlib.suppress(StorageError):
            # Stale tails only cost space: purge after the pipeline removes any left.
            self.w.discard_tails(self.row)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.w.store.delete(key)
        except StorageError as exc:  # an orphan tail costs space only; purge removes it
            _log(self.row).warning("tus_tail_delete_failed", error=str(exc)[:200])


def _past_length(row: GatewayUpload, reached: int) -> LengthExceededError:
    return LengthExceededError(
        f"the body goes past Upload-Length {row.length} (to {reached})", upload_id=row.id
    )


def _sha256_b64(data: bytes | bytearray) -> str:
    return b64(hashlib.sha256(data).digest())


def _read_spool(spool: tempfile.SpooledTemporaryFile[bytes]) -> Iterator[bytes]:
    while block := spool.read(SPOOL_READ_BYTES):
        yield block


def _content_type(filetype: object) -> str:
    if isinstance(filetype, str) and filetype.count("/") == 1 and len(filetype) <= 100:
        return filetype
    return DEFAULT_CONTENT_TYPE


def _ext(filename: object) -> str:
    if isinstance(filename, str) and "." in filename:
        ext = filename.rsplit(".", 1)[1].lower()
        if ext.isalnum() and len(ext) <= 8:
            return ext
    return ""


def _log(row: GatewayUpload) -> Any:
    return get_logger(gateway_upload=row.id, upload_id=row.upload_id)
