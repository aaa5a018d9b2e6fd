"""Stream tus PATCH bodies into an upload's staged multipart upload: parts plus a durable tail.

Owns the bytes of a gateway upload from its creation to its last byte: the store's multipart
upload at ``incoming/{id}/video``, the tail objects ``incoming/{id}/tail-*``, the upload ledger
(one ``UploadSession`` ``gw_{id}`` and its parts, written with ``Catalog.record_part`` as
chunk-upload does) and the byte-counting columns of the ``gateway_upload`` row; one PATCH's part buffer is
:class:`storage.tus_buffer.PartBuffer`, which this drives. Must not: speak
HTTP, parse tus headers, complete the multipart upload or start the pipeline (the hand-off does).
A concatenation's final gets its parts from its partials' objects (:mod:`storage.tus_concat`).

API (the gateway's handlers call it; it is synchronous: run ``append`` in a worker thread and feed it the
request body as an iterable of ``bytes``)::

    w = TusWriter(store, catalog, part_size=...)      # part_size >= 5 MiB (S3's minimum)
    row = w.create(GatewayUpload(id=..., owner=..., expires_at=..., length=..., ...))
    res = w.append(row, chunks, checksum=..., first_bytes_check=sniff, fence=fence)
    res.row.offset, res.completed                      # completed: row.state == "received"
    row = w.declare_length(row, length, fence=fence)   # Upload-Length after Upload-Defer-Length;
                                                       # then append (even an empty body)
    row = w.finish_zero_length(row, fence=fence)       # Upload-Length: 0 (one empty part)
    res = w.concatenate(final_row, sources)            # a final made of partials' objects
    row = w.terminate(row, fence=fence)                # DELETE: state cancelled, nothing left
    w.purge(row)                                       # remove every object and ledger part

Errors: ``UploadConflictError`` (another request changed the row first, or it is not
receiving: 409; a held lease is the handler's 423), ``LeaseLostError`` (the fence went stale:
423), ``ChecksumMismatchError`` (460: nothing changed), ``LengthExceededError`` (400: bytes past
Upload-Length; what this PATCH had not committed yet is dropped, whole parts it committed
stay), ``InputRejectedError`` from
``first_bytes_check`` (the handler answers 415 and terminates the upload). Store failures
propagate as the store's typed errors, with the offset counting only what was committed.

How a PATCH is written (the part buffer, :mod:`storage.tus_buffer`), why a kill anywhere loses
no acknowledged byte, and how two writers on one row resolve: docs/gateway.md.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from reelflow.errors import (
    ConfigurationError,
    InputRejectedError,
    IntegrityCheckError,
    ReelflowError,
    StorageError,
)
from reelflow.planning import S3_MAX_PART_BYTES, S3_MAX_PARTS, S3_MIN_PART_BYTES, Chunk
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog, UploadSession, media_keys
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence
from storage.tus_buffer import DEFAULT_CONTENT_TYPE, PartBuffer, past_length, put_part, upload_log
from storage.tus_buffer import AppendResult as AppendResult
from storage.tus_buffer import LengthExceededError as LengthExceededError
from storage.tus_concat import ConcatSource, FinalAssembly

# A checksummed body is held in memory up to this size, then spooled to disk: with the part
# buffer that keeps an upload's memory at about one part.
SPOOL_MEMORY_BYTES = 1024 * 1024
SPOOL_READ_BYTES = 1024 * 1024


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


class Checksum(Protocol):
    """What the writer needs of an ``Upload-Checksum`` (``reelflow.tus.Checksum`` is one)."""

    def hasher(self) -> Any: ...

    def matches(self, digest: bytes) -> bool: ...


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
        upload_log(created).info(
            "tus_upload_created", length=created.length, part_size=self.part_size
        )
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
        return self.cas(cur, fence, length=length)

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
            return PartBuffer(self, cur, fence, first_bytes_check).run(chunks)
        with tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY_BYTES, prefix="reelflow-tus-"
        ) as spool:
            self._spool(spool, cur, chunks, checksum)
            return PartBuffer(self, cur, fence, first_bytes_check).run(_read_spool(spool))

    def concatenate(
        self,
        row: GatewayUpload,
        sources: Sequence[ConcatSource],
        *,
        first_bytes_check: Callable[[bytes], object] | None = None,
    ) -> AppendResult:
        """Fill a final concatenation's freshly created upload (``row.length`` = the sources'
        total) with the sources' bytes in order, copied by the store; the row goes to
        ``received``. ``first_bytes_check`` as for :meth:`append` (before any part is made).
        On an error the final is half made: the caller terminates it (the sources are intact).
        How and what it reads: :mod:`storage.tus_concat`."""
        cur = self._current(row)
        return FinalAssembly(self, cur, sources, first_bytes_check).run()

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
        put_part(self.store, self.fenced_catalog(fence), cur, fence, Chunk(1, 0, 0), b"")
        done = self.cas(cur, fence, next_part=2, state=uploads.RECEIVED)
        upload_log(done).info("tus_upload_received", length=0, parts=1)
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
            cur = self.cas(cur, fence, state=state)
        self.purge(cur, fence=fence)
        upload_log(cur).info("tus_upload_terminated", state=cur.state)
        return cur

    def purge(self, row: GatewayUpload, *, fence: Fence | None = None) -> None:
        """Remove what the upload left: the pending multipart upload, every object under its
        prefix (tails, orphan tails, a completed video not moved away), the ledger's parts; the
        session is marked aborted. Idempotent; the row is not touched."""
        catalog = self.fenced_catalog(fence)
        if row.upload_id:
            self.store.abort_upload(row.staging_key, row.upload_id)
        # An upload is stored where it was received: once it is media, its video, thumbnail and
        # metadata are the media's (removed only by `reelflow media delete`), never purged.
        media = self.catalog.media_stored_at(self.store.url, row.staging_key)
        kept = set(media_keys(media)) if media is not None else set()
        for key, _ in self.store.list_objects(uploads.upload_prefix(row.id)):
            if key not in kept:
                self.store.delete(key)
        if row.upload_id:
            catalog.forget_parts(row.upload_id)
        if row.session_id and catalog.get_session(row.session_id) is not None:
            catalog.update_session(row.session_id, status="aborted")

    def discard_tails(self, row: GatewayUpload) -> None:
        """Delete the upload's tail objects (after its last byte, every one is stale). The
        video is stored where it was received, its thumbnail and metadata beside it: kept."""
        for key, _ in self.store.list_objects(uploads.upload_prefix(row.id)):
            if uploads.is_tail_key(key):
                self.store.delete(key)

    # --- helpers ------------------------------------------------------------------------------
    def fenced_catalog(self, fence: Fence | None) -> Catalog:
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

    def cas(self, cur: GatewayUpload, fence: Fence | None, **fields: Any) -> GatewayUpload:
        if fence is not None:
            fence.check()
        new = uploads.cas_update(self.catalog.engine, cur.id, cur.version, fence=fence, **fields)
        if new is None:
            raise UploadConflictError("another request changed the upload first", upload_id=cur.id)
        return new

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
                raise past_length(cur, cur.offset + size)
            hasher.update(chunk)
            spool.write(chunk)
        if not checksum.matches(hasher.digest()):
            raise ChecksumMismatchError(
                "the body does not match Upload-Checksum: discarded", upload_id=cur.id
            )
        spool.seek(0)


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
