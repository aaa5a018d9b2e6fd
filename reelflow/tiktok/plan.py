"""Pure planning of a TikTok FILE_UPLOAD: chunk size, chunk count and the byte range of each PUT.

This module owns the arithmetic TikTok's init endpoint checks (``video_size``, ``chunk_size``,
``total_chunk_count``) and the ``Content-Range`` of every chunk PUT. It must not do I/O: no
requests, boto3, prefect or file access. Callers pass sizes in and get plain data back.

The limits are the *safe* ones from the research notes (addendum), deliberately stricter than
TikTok's documented "5 MB / 64 MB / 128 MB": since August 2026 TikTok has rejected some
multi-chunk inits whose sizes follow the documented rules ("The chunk size is invalid"), and the
docs never say whether "MB" is 10^6 or 2^20 bytes. So the lower bound is binary (5 MiB) and the
upper bounds are decimal (64 MB, 128 MB): each is valid under either reading.

Rules every plan obeys (see :func:`check_tiktok_chunk_rules`):

* ``0 < video_size <= 4 GiB``;
* below 5 MiB the whole file is one chunk (``chunk_size == video_size``);
* otherwise ``5 MiB <= chunk_size <= 64,000,000``;
* ``total_chunk_count == video_size // chunk_size`` (floor: the remainder is folded into the last
  chunk, never sent as a short extra chunk), and ``1 <= total_chunk_count <= 1000``;
* the last chunk is ``video_size - (n - 1) * chunk_size`` bytes and at most 128,000,000;
* a single chunk is the whole file (``chunk_size == video_size``), so a file above 64,000,000
  bytes is never sent as one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from reelflow.errors import InputRejectedError, IntegrityCheckError

MIB = 1024 * 1024
MIN_CHUNK_BYTES = 5 * MIB  # 5,242,880: "5 MB" under the binary reading, so safe under both
MAX_CHUNK_BYTES = 64_000_000  # "64 MB" under the decimal reading, so safe under both
MAX_FINAL_CHUNK_BYTES = 128_000_000  # the last chunk may absorb the remainder, up to "128 MB"
MAX_CHUNK_COUNT = 1000
MAX_VIDEO_BYTES = 4 * 1024 * MIB  # TikTok's "4 GB" maximum, read as 4 GiB per the project brief
DEFAULT_PREFERRED_CHUNK_BYTES = 10_000_000  # what Postiz and the official example use


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    """One PUT of the upload: 0-based ``index``, inclusive byte range, and its length.

    A dataclass rather than a NamedTuple because a field named ``index`` would shadow
    ``tuple.index``; it still unpacks like ``(index, first_byte, last_byte, length)``.
    """

    index: int
    first_byte: int
    last_byte: int  # inclusive, as in Content-Range
    length: int

    def __iter__(self) -> Iterator[int]:
        return iter((self.index, self.first_byte, self.last_byte, self.length))


@dataclass(frozen=True)
class TikTokUploadPlan:
    """The sizes sent to ``/video/init/`` and the byte range of every chunk, in upload order."""

    video_size: int
    chunk_size: int
    total_chunk_count: int
    chunks: tuple[PlannedChunk, ...]

    def source_info(self) -> dict[str, object]:
        """The ``source_info`` object of a FILE_UPLOAD init request."""
        return file_upload_source(self.video_size, self.chunk_size, self.total_chunk_count)


def file_upload_source(
    video_size: int, chunk_size: int, total_chunk_count: int
) -> dict[str, object]:
    """The ``source_info`` object of a FILE_UPLOAD init request (Direct Post or inbox)."""
    return {
        "source": "FILE_UPLOAD",
        "video_size": video_size,
        "chunk_size": chunk_size,
        "total_chunk_count": total_chunk_count,
    }


def check_tiktok_chunk_rules(video_size: int, chunk_size: int, total_chunk_count: int) -> None:
    """Raise :class:`InputRejectedError` unless the three init numbers obey the safe rules."""
    _check_video_size(video_size)
    if video_size < MIN_CHUNK_BYTES:
        if chunk_size != video_size or total_chunk_count != 1:
            raise _invalid(
                f"a video under {MIN_CHUNK_BYTES} bytes must be sent whole "
                f"(chunk_size == video_size == {video_size}, total_chunk_count == 1)",
                video_size,
                chunk_size,
            )
        return
    if not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES:
        raise _invalid(
            f"chunk_size {chunk_size} is outside [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}]",
            video_size,
            chunk_size,
        )
    expected_count = video_size // chunk_size
    if total_chunk_count != expected_count:
        raise _invalid(
            f"total_chunk_count {total_chunk_count} != floor({video_size} / {chunk_size}) "
            f"= {expected_count}",
            video_size,
            chunk_size,
        )
    if not 1 <= total_chunk_count <= MAX_CHUNK_COUNT:
        raise _invalid(
            f"total_chunk_count {total_chunk_count} is outside [1, {MAX_CHUNK_COUNT}]",
            video_size,
            chunk_size,
        )
    if total_chunk_count == 1 and chunk_size != video_size:
        # floor() allows it, but TikTok rejects a lone chunk smaller than the file (simstudio
        # PR #5568: 10-20 MB files sent with chunk_size 10 MB and count 1).
        raise _invalid(
            f"a single-chunk upload must have chunk_size == video_size ({video_size})",
            video_size,
            chunk_size,
        )
    final = video_size - (total_chunk_count - 1) * chunk_size
    if final > MAX_FINAL_CHUNK_BYTES:
        raise _invalid(
            f"the final chunk would be {final} bytes (> {MAX_FINAL_CHUNK_BYTES})",
            video_size,
            chunk_size,
        )


def plan_tiktok_upload(
    video_size: int, preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES
) -> TikTokUploadPlan:
    """Plan an upload of ``video_size`` bytes, using ``preferred_chunk_bytes`` where it is safe.

    The preference is clamped into ``[MIN_CHUNK_BYTES, MAX_CHUNK_BYTES]`` (as s3transfer's
    ``ChunksizeAdjuster`` clamps part sizes) and grown if the count would pass 1000. A file that
    would come out as one chunk is sent whole with ``chunk_size == video_size``: TikTok rejects a
    single-chunk init whose ``chunk_size`` is smaller than the file (simstudio PR #5568). A file
    over 64 MB that would come out as one chunk is split in two halves instead.
    """
    _check_video_size(video_size)
    if preferred_chunk_bytes <= 0:
        raise InputRejectedError(
            f"preferred_chunk_bytes must be positive, got {preferred_chunk_bytes}",
            reason="invalid_chunk_plan",
        )
    if video_size < MIN_CHUNK_BYTES:
        return _build(video_size, video_size)

    chunk = min(max(preferred_chunk_bytes, MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
    # Ceil division: the smallest chunk that keeps floor(size / chunk) <= 1000. With the 4 GiB cap
    # this never binds (4 GiB / 5 MiB = 819 chunks), but the rule is TikTok's, not a consequence.
    chunk = max(chunk, -(-video_size // MAX_CHUNK_COUNT))
    if video_size // chunk <= 1:
        # size < 2 * chunk <= 128 MB here, so half the file is within [32 MB, 64 MB].
        chunk = video_size if video_size <= MAX_CHUNK_BYTES else video_size // 2
    return _build(video_size, chunk)


def plan_tiktok_upload_with_chunk_size(video_size: int, chunk_size: int) -> TikTokUploadPlan:
    """Plan with exactly ``chunk_size`` (no adjusting); raise :class:`InputRejectedError` if unsafe.

    Use it to rebuild the plan a session was initialised with (the ledger stores ``chunk_size``),
    or to replay TikTok's worked example (50,000,123 bytes in 10,000,000-byte chunks).
    """
    _check_video_size(video_size)
    if chunk_size <= 0:
        raise _invalid(f"chunk_size must be positive, got {chunk_size}", video_size, chunk_size)
    return _build(video_size, chunk_size)


def content_range(chunk: PlannedChunk, total: int) -> str:
    """The PUT's ``Content-Range`` value: ``bytes {first}-{last}/{total}``, last byte inclusive."""
    return f"bytes {chunk.first_byte}-{chunk.last_byte}/{total}"


class ContentRange(NamedTuple):
    """A parsed ``Content-Range`` value; ``first``/``last`` are None for ``bytes */total``."""

    first: int | None
    last: int | None  # inclusive
    total: int | None


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse ``bytes a-b/total`` (or ``bytes */total``); None when absent or malformed.

    TikTok's PUT replies carry ``Content-Range: bytes 0-{UPLOADED_BYTES}/{TOTAL}``; the docs do
    not say whether the middle number is a last-byte index or a count. We read it the HTTP way,
    as the inclusive last byte, and callers reconcile with ``status/fetch`` when unsure.
    """
    if not value:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last, total = match.groups()
    return ContentRange(
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total != "*" else None,
    )


def first_unacknowledged_chunk(plan: TikTokUploadPlan, uploaded_bytes: int) -> int:
    """Index of the chunk to resume from, given the ``uploaded_bytes`` TikTok reports.

    ``uploaded_bytes`` is read as a byte *count* (TikTok holds bytes ``0 .. uploaded_bytes - 1``),
    so the next byte TikTok needs is at offset ``uploaded_bytes``. We resume from the chunk that
    contains that offset. When the count is not on a chunk boundary (TikTok should never keep part
    of a chunk, since each PUT is all-or-nothing) we still resume from the start of the containing
    chunk: the plan's chunks are the only ranges TikTok accepts, and a 416 reply to that PUT tells
    the caller the server's real position. Returns ``plan.total_chunk_count`` when every byte has
    been acknowledged.
    """
    if uploaded_bytes < 0 or uploaded_bytes > plan.video_size:
        raise IntegrityCheckError(
            f"TikTok reports {uploaded_bytes} uploaded bytes for a {plan.video_size}-byte plan",
            uploaded_bytes=uploaded_bytes,
            video_size=plan.video_size,
        )
    if uploaded_bytes == plan.video_size:
        return plan.total_chunk_count
    # The last chunk is longer than chunk_size, so offsets past (n - 1) * chunk_size belong to it.
    return min(uploaded_bytes // plan.chunk_size, plan.total_chunk_count - 1)


def _build(video_size: int, chunk_size: int) -> TikTokUploadPlan:
    count = video_size // chunk_size
    check_tiktok_chunk_rules(video_size, chunk_size, count)
    chunks = []
    for index in range(count):
        first = index * chunk_size
        # The final chunk absorbs the remainder (floor count), so it ends at the last byte.
        last = video_size - 1 if index == count - 1 else first + chunk_size - 1
        chunks.append(PlannedChunk(index, first, last, last - first + 1))
    return TikTokUploadPlan(video_size, chunk_size, count, tuple(chunks))


def _check_video_size(video_size: int) -> None:
    if not 0 < video_size <= MAX_VIDEO_BYTES:
        raise InputRejectedError(
            f"video size {video_size} bytes is outside TikTok's range (1 .. {MAX_VIDEO_BYTES})",
            reason="video_size_out_of_range",
            video_size=video_size,
        )


def _invalid(message: str, video_size: int, chunk_size: int) -> InputRejectedError:
    return InputRejectedError(
        message, reason="invalid_chunk_plan", video_size=video_size, chunk_size=chunk_size
    )
