"""Ingest + publish in one flow, and scheduled posting: publish_at queues, publish-due posts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.ingest import ingest_video
from flows.scheduling import publish_due
from reelflow.errors import ValidationError
from storage import schedule
from storage.runtime import Runtime
from tests.support.tiktok import add_account

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_ingest_with_account_publishes_once(
    home: Path,
    sandbox: Any,
    clips: Any,
) -> None:
    """--account on ingest: stored and posted; running it again posts nothing more."""
    from reelflow.settings import Settings

    add_account(Runtime.from_settings(Settings()), sandbox, "creator")
    first = ingest_video(source=str(clips.valid()), account="creator", caption="hi #reelflow")
    assert first["publish"]["status"] == "PUBLISH_COMPLETE"
    again = ingest_video(source=str(clips.valid()), account="creator", caption="hi #reelflow")
    assert again["publish"]["publish_id"] == first["publish"]["publish_id"]
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1)


def test_unknown_account_is_refused_before_upload(home: Path, clips: Any) -> None:
    """A publish request naming no known account fails validation; nothing is stored."""
    with pytest.raises(ValidationError, match="no TikTok account"):
        ingest_video(source=str(clips.valid()), account="nobody")
    objects = home / "objects"
    assert not objects.exists() or not [p for p in objects.rglob("*") if p.is_file()]


def test_publish_at_queues_and_publish_due_posts_exactly_once(
    home: Path,
    sandbox: Any,
    clips: Any,
) -> None:
    """A future publish_at stores the media and queues; publish-due posts it when due, once."""
    from reelflow.settings import Settings

    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, "creator")
    due = datetime.now(UTC) + timedelta(hours=1)
    summary = ingest_video(source=str(clips.valid()), account="creator", publish_at=due)
    assert summary["publish"]["status"] == "SCHEDULED"
    assert sandbox.state.stats()["inits"] == 0
    assert publish_due()["handled"] == 0  # not due yet

    (row,) = schedule.list_scheduled(rt.catalog.engine, summary["media_id"])
    schedule.queue_publish(  # the creator moves the post to now
        rt.catalog.engine,
        media_id=row.media_id,
        account=row.account,
        mode=row.mode,
        privacy=row.privacy,
        caption=row.caption,
        due_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    batch = publish_due()
    assert batch["handled"] == 1 and batch["batch"][0]["status"] == "PUBLISH_COMPLETE"
    assert publish_due()["handled"] == 0  # done rows are never taken again
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1)
    (done,) = schedule.list_scheduled(rt.catalog.engine, summary["media_id"])
    assert done.status == schedule.DONE
