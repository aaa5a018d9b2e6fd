"""Step 5, S3-store: put the video at its content-addressed key and record it in the catalog.

``videos/<sha256>.<ext>`` holds the video, with ``.jpg`` (thumbnail) and ``.json`` (metadata)
beside it. The staged object is moved (server-side copy for S3) or, when the same content is
already stored, deleted: the same bytes are stored once and keep one ``media_id``.
Fenced like assembly: a run that lost its source's lease moves nothing and records nothing.
:func:`find_stored` is the other side: whether a source is stored here already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import IntegrityError

from reelflow.errors import IntegrityCheckError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.planning import b64, media_id_for, metadata_key
from reelflow.rules import VideoMeta
from reelflow.sources import SourceRef
from storage.catalog import Media
from storage.runtime import Runtime
from tasks.thumbnail import Thumbnail


# NO_CACHE on purpose: every sub-step checks the store and catalog first, so a re-run is cheap.
@task(
    name="store-media",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def store_media(
    session_id: str,
    staged_key: str,
    final_key: str,
    sha256_hex: str,
    source: SourceRef,
    meta: VideoMeta,
    thumb: Thumbnail,
    rt: Runtime,
) -> Media:
    """``final_key``: the video's content key (``videos/<sha256>.<ext>``, derived once by the
    flow for this step and the thumbnail's)."""
    media_id = media_id_for(sha256_hex)
    rt.catalog.verify_fence()
    if rt.store.exists(final_key):
        if staged_key != final_key and rt.store.exists(staged_key):
            rt.store.delete(staged_key)
    else:
        stored_sha = rt.store.move(staged_key, final_key)
        if stored_sha is not None and stored_sha != b64(bytes.fromhex(sha256_hex)):
            # The server's own full-object SHA-256 disagrees with the source: publish nothing.
            rt.store.delete(final_key)
            raise IntegrityCheckError(
                f"stored object's sha256 differs from the source's ({final_key})"
            )
    row = Media(
        media_id=media_id,
        sha256=sha256_hex,
        size_bytes=source.size_bytes,
        content_type=meta.content_type,
        container=meta.container,
        duration_s=meta.duration_s,
        width=meta.width,
        height=meta.height,
        fps=meta.fps,
        video_codec=meta.video_codec,
        bitrate=meta.bitrate,
        has_audio=meta.has_audio,
        audio_codec=meta.audio_codec,
        store_url=rt.store.url,
        video_key=final_key,
        thumbnail_key=thumb.key,
        metadata_key=metadata_key(sha256_hex),
        thumbnail_time_ms=thumb.time_ms,
        source_uri=source.public_uri,
    )
    doc = {
        **meta.as_dict(),
        "media_id": media_id,
        "sha256": sha256_hex,
        "size_bytes": source.size_bytes,
        "video_key": final_key,
        "thumbnail_key": thumb.key,
        "thumbnail_time_ms": thumb.time_ms,
    }
    rt.store.put_bytes(row.metadata_key, json.dumps(doc, indent=2).encode(), "application/json")
    try:
        stored = rt.catalog.upsert_media(row)
    except IntegrityError:  # a concurrent run stored the same content first
        stored = rt.catalog.get_media(media_id) or row
    rt.catalog.update_session(session_id, status="completed", media_id=media_id)
    get_logger(media_id=media_id, sha256=sha256_hex).info("media_stored", video_key=final_key)
    return stored


@dataclass(frozen=True)
class StoredMedia:
    """A source already stored in this store: its media row and how many parts its upload had."""

    media: Media
    parts_total: int


def find_stored(source: SourceRef, rt: Runtime) -> StoredMedia | None:
    """The same source already ingested into this store (maybe by a concurrent run): its session
    completed, its media recorded, and the video still in the store. Not a task: the flow asks
    it before and while it waits for the source's lease, and it only reads."""
    done = rt.catalog.completed_session_for(source.fingerprint, rt.store.url)
    media = rt.catalog.get_media(done.media_id) if done and done.media_id else None
    if done and media and rt.store.exists(media.video_key):
        get_logger(media_id=media.media_id).info("ingest_deduplicated", source=source.name)
        return StoredMedia(media, done.parts_total)
    return None
