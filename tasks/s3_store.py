"""Step 5, S3-store: record the verified video in the catalog and mark it stored.

An ingest uploads straight to the video's final key (``videos/<session>.<ext>``, with ``.jpg``
(thumbnail) and ``.json`` (metadata) beside it): nothing is moved, so no byte is copied again;
the object is tagged ``stored`` with its SHA-256 once its row is recorded. Objects staged
elsewhere (a session opened before final keys, the gateway's ``incoming/``) are still moved to
their content key ``videos/<sha256>.<ext>`` (server-side copy for S3). When the same content is
already stored, the new object is deleted: the same bytes are stored once and keep one
``media_id`` (content-derived). Fenced like assembly: a run that lost its source's lease moves
nothing and records nothing. :func:`find_stored` is the other side: whether a source is stored
here already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import IntegrityError

from reelflow.errors import IntegrityCheckError, retry_if_retryable
from reelflow.logging import get_logger
from reelflow.planning import b64, media_id_for, sidecar_key
from reelflow.rules import VideoMeta
from reelflow.sources import SourceRef
from storage.catalog import Media, media_keys
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
    """``final_key``: where the video is stored (``planning.final_video_key``, derived once by
    the flow for this step and the thumbnail's): ``staged_key`` itself for an upload made at
    its final key, else the content key it is moved to."""
    media_id = media_id_for(sha256_hex)
    rt.catalog.verify_fence()
    existing = rt.catalog.get_media(media_id)
    if existing is not None and _stored_elsewhere(existing, final_key, rt):
        return _keep_existing(session_id, existing, (staged_key, final_key, thumb.key), rt)
    if staged_key != final_key:  # staged elsewhere (gateway, older session): moved, as before
        _move_to_content_key(staged_key, final_key, sha256_hex, rt)
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
        metadata_key=sidecar_key(final_key, "json"),
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
    if _stored_elsewhere(stored, final_key, rt):  # ... at its own key: keep that one
        return _keep_existing(session_id, stored, (final_key, thumb.key, row.metadata_key), rt)
    # Recorded first, then tagged: a kill between the two leaves a recorded object still
    # "pending", which the re-run tags (this task is idempotent); never the other way round.
    rt.store.mark_stored(final_key, sha256_hex)
    rt.catalog.update_session(session_id, status="completed", media_id=media_id)
    get_logger(media_id=media_id, sha256=sha256_hex).info("media_stored", video_key=final_key)
    return stored


def _move_to_content_key(staged_key: str, final_key: str, sha256_hex: str, rt: Runtime) -> None:
    if rt.store.exists(final_key):
        if rt.store.exists(staged_key):
            rt.store.delete(staged_key)
        return
    stored_sha = rt.store.move(staged_key, final_key)
    if stored_sha is not None and stored_sha != b64(bytes.fromhex(sha256_hex)):
        # The server's own full-object SHA-256 disagrees with the source: publish nothing.
        rt.store.delete(final_key)
        raise IntegrityCheckError(f"stored object's sha256 differs from the source's ({final_key})")


def _stored_elsewhere(media: Media, key: str, rt: Runtime) -> bool:
    """The same content is stored in this store already, under another key that still holds it
    (another source, or a copy of it, ingested first)."""
    return (
        media.store_url == rt.store.url
        and media.video_key != key
        and rt.store.exists(media.video_key)
    )


def _keep_existing(session_id: str, existing: Media, keys: tuple[str, ...], rt: Runtime) -> Media:
    """Delete this run's objects (its video, and the thumbnail and metadata made for it) and
    answer the media row that holds the same bytes: stored once, one ``media_id``."""
    mine = [k for k in dict.fromkeys(keys) if k not in media_keys(existing)]
    for k in mine:
        rt.store.delete(k)
    rt.catalog.update_session(session_id, status="completed", media_id=existing.media_id)
    get_logger(media_id=existing.media_id).info(
        "media_deduplicated", video_key=existing.video_key, discarded=mine
    )
    return existing


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
