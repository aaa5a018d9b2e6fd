"""Where a video comes from: a local path, ``s3://bucket/key`` or an ``http(s)://`` URL.

This package resolves a SOURCE string into a ``SourceRef`` (size, a fingerprint that changes
when the content may have changed, the version it pins) and reads it in ranges. One module per
job: ``ref`` (the ``SourceRef`` core, kinds, chunk buffers), ``files``, ``s3`` and ``http`` (one
kind of source each: resolve, pin, read), ``reader`` (``SourceReader``: dispatch, the read
deadline, chunked and random-offset reads). The safety rules are drawn in ``reader``'s
docstring. Import the names from here.
"""

from reelflow.sources.reader import HTTP_TIMEOUT_S, SourceReader
from reelflow.sources.ref import (
    DEFAULT_READ_DEADLINE_S,
    READ_BLOCK_BYTES,
    BufferPool,
    SourceRef,
    source_kind,
)

__all__ = [
    "DEFAULT_READ_DEADLINE_S",
    "HTTP_TIMEOUT_S",
    "READ_BLOCK_BYTES",
    "BufferPool",
    "SourceReader",
    "SourceRef",
    "source_kind",
]
