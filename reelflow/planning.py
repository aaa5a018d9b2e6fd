"""Pure planning: chunk plans for multipart uploads, content-addressed keys, media rules.

Nothing here does I/O or imports boto3, requests, sqlmodel, ffmpeg or prefect. The upload
code asks this module *what* to send; it never decides sizes itself.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

MIB = 1024 * 1024
S3_MIN_PART_BYTES = 5 * MIB  # every part but the last (S3 rejects smaller ones at completion)
S3_MAX_PART_BYTES = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000
MAX_SOURCE_BYTES = 4 * 1024 * MIB  # TikTok's limit; reelflow refuses anything it could not post


@dataclass(frozen=True)
class Chunk:
    """One part of a multipart upload: 1-based ``part_number`` over ``[offset, offset+length)``."""

    part_number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ChunkPlan:
    size_bytes: int
    chunk_size: int
    chunks: tuple[Chunk, ...]

    @property
    def count(self) -> int:
        return len(self.chunks)


def effective_chunk_size(size_bytes: int, requested: int) -> int:
    """Clamp ``requested`` into S3's limits and grow it until the file fits in 10 000 parts.

    Mirrors s3transfer's ChunksizeAdjuster: doubling keeps sizes round, which keeps the
    part sizes of a resumed run equal to the first run's for the same request.
    """
    size = max(S3_MIN_PART_BYTES, min(requested, S3_MAX_PART_BYTES))
    while size_bytes > size * S3_MAX_PARTS:
        size *= 2
    return min(size, S3_MAX_PART_BYTES)


def upload_buffer_bytes(requested_chunk_bytes: int, concurrency: int) -> int:
    """Memory one run's upload holds: ``concurrency + 1`` part buffers (one more part is read
    while ``concurrency`` are on the wire), each at least S3's minimum part size.

    Sources are at most 4 GiB, so 10 000 parts of 5 MiB always suffice and the part size never
    grows past the requested one (or 5 MiB) for a real source.
    """
    part = max(S3_MIN_PART_BYTES, min(requested_chunk_bytes, S3_MAX_PART_BYTES))
    return part * (concurrency + 1)


def plan_chunks(size_bytes: int, requested_chunk_bytes: int) -> ChunkPlan:
    """Split ``size_bytes`` into parts covering every byte once (an empty file is one empty part)."""
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")
    if requested_chunk_bytes <= 0:
        raise ValueError("requested_chunk_bytes must be > 0")
    chunk_size = effective_chunk_size(size_bytes, requested_chunk_bytes)
    chunks = [
        Chunk(part_number=i + 1, offset=off, length=min(chunk_size, size_bytes - off))
        for i, off in enumerate(range(0, size_bytes, chunk_size))
    ] or [Chunk(1, 0, 0)]
    return ChunkPlan(size_bytes=size_bytes, chunk_size=chunk_size, chunks=tuple(chunks))


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's multipart ``ChecksumSHA256``: base64(sha256(concat(part digests))) + ``-N``."""
    outer = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(outer).decode()}-{len(part_digests)}"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# --- keys ------------------------------------------------------------------------------------

CONTAINER_EXT = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "mkv"}
CONTENT_TYPES = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
}


def media_id_for(sha256_hex: str) -> str:
    """Media ids come from content identity, so the same bytes always get the same id."""
    return f"m_{sha256_hex[:20]}"


VIDEOS_PREFIX = "videos/"


def video_key(sha256_hex: str, ext: str) -> str:
    """The content-addressed key: where a moved object goes (the gateway's uploads, and
    sessions staged before uploads were created at their final key)."""
    return f"{VIDEOS_PREFIX}{sha256_hex}.{ext}"


def upload_key(session_id: str, ext: str) -> str:
    """The video's final key, named by an id known before the first byte is sent.

    The multipart upload is created here, so completing it is the last write of the video's
    bytes (no rename, no server-side copy). ``session_id`` is deterministic per source, store
    and chunk size (:func:`session_id_for`), so a resumed run finds the same key.
    """
    return f"{VIDEOS_PREFIX}{session_id}.{ext}"


def staging_key(session_id: str, ext: str) -> str:
    """The layout of sessions opened before :func:`upload_key`: still resumed and swept."""
    return f"staging/{session_id}/source.{ext}"


