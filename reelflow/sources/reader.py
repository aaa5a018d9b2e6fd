"""``SourceReader``: resolves a SOURCE string (a local path, ``s3://bucket/key`` or an
``http(s)://`` URL) into a ``SourceRef`` and reads it in ranges, charging every wait to the
source's read deadline. The per-kind rules (resolve, pin, read) live in ``files``, ``s3`` and
``http``; this module dispatches to them and owns the deadline.

It resolves a SOURCE into a ``SourceRef`` (size, a fingerprint that changes
when the content may have changed, the version it pins) and reads it in ranges: sequentially in
planned chunks for the upload, and at random offsets for ffprobe/ffmpeg through the loopback
relay (``open_media``). It never holds more than one chunk of the source in memory.

Safety rules it owns (issue 8 §1, §2, §6):

* **One version per run.** ``resolve`` pins the version and every later read checks it:
  a file by (device, inode, size, mtime), opened without following a swapped-in symlink;
  S3 by ``VersionId`` (versioned buckets: every GET reads the pinned version, so an overwrite
  cannot reach the run) or else ``IfMatch`` on the ETag; HTTP by a strong ``ETag`` sent back as
  ``If-Match`` + ``If-Range``, or else ``Last-Modified`` sent back as ``If-Unmodified-Since`` +
  ``If-Range``, and the answer's own validator, status (206 only) and ``Content-Range``
  compared with the pin. A mismatch is ``SourceChangedError``. **A URL without a validator (no
  strong ETag, no Last-Modified) is refused** (``unpinnable_source``): nothing could tell a
  resumed upload that the bytes changed under it, and the parts of two versions would be
  joined into one object. Servers that ignore ``Range`` are refused (``no_ranges``) for the
  same reason: a 200 to a ranged, ``If-Range`` request is how a change shows.
* **No SSRF.** Only ``http``/``https`` URLs (and ``s3://`` through the configured client);
  ``file:`` and every other scheme are refused; connections and redirects go through
  ``reelflow.safehttp`` (``reelflow.netguard`` rules). Credentials in a URL stay in
  ``SourceRef.uri``, which is used for reads only; ``public_uri`` (no userinfo, query values
  ``REDACTED``), ``name`` and ``fingerprint`` are what may be shown or persisted.
* **Inputs that hang.** Non-regular files (FIFO, socket, device) are refused after a ``stat``
  and opened with ``O_NONBLOCK``, so ``open()`` never waits for a writer; NUL in a source is
  refused. Time spent reading one source is bounded by ``read_deadline_s`` (the setting
  ``REELFLOW_SOURCE_READ_DEADLINE_S``) in total, across validation and upload, counting only
  the time spent waiting for the source, not for the store: past it reads fail with
  ``SourceTimeoutError`` (not retryable: a retry would spend the whole budget again).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from reelflow import netguard
from reelflow.errors import (
    InputRejectedError,
    SourceChangedError,
    SourceRefusedError,
    SourceTimeoutError,
    TransientStorageError,
)
from reelflow.media import MediaInput
from reelflow.planning import Chunk
from reelflow.relay import ByteRelay
from reelflow.rules import MAGIC_BYTES_NEEDED
from reelflow.safehttp import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, GuardedHTTP
from reelflow.sources.files import check_unchanged, iter_file, open_pinned, resolve_file
from reelflow.sources.http import iter_http, resolve_http
from reelflow.sources.ref import BufferPool, SourceRef, source_kind
from reelflow.sources.s3 import iter_s3, resolve_s3

HTTP_TIMEOUT_S = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)


class SourceReader:
    """Resolves and reads sources; receives its S3 client factory instead of building one.

    ``allowed_hosts`` is ``REELFLOW_SOURCE_ALLOWED_HOSTS``; ``resolver`` and ``clock`` are for
    tests (a stub resolver maps names to private addresses without connecting; a fake clock
    makes the read deadline deterministic). Both settings are required: the entry point's
    ``Settings`` give them (``storage.runtime``), so no reader exists without the allowlist.
    """

    def __init__(
        self,
        s3_client_factory: Callable[[], Any],
        *,
        presign_ttl_s: int = 3600,
        allowed_hosts: str,
        read_deadline_s: float,
        resolver: netguard.Resolver = netguard.system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s3_factory = s3_client_factory
        self._s3: Any = None
        self._presign_ttl_s = presign_ttl_s
        self.allowlist = netguard.parse_allowlist(allowed_hosts)
        self.http = GuardedHTTP(allowlist=self.allowlist, resolver=resolver)
        self.read_deadline_s = float(read_deadline_s)
        self._clock = clock
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3

    # --- resolution ---------------------------------------------------------------------------
    def resolve(self, source: str) -> SourceRef:
        if "\x00" in source:
            raise InputRejectedError("the source contains a NUL byte", reason="bad_path")
        kind = source_kind(source)
        if kind == "refused":
            scheme = source.split(":", 1)[0].lower()
            raise SourceRefusedError(
                f"{scheme}: sources are not allowed (a local path, s3://bucket/key or an "
                "http(s):// URL)",
                reason="scheme_refused",
            )
        if kind == "s3":
            ref = resolve_s3(self.s3, source)
        elif kind == "http":
            ref = resolve_http(source, lambda url, headers: self._timed_get(None, url, headers))
        else:
            ref = resolve_file(source)
        self._start_clock(ref)
        return ref

    # --- the read deadline ---------------------------------------------------------------------
    def _start_clock(self, ref: SourceRef) -> None:
        with self._lock:
            self._spent.setdefault(ref.fingerprint, 0.0)

    def _remaining(self, ref: SourceRef | None) -> float:
        if ref is None:
            return self.read_deadline_s
        with self._lock:
            spent = self._spent.get(ref.fingerprint, 0.0)
        left = self.read_deadline_s - spent
        if left <= 0:
            raise self._deadline_error(ref)
        return left

    def _deadline_error(self, ref: SourceRef) -> SourceTimeoutError:
        return SourceTimeoutError(
            f"reading {ref.public_uri or ref.name} took more than {self.read_deadline_s:g}s "
            "in total (REELFLOW_SOURCE_READ_DEADLINE_S)"
        )

    def _charge(self, ref: SourceRef | None, seconds: float) -> None:
        if ref is not None:
            with self._lock:
                self._spent[ref.fingerprint] = self._spent.get(ref.fingerprint, 0.0) + seconds

    def _timed(self, ref: SourceRef, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """``blocks`` with the time spent waiting for each one charged to the deadline."""
        try:
            while True:
                self._remaining(ref)
                t0 = self._clock()
                try:
                    block = next(blocks)
                except StopIteration:
                    self._charge(ref, self._clock() - t0)
                    return
                except Exception as exc:
                    self._charge(ref, self._clock() - t0)
                    if self._spent.get(ref.fingerprint, 0.0) >= self.read_deadline_s:
                        raise self._deadline_error(ref) from exc  # not "connection failed"
                    raise
                self._charge(ref, self._clock() - t0)
                yield block
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()

    def _timed_get(
        self, ref: SourceRef | None, url: str, headers: dict[str, str]
    ) -> tuple[requests.Response, str]:
        # The wait itself is charged by _timed, around the generator that makes this call.
        read_s = min(READ_TIMEOUT_S, self._remaining(ref))
        return self.http.get(url, headers, timeout=(min(CONNECT_TIMEOUT_S, read_s), read_s))

    # --- reading ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_media(self, ref: SourceRef, container: str) -> Iterator[MediaInput]:
        """An input ffprobe/ffmpeg can read with range requests (no download), served by the
        loopback relay from this reader's pinned reads; a typed read error is re-raised."""
        with ByteRelay(
            ref.size_bytes, lambda start, n: self._read(ref, start, n), name=ref.name
        ) as relay:
            yield MediaInput.for_relay(relay.url, container)

    def read_head(self, ref: SourceRef, n: int = MAGIC_BYTES_NEEDED) -> bytes:
        if ref.size_bytes == 0:
            return b""
        return b"".join(self._read(ref, 0, min(n, ref.size_bytes)))

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
            yield from self._iter_file_chunks(ref, chunks, buffers)
            return
        stream = self._read(ref, chunks[0].offset, chunks[-1].end - chunks[0].offset)
        pending = bytearray()
        try:
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
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _iter_file_chunks(
        self, ref: SourceRef, chunks: tuple[Chunk, ...], buffers: BufferPool | None
    ) -> Iterator[tuple[Chunk, bytes | bytearray]]:
        # Exact-size reads straight into the chunk: no intermediate buffer, no extra copy.
        with open_pinned(ref) as fh:
            fh.seek(chunks[0].offset)
            for chunk in chunks:
                self._remaining(ref)
                t0 = self._clock()
                data: bytes | bytearray
                if buffers is None:
                    data = fh.read(chunk.length)
                    got = len(data)
                else:
                    data = buffers.take(chunk.length)
                    got = fh.readinto(data) or 0
                self._charge(ref, self._clock() - t0)
                if got != chunk.length:
                    raise SourceChangedError(
                        f"the file shrank while being read (part {chunk.part_number})"
                    )
                yield chunk, data
            check_unchanged(ref, fh)

    def _read(self, ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return iter(())
        if ref.kind == "file":
            raw = iter_file(ref, start, length)
        elif ref.kind == "s3":
            raw = iter_s3(self.s3, ref, start, length)
        else:
            raw = iter_http(
                ref, start, length, lambda url, headers: self._timed_get(ref, url, headers)
            )
        return self._timed(ref, raw)
