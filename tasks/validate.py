"""Step 1, validate: decide before a single byte is uploaded whether SOURCE is publishable;
and, after assembly, that the bytes staged in the store are that same video.

Order matters for clear errors and no wasted work: resolve (exists, readable, allowed, pinned)
→ size → magic bytes → ffprobe through the loopback relay with the demuxer the magic bytes chose
(range reads, no download) → the rules in ``reelflow.rules``. A InputRejectedError is terminal;
only transient reads are retried.

``verify_assembled`` repeats magic bytes + ffprobe on the **assembled** object, before the
thumbnail and the store step: a source that answered validation with one video and the upload
read with something else (a playlist, another video) is caught there, whatever it claimed about
its version. A mismatch is ``SourceChangedError`` (terminal: the flow aborts the staged upload).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from reelflow import media, rules
from reelflow.errors import InputRejectedError, SourceChangedError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.media import MediaInput
from reelflow.planning import final_video_key
from reelflow.relay import ByteRelay
from reelflow.rules import VideoMeta
from reelflow.sources import SourceRef
from storage.base import ObjectStore
from storage.runtime import Runtime

# Store reads for the relay start small (ffprobe's first reads are headers) and grow.
STORE_READ_MIN_BYTES = 256 * 1024
STORE_READ_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Validated:
    source: SourceRef
    meta: VideoMeta


def validate_source(source: str, rt: Runtime) -> Validated:
    ref = rt.sources.resolve(source)
    rules.check_size(ref.size_bytes, rt.settings.max_size_bytes)
    container = rules.sniff_container(rt.sources.read_head(ref))
    with rt.sources.open_media(ref, container) as inp:
        probed = media.probe(inp)
    meta = rules.interpret_probe(
        probed, container=container, max_duration_s=rt.settings.max_duration_s
    )
    get_logger(source=ref.name).info(
        "video_validated",
        size_bytes=ref.size_bytes,
        duration_s=meta.duration_s,
        resolution=f"{meta.width}x{meta.height}",
        fps=meta.fps,
        codec=meta.video_codec,
    )
    return Validated(source=ref, meta=meta)


# NO_CACHE on purpose: validation is cheap and must judge the source as it is now.
@task(
    name="validate-video",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def validate_video(source: str, rt: Runtime) -> Validated:
    return validate_source(source, rt)


@contextlib.contextmanager
def open_stored_media(store: ObjectStore, key: str, container: str) -> Iterator[MediaInput]:
    """ffmpeg's input for an object in the store: the local file itself (protocols: file), or
    the loopback relay over the store's range reads (an S3 store: no presigned URL, with its
    signature, on ffmpeg's command line or in its error output)."""
    location = store.read_url(key)
    if not location.startswith(("http://", "https://")):
        yield MediaInput.for_file(location, container)
        return
    size = store.size(key)
    if size is None:
        raise SourceChangedError(f"the staged object {key} is gone")

    def read(start: int, length: int) -> Iterator[bytes]:
        pos, end, block = start, start + length, STORE_READ_MIN_BYTES
        while pos < end:
            data = store.read_range(key, pos, min(block, end - pos))
            if not data:
                return
            pos += len(data)
            block = min(block * 2, STORE_READ_MAX_BYTES)
            yield data

    with ByteRelay(size, read, name=key.rsplit("/", 1)[-1]) as relay:
        yield MediaInput.for_relay(relay.url, container)


def verify_stored_bytes(key: str, meta: VideoMeta, rt: Runtime) -> VideoMeta:
    """Magic bytes + ffprobe of the object at ``key``; it must be the validated video."""
    try:
        head = rt.store.read_range(key, 0, rules.MAGIC_BYTES_NEEDED)
        container = rules.sniff_container(head)
        with open_stored_media(rt.store, key, container) as inp:
            probed = media.probe(inp)
        stored = rules.interpret_probe(
            probed, container=container, max_duration_s=rt.settings.max_duration_s
        )
    except SourceChangedError:
        raise
    except InputRejectedError as exc:
        raise SourceChangedError(
            f"the uploaded bytes are not the video that was validated: {exc}"
        ) from exc
    diffs = rules.compare_meta(meta, stored)
    if diffs:
        raise SourceChangedError(
            "the uploaded bytes are not the video that was validated: " + "; ".join(diffs[:4])
        )
    return stored


# NO_CACHE on purpose: it judges what the store holds now, after this run's assembly.
@task(
    name="verify-assembled",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def verify_assembled(staged_key: str, sha256_hex: str, meta: VideoMeta, rt: Runtime) -> None:
    # A resumed run of a session staged under staging/ may find the video already moved to
    # its content key; an upload made at its final key is never moved.
    final_key = final_video_key(staged_key, sha256_hex, meta.container)
    key = staged_key if rt.store.exists(staged_key) else final_key
    verify_stored_bytes(key, meta, rt)
    get_logger(sha256=sha256_hex).info("assembled_object_verified", key=key)
