"""Ingest + publish in one flow, and scheduled posting: publish_at queues, publish-due posts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.ingest import ingest_video
from flows.scheduling import publish_due
from reelflow.errors import InputRejectedError
from reelflow.settings import Settings
from storage import schedule
from storage.runtime import Runtime
from tests.support.tiktok import add_account

pytestmark = pytest.mark.usefixtures("prefect_api")


def make_due(engine: Any, row: schedule.ScheduledPublish) -> None:
    """Move a queued row to just past (the creator moving the post to now)."""
    schedule.queue_publish(
        engine,
        media_id=row.media_id,
        account=row.account,
        mode=row.mode,
        privacy=row.privacy,
        caption=row.caption,
        due_at=datetime.now(UTC) - timedelta(seconds=1),
        again=schedule.is_again(row),
    )


def test_ingest_with_account_publishes_once(home: Path, sandbox: Any, clips: Any) -> None:
    """--account on ingest: stored and posted; running it again posts nothing more."""
    add_account(Runtime.from_settings(Settings()), sandbox, "creator")
    first = ingest_video(source=str(clips.valid()), account="creator", caption="hi #reelflow")
    assert first["publish"]["status"] == "PUBLISH_COMPLETE"
    again = ingest_video(source=str(clips.valid()), account="creator", caption="hi #reelflow")
    assert again["publish"]["publish_id"] == first["publish"]["publish_id"]
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1)


def test_unknown_account_is_refused_before_upload(home: Path, clips: Any) -> None:
    """A publish request naming no known account fails validation; nothing is stored."""
    with pytest.raises(InputRejectedError, match="no TikTok account"):
        ingest_video(source=str(clips.valid()), account="nobody")
    objects = home / "objects"
    assert not objects.exists() or not [p for p in objects.rglob("*") if p.is_file()]


def test_publish_at_queues_and_publish_due_posts_exactly_once(
    home: Path, sandbox: Any, clips: Any
) -> None:
    """A future publish_at stores the media and queues; publish-due posts it when due, once."""
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, "creator")
    due = datetime.now(UTC) + timedelta(hours=1)
    summary = ingest_video(source=str(clips.valid()), account="creator", publish_at=due)
    assert summary["publish"]["status"] == "SCHEDULED"
    assert sandbox.state.stats()["inits"] == 0
    assert publish_due()["handled"] == 0  # not due yet

    (row,) = schedule.list_scheduled(rt.catalog.engine, summary["media_id"])
    make_due(rt.catalog.engine, row)
    batch = publish_due()
    assert batch["handled"] == 1 and batch["batch"][0]["status"] == "PUBLISH_COMPLETE"
    assert publish_due()["handled"] == 0  # done rows are never taken again
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1)
    (done,) = schedule.list_scheduled(rt.catalog.engine, summary["media_id"])
    assert done.status == schedule.DONE


def test_ingest_again_posts_once_more_and_only_once(home: Path, sandbox: Any, clips: Any) -> None:
    """ingest with another caption posts nothing new; with again it posts once, re-runs never."""
    add_account(Runtime.from_settings(Settings()), sandbox, "creator")
    source = str(clips.valid())
    first = ingest_video(source=source, account="creator", caption="one")
    edited = ingest_video(source=source, account="creator", caption="two")
    assert edited["publish"]["publish_id"] == first["publish"]["publish_id"]
    assert edited["publish"]["options_differ"] is True
    again = ingest_video(source=source, account="creator", caption="two", again=True)
    assert again["publish"]["publish_id"] != first["publish"]["publish_id"]
    rerun = ingest_video(source=source, account="creator", caption="two", again=True)
    assert rerun["publish"]["publish_id"] == again["publish"]["publish_id"]
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (2, 2)


def test_scheduled_publishes_keep_exactly_once_with_and_without_again(
    home: Path, sandbox: Any, clips: Any
) -> None:
    """A due plain publish of posted media posts nothing; a due again one posts once, retried."""
    rt = Runtime.from_settings(Settings())
    engine = rt.catalog.engine
    add_account(rt, sandbox, "creator")
    source = str(clips.valid())
    posted = ingest_video(source=source, account="creator", caption="now")["publish"]
    soon = datetime.now(UTC) + timedelta(hours=1)
    queued = ingest_video(source=source, account="creator", caption="later", publish_at=soon)
    assert queued["publish"]["status"] == "SCHEDULED"
    ingest_video(source=source, account="creator", caption="edited", publish_at=soon)
    (plain,) = schedule.list_scheduled(engine, queued["media_id"])  # the edit moved the one row
    assert plain.caption == "edited" and not schedule.is_again(plain)
    ingest_video(source=source, account="creator", caption="encore", publish_at=soon, again=True)
    for row in schedule.list_scheduled(engine, queued["media_id"]):
        make_due(engine, row)
    batch = publish_due()
    assert batch["handled"] == 2
    ids = {e["publish_id"] for e in batch["batch"]}
    assert posted["publish_id"] in ids and len(ids) == 2
    assert (sandbox.state.stats()["inits"], sandbox.state.stats()["posts"]) == (2, 2)
    # A publish-due run that died after posting: its rows go back to the queue and run again.
    for row in schedule.list_scheduled(engine, queued["media_id"]):
        schedule.finish(engine, row.id, status=schedule.QUEUED)
    again = publish_due()
    assert again["handled"] == 2 and {e["publish_id"] for e in again["batch"]} == ids
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (2, 2)
