"""Where a video comes from: a local path, ``s3://bucket/key`` or an ``http(s)://`` URL.

This module resolves a SOURCE string into a ``SourceRef`` (size, a fingerprint that changes
when the content may have changed, a URL ffprobe/ffmpeg can read without a download) and reads
it sequentially in planned chunks. It never holds more than one chunk of the source in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from reelflow.errors import SourceNotFound, TransientStorageError, ValidationError
from reelflow.planning import Chunk
from reelflow.rules import MAGIC_BYTES_NEEDED

HTTP_TIMEOUT_S = (5, 60)
READ_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SourceRef:
    """A resolved source. ``fingerprint`` is stable for unchanged content (size+mtime / ETag)."""

    uri: str
    kind: str  # file | s3 | http
    size_bytes: int
    fingerprint: str
    name: str


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
    scheme = urlparse(source).scheme
    if scheme in ("s3", "http"):
        return scheme
    return "http" if scheme == "https" else "file"


def _split_s3(uri: str) -> tuple[str, str]:
    # Not urlparse: S3 keys may contain '#' and '?', which a URL parser would cut off.
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class SourceReader:
    """Resolves and reads sources; receives its S3 client factory instead of building one."""

    def __init__(self, s3_client_factory: Callable[[], Any], *, presign_ttl_s: int = 3600):
        self._s3_factory = s3_client_factory
        self._s3: Any = None
        self._presign_ttl_s = presign_ttl_s

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3

    # --- resolution ---------------------------------------------------------------------------
    def resolve(self, source: str) -> SourceRef:
        kind = source_kind(source)
        if kind == "s3":
            return self._resolve_s3(source)
        if kind == "http":
            return self._resolve_http(source)
        return self._resolve_file(source)

    def _resolve_file(self, source: str) -> SourceRef:
        path = Path(urlparse(source).path if source.startswith("file:") else source).expanduser()
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise SourceNotFound(f"no such file: {path}") from exc
        except OSError as exc:
            raise ValidationError(
                f"cannot read {path}: {exc.strerror}", reason="unreadable"
            ) from exc
        if path.is_dir():
            raise ValidationError(f"{path} is a directory, not a video file", reason="unreadable")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValidationError(
                f"cannot read {path}: {exc.strerror}", reason="unreadable"
            ) from exc
        real = path.resolve()
        return SourceRef(
            uri=str(real),
            kind="file",
            size_bytes=st.st_size,
            fingerprint=f"file:{real}:{st.st_size}:{st.st_mtime_ns}",
            name=real.name,
        )

    def _resolve_s3(self, source: str) -> SourceRef:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(source)
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404:
                raise SourceNotFound(f"no such object: {source}") from exc
            if status == 403:
                raise ValidationError(f"access denied to {source}", reason="unreadable") from exc
            raise TransientStorageError(f"cannot read {source}: {code}") from exc
        except BotoCoreError as exc:
            raise TransientStorageError(f"cannot reach the source store: {exc}") from exc
        etag = str(head.get("ETag", "")).strip('"')
        size = int(head["ContentLength"])
        return SourceRef(
            uri=source,
            kind="s3",
            size_bytes=size,
            fingerprint=f"s3:{bucket}/{key}:{etag}:{size}:{head.get('VersionId') or ''}",
            name=key.rsplit("/", 1)[-1],
        )

    def _resolve_http(self, source: str) -> SourceRef:
        try:
            # A one-byte range GET: HEAD is not always allowed, and it also proves ranges work.
            resp = requests.get(
                source, headers={"Range": "bytes=0-0"}, stream=True, timeout=HTTP_TIMEOUT_S
            )
            resp.close()
        except requests.RequestException as exc:
            raise TransientStorageError(f"cannot reach {source}: {exc}") from exc
        if resp.status_code in (404, 410):
            raise SourceNotFound(f"{source} answered HTTP {resp.status_code}")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientStorageError(f"{source} answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ValidationError(f"{source} answered HTTP {resp.status_code}", reason="unreadable")
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if resp.status_code == 206 and total.isdigit():
            size = int(total)
        elif resp.status_code == 200 and resp.headers.get("Content-Length", "").isdigit():
            size = int(resp.headers["Content-Length"])
        else:
            raise ValidationError(f"{source} does not report its size", reason="unreadable")
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        return SourceRef(
            uri=source,
            kind="http",
            size_bytes=size,
            fingerprint=f"http:{source}:{validator}:{size}",
            name=urlparse(source).path.rsplit("/", 1)[-1] or "video",
        )

    # --- reading ------------------------------------------------------------------------------
    def probe_url(self, ref: SourceRef) -> str:
        """A location ffprobe/ffmpeg can open with range reads (no download)."""
        if ref.kind == "s3":
            bucket, key = _split_s3(ref.uri)
            url: str = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._presign_ttl_s
            )
            return url
        return ref.uri

    def read_head(self, ref: SourceRef, n: int = MAGIC_BYTES_NEEDED) -> bytes:
        if ref.size_bytes == 0:
            return b""
        return b"".join(self._iter_range(ref, 0, min(n, ref.size_bytes)))

    def iter_chunks(
        self, ref: SourceRef, chunks: tuple[Chunk, ...], buffers: BufferPool | None = None
    ) -> Iterator[tuple[Chunk, bytes | bytearray]]:
        """Read the source once, front to back, yielding each planned chunk's bytes.

        With ``buffers``, a file is read straight into the pool's buffers (the caller gives each
        one back when it is done with it); remote sources always yield fresh ``bytes``.
        """
        if not chunks:
            return
        if ref.kind == "file":
            # Exact-size reads straight into the chunk: no intermediate buffer, no extra copy.
            with Path(ref.uri).open("rb") as fh:
                fh.seek(chunks[0].offset)
                for chunk in chunks:
                    data: bytes | bytearray
                    if buffers is None:
                        data = fh.read(chunk.length)
                        got = len(data)
                    else:
                        data = buffers.take(chunk.length)
                        got = fh.readinto(data)
                    if got != chunk.length:
                        raise ValidationError(
                            f"the file shrank while being read (part {chunk.part_number})",
                            reason="source_changed",
                        )
                    yield chunk, data
            return
        stream = self._iter_range(ref, chunks[0].offset, chunks[-1].end - chunks[0].offset)
        pending = bytearray()
        for chunk in chunks:
            while len(pending) < chunk.length:
                block = next(stream, None)
                if block is None:
                    raise TransientStorageError(
                        f"the source ended early at part {chunk.part_number}",
                        part_number=chunk.part_number,
                    )
                pending += block
            yield chunk, bytes(pending[: chunk.length])
            del pending[: chunk.length]

    def _iter_range(self, ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return iter(())
        if ref.kind == "file":
            return self._iter_file(Path(ref.uri), start, length)
        if ref.kind == "s3":
            return self._iter_s3(ref, start, length)
        return self._iter_http(ref, start, length)

    @staticmethod
    def _iter_file(path: Path, start: int, length: int) -> Iterator[bytes]:
        with path.open("rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                block = fh.read(min(READ_BLOCK_BYTES * 8, remaining))
                if not block:
                    return
                remaining -= len(block)
                yield block

    def _iter_s3(self, ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(ref.uri)
        try:
            body = self.s3.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )["Body"]
            yield from body.iter_chunks(READ_BLOCK_BYTES)
        except (ClientError, BotoCoreError) as exc:
            raise TransientStorageError(f"reading {ref.uri} failed: {exc}") from exc

    @staticmethod
    def _iter_http(ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        try:
            with requests.get(
                ref.uri, headers=headers, stream=True, timeout=HTTP_TIMEOUT_S
            ) as resp:
                if resp.status_code != 206 and not (resp.status_code == 200 and start == 0):
                    raise TransientStorageError(f"{ref.uri} answered HTTP {resp.status_code}")
                yield from resp.iter_content(READ_BLOCK_BYTES)
        except requests.RequestException as exc:
            raise TransientStorageError(f"reading {ref.uri} failed: {exc}") from exc
