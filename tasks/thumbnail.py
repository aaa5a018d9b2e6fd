"""Step 4, thumbnail: a representative 640-px JPEG from the assembled object, stored beside it.

ffmpeg reads the object where it lies (the local file, or the S3 object through reelflow's
loopback relay) with an input seek, so only the bytes around the seek point are fetched; the
demuxer is the validated container's (``-f mov`` / ``-f matroska``), never guessed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from reelflow import media
from reelflow.errors import retry_if_retryable
from reelflow.logging import get_logger
from reelflow.planning import sidecar_key
from reelflow.rules import VideoMeta
from storage.runtime import Runtime
from tasks.validate import open_stored_media


@dataclass(frozen=True)
class Thumbnail:
    key: str
    time_ms: int


# NO_CACHE on purpose: the key is content-addressed, so "already in the store" is the cache.
@task(
    name="make-thumbnail",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_retryable,
)
def make_thumbnail(
    staged_key: str, final_key: str, sha256_hex: str, meta: VideoMeta, rt: Runtime
) -> Thumbnail:
    """``final_key``: where the video is stored (the flow derives it once for this step and the
    store step); the thumbnail goes beside it, with its stem."""
    key = sidecar_key(final_key, "jpg")
    at_s = media.thumbnail_time_s(meta.duration_s)
    if rt.store.exists(key):
        return Thumbnail(key, int(at_s * 1000))
    # A resumed run of a staged session may find the video already moved to its content key.
    read_key = staged_key if rt.store.exists(staged_key) else final_key
    with tempfile.TemporaryDirectory(prefix="reelflow-thumb-") as tmp:
        with open_stored_media(rt.store, read_key, meta.container) as inp:
            out = media.grab_thumbnail(inp, Path(tmp) / "thumb.jpg", at_s=at_s)
        rt.store.put_file(key, out, "image/jpeg")
    get_logger(sha256=sha256_hex).info("thumbnail_stored", key=key, at_s=at_s)
    return Thumbnail(key, int(at_s * 1000))
