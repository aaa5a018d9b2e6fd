"""The object-store protocol every store implements (local filesystem, S3).

A store only moves bytes and answers what it holds; it never plans chunks and never touches
the catalog. Staged multipart uploads are the one way large objects get in, so a killed run
can resume from what the store says it holds (``list_parts``); a part may also be copied
from an object the store already holds (``copy_part``), which moves no byte through the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from reelflow.planning import Chunk


@dataclass(frozen=True)
class PartReceipt:
    """What the store acknowledged for one part."""

    part_number: int
    size: int
    etag: str
    sha256_b64: str | None
    # The part's CRC64NVME as the store reported it (S3 full-object uploads), else None.
    crc64nvme_b64: str | None = None


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str
    initiated: datetime


@runtime_checkable
class ObjectStore(Protocol):
    url: str

    def create_upload(self, key: str, content_type: str) -> str: ...

    def upload_part(
        self, key: str, upload_id: str, chunk: Chunk, data: bytes | bytearray, sha256_b64: str
    ) -> PartReceipt: ...

    def copy_part(
        self, key: str, upload_id: str, chunk: Chunk, src_key: str, src_offset: int
    ) -> PartReceipt:
        """Part ``chunk.part_number`` (at ``chunk.offset`` of the upload) made of the
        ``chunk.length`` bytes of the whole object ``src_key`` from ``src_offset``, copied by
        the store itself (S3 UploadPartCopy): none of them passes through this process. The
        receipt's ``sha256_b64`` is the SHA-256 the store computed over the copy, or None."""
        ...

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartReceipt]: ...

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartReceipt],
        *,
        crc64nvme_b64: str | None = None,
    ) -> str | None:
        """Assemble; returns the store's composite checksum when it computes one.

        ``crc64nvme_b64``: the whole file's CRC64NVME as the client read it. A store that keeps
        full-object checksums (S3, for uploads at a final video key) completes against it and
        checks what it then holds: a mismatch deletes the object and raises
        IntegrityCheckError. Others ignore it (the caller verifies by reading back)."""
        ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...

    def list_uploads(self, prefix: str = "") -> list[PendingUpload]: ...

    def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified) of whole objects under ``prefix``."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None: ...

    def put_file(self, key: str, path: Path, content_type: str) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def mark_stored(self, key: str, sha256_hex: str) -> None:
        """Say on the object that it is verified and recorded (S3: object tags, a metadata
        call): until then an object at a final key is ``pending`` and no public read serves it."""
        ...

    def move(self, src_key: str, dst_key: str) -> str | None:
        """Move within the store; returns the stored object's full SHA-256 (base64) if known."""
        ...

    def delete(self, key: str) -> None: ...

    def read_url(self, key: str) -> str:
        """A path or URL ffmpeg can read with ranges (presigned for S3)."""
        ...

    def uri(self, key: str) -> str: ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    def sha256_hex(self, key: str) -> str:
        """Read the object back and hash it (verification, not the hot path)."""
        ...
