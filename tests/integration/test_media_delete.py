"""Media deletion in the catalog (SQLite and PostgreSQL): what is refused, what is removed,
what is kept (shared content keys, publishes TikTok has)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from reelflow.errors import InputRejectedError, MediaInUseError
from reelflow.publish_rules import PROCESSING, PUBLISHED, UPLOADING, PublishRequest
from storage.catalog import (
    DELETING,
    Catalog,
    Media,
    UploadSession,
    begin_media_delete,
    confirm_media_delete,
    finish_media_delete,
)
from storage.clock import utcnow
from storage.leases import Leases
from storage.publishing import find_or_make_publish, list_publishes, update_publish
from storage.schedule import list_scheduled, queue_publish

STORE = "file:///tmp/objects"


def media(sha: str, **kw: object) -> Media:
    fields: dict[str, object] = {
        "media_id": f"m_{sha[:20]}",
        "sha256": sha,
        "size_bytes": 1000,
        "content_type": "video/mp4",
        "container": "mp4",
        "duration_s": 2.0,
        "width": 720,
        "height": 1280,
        "fps": 30.0,
        "video_codec": "h264",
        "has_audio": True,
        "store_url": STORE,
        "video_key": f"videos/{sha}.mp4",
        "thumbnail_key": f"thumbnails/{sha}.jpg",
        "metadata_key": f"metadata/{sha}.json",
        "source_uri": "/tmp/c.mp4",
    }
    fields.update(kw)
    return Media(**fields)  # type: ignore[arg-type]


def add(catalog: Catalog, row: Media) -> Media:
    return catalog.upsert_media(row)


def request(account: str = "creator") -> PublishRequest:
    return PublishRequest(account, "direct", "SELF_ONLY", "hi")


def test_delete_removes_rows_and_plans_every_key(catalog: Catalog) -> None:
    """An unpublished media: all three keys planned, the media, its sessions and parts gone."""
    m = add(catalog, media("a" * 64))
    catalog.save_session(
        UploadSession(
            id="s1",
            source_uri="/tmp/c.mp4",
            source_fingerprint="fp",
            store_url=STORE,
            staging_key="staging/s1",
            size_bytes=1000,
            chunk_size=1000,
            parts_total=1,
            content_type="video/mp4",
            ext="mp4",
            status="completed",
            media_id=m.media_id,
        )
    )
    plan = begin_media_delete(catalog.engine, m.media_id)
    assert set(plan.delete_keys) == {m.video_key, m.thumbnail_key, m.metadata_key}
    assert plan.kept_keys == ()
    got = catalog.get_media(m.media_id)
    assert got is not None and got.status == DELETING
    confirm_media_delete(catalog.engine, m.media_id)
    counts = finish_media_delete(catalog.engine, m.media_id)
    assert counts["media"] == 1 and counts["uploadsession"] == 1
    assert catalog.get_media(m.media_id) is None and catalog.get_session("s1") is None


def test_a_key_another_media_references_is_kept(catalog: Catalog) -> None:
    """Content-addressed keys are refcounted: a thumbnail another media row names stays."""
    first = add(catalog, media("b" * 64))
    add(catalog, media("c" * 64, thumbnail_key=first.thumbnail_key))
    plan = begin_media_delete(catalog.engine, first.media_id)
    assert plan.kept_keys == (first.thumbnail_key,)
    assert set(plan.delete_keys) == {first.video_key, first.metadata_key}


def test_same_key_in_another_store_does_not_count(catalog: Catalog) -> None:
    """A row of another store with the same key is other bytes: the key is deleted here."""
    first = add(catalog, media("d" * 64))
    add(catalog, media("e" * 64, video_key=first.video_key, store_url="s3://other/x"))
    assert first.video_key in begin_media_delete(catalog.engine, first.media_id).delete_keys


@pytest.mark.parametrize("status", [UPLOADING, PROCESSING])
def test_refused_while_a_publish_is_in_flight(catalog: Catalog, status: str) -> None:
    """A publish sending or being processed: MediaInUseError, the media left as it was."""
    m = add(catalog, media("f" * 64))
    row = find_or_make_publish(catalog.engine, m.media_id, m.size_bytes, request())
    update_publish(catalog.engine, row.id, status=status, publish_id="v_pub_file~1")
    with pytest.raises(MediaInUseError) as refused:
        begin_media_delete(catalog.engine, m.media_id)
    assert refused.value.reason == "publish_in_flight" and not refused.value.retryable
    got = catalog.get_media(m.media_id)
    assert got is not None and got.status == "stored"


def test_a_pending_publish_counts_only_while_its_run_holds_it(catalog: Catalog) -> None:
    """A pending publish with a live lease is in flight; one refused long ago is not."""
    m = add(catalog, media("1" * 64))
    row = find_or_make_publish(catalog.engine, m.media_id, m.size_bytes, request())
    leases = Leases(catalog.engine, ttl_s=60)
    assert leases.acquire(row.id, "run-1") is not None
    with pytest.raises(MediaInUseError):
        begin_media_delete(catalog.engine, m.media_id, now=utcnow())
    later = utcnow() + timedelta(minutes=5)  # the lease lapsed: its run is gone
    begin_media_delete(catalog.engine, m.media_id, now=later)
    counts = finish_media_delete(catalog.engine, m.media_id)
    assert counts["tiktok_publish"] == 1  # never reached TikTok: nothing to keep


def test_refused_while_a_publish_is_scheduled(catalog: Catalog) -> None:
    m = add(catalog, media("2" * 64))
    queue_publish(
        catalog.engine,
        media_id=m.media_id,
        account="creator",
        mode="direct",
        privacy="SELF_ONLY",
        caption=None,
        due_at=utcnow() + timedelta(hours=1),
    )
    with pytest.raises(MediaInUseError) as refused:
        begin_media_delete(catalog.engine, m.media_id)
    assert refused.value.reason == "publish_scheduled"
    assert len(list_scheduled(catalog.engine, m.media_id)) == 1


def test_publishes_tiktok_has_stay_in_the_ledger(catalog: Catalog) -> None:
    """A published row survives its media (the post exists), so a re-ingest finds it."""
    m = add(catalog, media("3" * 64))
    done = find_or_make_publish(catalog.engine, m.media_id, m.size_bytes, request())
    update_publish(catalog.engine, done.id, status=PUBLISHED, publish_id="v_pub_file~2")
    failed = find_or_make_publish(
        catalog.engine, m.media_id, m.size_bytes, dataclasses.replace(request(), again=True)
    )
    update_publish(catalog.engine, failed.id, status="failed")
    begin_media_delete(catalog.engine, m.media_id)
    finish_media_delete(catalog.engine, m.media_id)
    assert [p.id for p in list_publishes(catalog.engine, m.media_id)] == [done.id]


def test_a_publish_slipping_in_puts_the_media_back(catalog: Catalog) -> None:
    """Marked, then a publish started (it read the media first): the second look refuses and
    the media is stored again."""
    m = add(catalog, media("4" * 64))
    begin_media_delete(catalog.engine, m.media_id)
    row = find_or_make_publish(catalog.engine, m.media_id, m.size_bytes, request())
    update_publish(catalog.engine, row.id, status=UPLOADING)
    with pytest.raises(MediaInUseError):
        confirm_media_delete(catalog.engine, m.media_id)
    got = catalog.get_media(m.media_id)
    assert got is not None and got.status == "stored"


def test_a_deleting_media_can_be_deleted_again_and_an_unknown_one_is_refused(
    catalog: Catalog,
) -> None:
    """A run killed after the mark: the same delete plans the same keys and finishes."""
    m = add(catalog, media("5" * 64))
    first = begin_media_delete(catalog.engine, m.media_id)
    assert begin_media_delete(catalog.engine, m.media_id) == first
    finish_media_delete(catalog.engine, m.media_id)
    with pytest.raises(InputRejectedError) as missing:
        begin_media_delete(catalog.engine, m.media_id)
    assert missing.value.reason == "media_not_found"


def test_dry_run_writes_nothing(catalog: Catalog) -> None:
    m = add(catalog, media("6" * 64))
    begin_media_delete(catalog.engine, m.media_id, mark=False)
    got = catalog.get_media(m.media_id)
    assert got is not None and got.status == "stored"