def sidecar_key(video: str, ext: str) -> str:
    """The thumbnail (``jpg``) or metadata (``json``) beside ``video``: same stem."""
    head, _, name = video.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}.{ext}" if head else f"{stem}.{ext}"


def is_final_video_key(key: str) -> bool:
    """An upload at its final key: the store checks it with a full-object checksum
    (CRC64NVME) instead of the per-part SHA-256 composite of staged and gateway uploads."""
    return key.startswith(VIDEOS_PREFIX)


def final_video_key(staged_key: str, sha256_hex: str, ext: str) -> str:
    """Where the video is stored: where it was uploaded, or (an older session still staged
    under ``staging/``) its content key, to be moved to."""
    return staged_key if is_final_video_key(staged_key) else video_key(sha256_hex, ext)


def session_id_for(source_fingerprint: str, store_url: str, chunk_size: int) -> str:
    """An upload session is identified by what is sent, where, and how it is cut."""
    raw = f"{source_fingerprint}|{store_url}|{chunk_size}".encode()
    return "u_" + hashlib.sha256(raw).hexdigest()[:24]


# --- resume -----------------------------------------------------------------------------------


class PartLike(Protocol):
    @property
    def part_number(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def sha256_b64(self) -> str | None: ...
    @property
    def crc64nvme_b64(self) -> str | None: ...


@dataclass(frozen=True)
class Reconciled:
    """The ledger checked against the store: ``confirmed`` parts need not be sent again."""

    confirmed: dict[int, PartLike]
    forget: frozenset[int]  # in the ledger, but the store does not hold them (or holds others)
    adopted: frozenset[int]  # the store holds them, the ledger missed them (killed mid-write)


def reconcile_parts(
    plan: ChunkPlan, ledger: Mapping[int, PartLike], remote: Mapping[int, PartLike]
) -> Reconciled:
    """The store is the truth; the ledger is a record of what this code believed it sent."""
    sizes = {c.part_number: c.length for c in plan.chunks}
    confirmed = {n: p for n, p in remote.items() if sizes.get(n) == p.size}
    forget = {n for n, p in ledger.items() if n not in confirmed or confirmed[n].etag != p.etag}
    adopted = {n for n in confirmed if n not in ledger}
    return Reconciled(confirmed=confirmed, forget=frozenset(forget), adopted=frozenset(adopted))


def check_parts_against_plan(
    plan: ChunkPlan,
    remote: Mapping[int, PartLike],
    digests_b64: Mapping[int, str],
    acknowledged: Mapping[int, PartLike] | None = None,
) -> list[str]:
    """Every reason the store's parts differ from the plan (empty when they match exactly).

    ``acknowledged`` is the ledger: the ETag the store gave back when each part was sent. A
    different ETag now means someone replaced the part, even on servers that report no
    per-part checksum. A full-object upload's parts carry a CRC64NVME instead of a SHA-256 on
    the wire: the store's CRC must be the one it acknowledged when it took the part.
    """
    problems = []
    expected = {c.part_number: c for c in plan.chunks}
    if set(remote) != set(expected):
        missing = sorted(set(expected) - set(remote))
        extra = sorted(set(remote) - set(expected))
        problems.append(f"part numbers differ: missing {missing[:10]}, unexpected {extra[:10]}")
    for n, chunk in expected.items():
        part = remote.get(n)
        if part is None:
            continue
        if part.size != chunk.length:
            problems.append(f"part {n}: {part.size} bytes, planned {chunk.length}")
        if part.sha256_b64 and part.sha256_b64 != digests_b64.get(n):
            problems.append(f"part {n}: checksum differs from the source's")
        acked = (acknowledged or {}).get(n)
        if (
            acked is not None
            and acked.crc64nvme_b64
            and part.crc64nvme_b64
            and acked.crc64nvme_b64 != part.crc64nvme_b64
        ):
            problems.append(f"part {n}: CRC64NVME differs from the one acknowledged")
        if acked is not None and acked.etag != part.etag:
            problems.append(f"part {n}: ETag differs from the one acknowledged to this upload")
        elif acknowledged is not None and acked is None:
            problems.append(f"part {n}: in the store but never acknowledged to this upload")
    return problems


# --- concatenation: a final multipart upload made of other uploads' objects -----------------


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of source ``source`` (an index into the sources) from ``offset``."""

    source: int
    offset: int
    length: int


@dataclass(frozen=True)
class ConcatPart:
    """One part of a concatenation: ``chunk`` of the whole, made of ``pieces`` in order.

    ``copy``: the store copies the one piece itself (S3 UploadPartCopy), no byte passes
    through the caller; else the pieces are read and uploaded as one part (the fallback for
    sources too small to be a part). ``source_part``: the piece is exactly that part (1-based)
    of its source's own staged upload, so its SHA-256 is already in that source's ledger.
    """

    chunk: Chunk
    pieces: tuple[Piece, ...]
    copy: bool
    source_part: int | None = None

    @property
    def merged_bytes(self) -> int:
        """Bytes this part sends through the caller (0 for a store-side copy)."""
        return 0 if self.copy else self.chunk.length


def source_parts(length: int, part_size: int) -> list[Chunk]:
    """How an upload of ``length`` bytes was staged: parts of ``part_size``, the last shorter
    (a 0-byte upload is one empty part)."""
    if part_size <= 0:
        raise ValueError(f"part size must be positive, got {part_size}")
    return [
        Chunk(i + 1, off, min(part_size, length - off))
        for i, off in enumerate(range(0, length, part_size))
    ] or [Chunk(1, 0, 0)]


def plan_concatenation(
    sources: Sequence[tuple[int, int]], *, min_part: int = S3_MIN_PART_BYTES
) -> tuple[ConcatPart, ...]:
    """The parts of a multipart upload holding the ``sources`` (``(length, part_size)`` each,
    staged as :func:`source_parts` cuts them, then completed into objects) one after another.

    Every source part of at least ``min_part`` bytes becomes a store-side copy of itself (its
    SHA-256 known). A source's last, short part (< ``min_part``, not the very end) is copied
    together with the part before it, one range of the same object (its SHA-256 must then be
    computed: a read, no write). Only a source too small to be a part on its own is read and
    sent, merged through memory with what follows it until the merge reaches ``min_part``
    (taking whole source parts, so the rest of the next source stays aligned to its parts).
    A merge is below ``min_part`` plus one source part. Empty sources add nothing.

    Raises ``ValueError`` for a plan S3 could not take (over ``S3_MAX_PARTS`` parts).
    """
    total = sum(length for length, _ in sources)
    out: list[ConcatPart] = []
    pending: list[Piece] = []
    at = 0  # offset in the whole where the next part starts

    def emit(pieces: tuple[Piece, ...], copy: bool, source_part: int | None) -> None:
        nonlocal at
        length = sum(p.length for p in pieces)
        out.append(ConcatPart(Chunk(len(out) + 1, at, length), pieces, copy, source_part))
        at += length

    reached = 0  # offset in the whole reached by the pieces handed out so far
    for index, (length, part_size) in enumerate(sources):
        if length == 0:
            continue
        for part in source_parts(length, part_size):
            piece = Piece(index, part.offset, part.length)
            reached += part.length
            if pending:
                pending.append(piece)
                if sum(p.length for p in pending) >= min_part:
                    emit(tuple(pending), False, None)
                    pending = []
                continue
            if part.length >= min_part or reached == total:
                emit((piece,), True, part.part_number)
                continue
            prev = out[-1] if out else None
            if (
                prev is not None
                and prev.copy
                and prev.pieces[0].source == index
                and prev.pieces[0].offset + prev.chunk.length == part.offset
                and prev.chunk.length + part.length <= S3_MAX_PART_BYTES
            ):
                first = prev.pieces[0]
                out[-1] = ConcatPart(
                    Chunk(
                        prev.chunk.part_number, prev.chunk.offset, prev.chunk.length + part.length
                    ),
                    (Piece(index, first.offset, first.length + part.length),),
                    True,
                    None,
                )
                at += part.length
                continue
            pending.append(piece)
    if pending:
        emit(tuple(pending), False, None)
    if len(out) > S3_MAX_PARTS:
        raise ValueError(f"a concatenation of {len(out)} parts is over S3's {S3_MAX_PARTS}")
    return tuple(out)
