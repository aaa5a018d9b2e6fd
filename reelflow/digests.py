"""The whole-file digests of one read of a source: SHA-256 (content identity) and CRC64NVME.

The SHA-256 names the content (``media_id``, the catalog, the object's ``sha256`` tag); the
CRC64NVME is what S3 checks a full-object multipart upload against at completion, and reports
back from HeadObject, so the store verifies every byte it holds without a second pass over them
(the server-side copy it replaces hashed the whole object again). Both come from the same
bytes in the same call, so they cannot describe different reads.

Pure: no I/O. awscrt's CRC is incremental (``crc64nvme(data, previous)``), so a file is digested
in the blocks it is read in, never held whole.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from awscrt import checksums


def crc64nvme_b64(crc: int) -> str:
    """S3's spelling of a CRC64NVME: base64 of its 8 big-endian bytes."""
    return base64.b64encode(struct.pack(">Q", crc)).decode()


def part_crc64nvme_b64(data: bytes | bytearray | memoryview) -> str:
    """The CRC64NVME of one part's bytes, as UploadPart carries it."""
    return crc64nvme_b64(checksums.crc64nvme(data))


class WholeDigest:
    """``update`` with the file's bytes in order; then ``sha256_hex`` and ``crc64nvme_b64``."""

    __slots__ = ("_crc", "_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha.update(data)
        self._crc = checksums.crc64nvme(data, self._crc)
        self.size += len(data)

    @property
    def sha256_hex(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc64nvme_b64(self) -> str:
        return crc64nvme_b64(self._crc)
