"""The scheduled-publish queue: TikTok's API cannot schedule, so reelflow does.

An ingest with a future ``publish_at`` stores the media and queues one row here; the
``publish-due`` flow claims due rows (one conditional UPDATE each, so two concurrent runs of it
never take the same row) and publishes them through the exactly-once publish ledger.

A queued publish is identified like a publish, by (media, account): queuing it again while it
waits moves it and takes the new caption, privacy and post options (an edit of the scheduled
post; the post options are kept as JSON in ``post_options_json``, added to older catalogs by
:data:`ADDED_COLUMNS`). A queued
``again`` publish (an explicit re-post) is a row of its own per set of options, with the id
prefix ``spa_`` (which is how ``publish-due`` knows to pass ``again``; rows queued before this
existed are all ``sp_``: plain publishes).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import DateTime, Field, Session, SQLModel, select

from reelflow.ingest_options import check_publish_request
from reelflow.publish_rules import PostOptions, PublishRequest, post_options_from
from storage.clock import aware, utcnow
from storage.rows import commit_row

QUEUED = "queued"
CLAIMED = "publishing"
DONE = "done"
FAILED = "failed"
# Columns added after the table first shipped: create_all never alters a table, so the catalog
# adds them to an older one (storage.catalog).
ADDED_COLUMNS = {"post_options_json": "TEXT"}


class ScheduledPublish(SQLModel, table=True):
    __tablename__ = "scheduled_publish"

    id: str = Field(primary_key=True)  # see schedule_id: queuing twice is one row
    media_id: str = Field(index=True)
    account: str
    mode: str
    privacy: str | None = None
    caption: str | None = None
    post_options_json: str | None = None  # PostOptions.recorded(); None: none set
    due_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)  # type: ignore[call-overload]
    status: str = QUEUED
    attempts: int = 0
    claimed_by: str | None = None
    last_error: str | None = None
    result_json: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


PLAIN_PREFIX, AGAIN_PREFIX = "sp_", "spa_"


def schedule_id(media_id: str, request: PublishRequest) -> str:
    """(media, account) for a plain publish; (media, account, options) for an ``again`` one."""
    if not request.again:
        raw = json.dumps([media_id, request.account, "publish"])
        return PLAIN_PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:24]
    options: list[Any] = [request.mode, request.privacy, request.caption]
    if request.post.recorded():  # absent when none is set: ids queued before stay the same
        options.append(request.post.recorded())
    raw = json.dumps([media_id, request.account, *options, "again"], sort_keys=True)
    return AGAIN_PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:24]


def is_again(row: ScheduledPublish) -> bool:
    """Whether publish-due must post this row even if the media is already on the account."""
    return row.id.startswith(AGAIN_PREFIX)


def queued_request(row: ScheduledPublish) -> PublishRequest:
    """The checked request a queued row stands for (a bad row fails here, terminally)."""
    post = post_options_from(json.loads(row.post_options_json or "{}"))
    return check_publish_request(
        row.account, row.mode, row.privacy, row.caption, again=is_again(row), post=post
    )


def queue_publish(
    engine: Engine,
    *,
    media_id: str,
    account: str,
    mode: str,
    privacy: str | None,
    caption: str | None,
    due_at: datetime,
    again: bool = False,
    post: PostOptions | None = None,
) -> ScheduledPublish:
    """Queue the publish, or (while it is still queued) move it and take the new options.

    Returns the row; a row already taken by publish-due, done or failed, is returned as it is.
    """
    post = post or PostOptions()
    recorded = json.dumps(post.recorded(), sort_keys=True) if post.recorded() else None
    row_id = schedule_id(
        media_id, PublishRequest(account, mode, privacy, caption, again, post=post)
    )
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(ScheduledPublish, row_id)
        if row is None:
            row = ScheduledPublish(
                id=row_id,
                media_id=media_id,
                account=account,
                mode=mode,
                privacy=privacy,
                caption=caption,
                post_options_json=recorded,
                due_at=due_at,
            )
        elif row.status == QUEUED:
            row.due_at, row.updated_at = due_at, utcnow()
            row.mode, row.privacy, row.caption = mode, privacy, caption
            row.post_options_json = recorded
        return commit_row(s, row)


def due_rows(
    engine: Engine, now: datetime | None = None, limit: int = 50
) -> list[ScheduledPublish]:
    now = now or utcnow()
    with Session(engine) as s:
        stmt = (
            select(ScheduledPublish)
            .where(ScheduledPublish.status == QUEUED, ScheduledPublish.due_at <= now)  # type: ignore[arg-type]
            .order_by(ScheduledPublish.due_at)  # type: ignore[arg-type]
            .limit(limit)
        )
        return list(s.exec(stmt).all())


def claim(engine: Engine, row_id: str, owner: str) -> bool:
    """Compare-and-swap queued → publishing; False when another run took it first."""
    with Session(engine) as s:
        stmt = (
            update(ScheduledPublish)
            .where(ScheduledPublish.id == row_id, ScheduledPublish.status == QUEUED)  # type: ignore[arg-type]
            .values(
                status=CLAIMED,
                claimed_by=owner,
                updated_at=utcnow(),
                attempts=ScheduledPublish.attempts + 1,
            )
        )
        ok = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
        s.commit()
        return ok


def finish(
    engine: Engine,
    row_id: str,
    *,
    status: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with Session(engine) as s:
        stmt = (
            update(ScheduledPublish)
            .where(ScheduledPublish.id == row_id)  # type: ignore[arg-type]
            .values(
                status=status,
                updated_at=utcnow(),
                last_error=error,
                result_json=json.dumps(result, default=str) if result is not None else None,
            )
        )
        s.execute(stmt)
        s.commit()


def requeue_stale_claims(engine: Engine, older_than: datetime) -> int:
    """A publish-due run that died mid-row leaves it 'publishing'; the publish ledger makes a
    retry safe (it polls instead of re-posting), so stale claims go back to the queue."""
    with Session(engine) as s:
        rows = s.exec(select(ScheduledPublish).where(ScheduledPublish.status == CLAIMED)).all()
        stale = [r.id for r in rows if aware(r.updated_at) < older_than]
        for row_id in stale:
            s.execute(
                update(ScheduledPublish)
                .where(ScheduledPublish.id == row_id, ScheduledPublish.status == CLAIMED)  # type: ignore[arg-type]
                .values(status=QUEUED, claimed_by=None, updated_at=utcnow())
            )
        s.commit()
        return len(stale)


def list_scheduled(engine: Engine, media_id: str | None = None) -> list[ScheduledPublish]:
    with Session(engine) as s:
        stmt = select(ScheduledPublish)
        if media_id:
            stmt = stmt.where(ScheduledPublish.media_id == media_id)
        return list(s.exec(stmt).all())
