"""The core of a source: the ``SourceRef`` a SOURCE string resolves to, its kind, and the
chunk buffers a reader fills. Pure data: no I/O here (the readers live in the sibling modules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

READ_BLOCK_BYTES = 1024 * 1024
DEFAULT_READ_DEADLINE_S = 3600.0
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class SourceRef:
    """A resolved source, pinned to one version.

    ``uri`` is what reads use and may carry credentials (URL userinfo, a token in the query):
    it is never shown or persisted. ``public_uri``, ``name`` and ``fingerprint`` hold no secret.
    ``fingerprint`` is stable for unchanged content (size+mtime / ETag / VersionId).
    """

    uri: str = field(repr=False)
    kind: str  # file | s3 | http
    size_bytes: int
    fingerprint: str
    name: str
    public_uri: str = ""
    etag: str | None = None  # S3 (quoted, as S3 returns it) or a strong HTTP ETag
    last_modified: str | None = None  # HTTP, when there is no strong ETag
    version_id: str | None = None  # S3, versioned buckets
    file_id: tuple[int, int, int, int] | None = None  # (st_dev, st_ino, st_size, st_mtime_ns)


class BufferPool:
    """Chunk buffers used over and over: ``count`` of them, whatever the file's size.

    Reading into a recycled buffer costs no allocation and no page faults (a fresh 8 MiB
    ``bytes`` costs both: measured 0.21 s vs 0.70 s to read 1.1 GB when glibc maps every chunk
    anew), and the process holds exactly ``count x size`` bytes of chunks, never the heap
    fragments that freed chunk-sized buffers leave behind. A length other than ``size`` (the
    last chunk) gets a buffer of its own.
    """

    def __init__(self, size: int, count: int) -> None:
        self.size, self.count = size, count
        self._free: list[bytearray] = []
        self._made = 0

    def take(self, length: int) -> bytearray:
        if length != self.size:
            return bytearray(length)
        if self._free:
            return self._free.pop()
        if self._made >= self.count:
            raise RuntimeError(f"all {self.count} chunk buffers are in use")
        self._made += 1
        return bytearray(self.size)

    def give(self, buffer: bytes | bytearray) -> None:
        if isinstance(buffer, bytearray) and len(buffer) == self.size:
            self._free.append(buffer)


def source_kind(source: str) -> str:
    """``s3``, ``http`` (http and https), ``file`` (a path) or ``refused`` (any other scheme,
    ``file:`` URLs included: local sources are plain paths)."""
    m = _SCHEME.match(source)
    scheme = m.group(1).lower() if m else ""
    if scheme == "s3":
        return "s3"
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file" or (len(scheme) > 1 and source[len(scheme) + 1 :].startswith("//")):
        return "refused"
    return "file"
