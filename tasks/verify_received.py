"""Validate a received upload's assembled object: the same rules as a source's, on the stored bytes.

A tus upload has no source to validate before it is sent (the gateway only sniffed its first
bytes): the assembled object itself is judged, where it lies in the store (the local file, or S3
through the loopback relay's range reads): size → magic bytes → ffprobe with the demuxer the
magic bytes chose → ``reelflow.rules.interpret_probe`` (codec, resolution, fps, duration up to
``REELFLOW_MAX_DURATION_S``). A ``InputRejectedError`` is terminal (the flow deletes the upload).

Must not: move, delete or record anything.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from reelflow import media, rules
from reelflow.errors import IntegrityCheckError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.rules import VideoMeta
from storage.runtime import Runtime
from tasks.validate import open_stored_media


def probe_stored(key: str, rt: Runtime) -> VideoMeta:
    """Magic bytes + ffprobe of the object at ``key`` → its VideoMeta (or InputRejectedError)."""
    size = rt.store.size(key)
    if size is None:
        raise IntegrityCheckError(f"the assembled object {key} is gone")
    rules.check_size(size, rt.settings.max_size_bytes)
    container = rules.sniff_container(rt.store.read_range(key, 0, rules.MAGIC_BYTES_NEEDED))
    with open_stored_media(rt.store, key, container) as inp:
        probed = media.probe(inp)
    return rules.interpret_probe(
        probed, container=container, max_duration_s=rt.settings.max_duration_s
    )


# NO_CACHE on purpose: it judges what the store holds now, after this run's assembly.
@task(
    name="verify-received",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def verify_received(key: str, sha256_hex: str, rt: Runtime) -> VideoMeta:
    meta = probe_stored(key, rt)
    get_logger(sha256=sha256_hex).info(
        "video_validated",
        key=key,
        duration_s=meta.duration_s,
        resolution=f"{meta.width}x{meta.height}",
        fps=meta.fps,
        codec=meta.video_codec,
    )
    return meta
