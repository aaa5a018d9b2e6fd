"""How fast a gateway upload's bytes arrive: ``gateway_progress`` samples, and the rate of them.

A sample is an upload's durable offset at a moment: one when a request starts writing bytes
(its start offset: a pause before it is not counted as slowness) and one when it ends. With
the row's own ``offset`` at its ``updated_at`` (a part commit mid-request moves both) they
give the rate over the last :data:`WINDOW_S`: what the status API answers as
``rate_bytes_s``, from any gateway instance (the samples are in the catalog, not a
process's memory). An upload keeps samples of the last :data:`KEEP_S` only: each insert
deletes its older ones, and an upload's last byte (or its cancellation) deletes its own and
every upload's older ones, so the table stays small.

:func:`rate_from` is pure (a property test checks it); the rest is the table.

Must not: touch the object store or any other table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import DateTime, Field, Session, SQLModel, col, select

from storage.clock import aware, utcnow

WINDOW_S = 10.0  # the rate is that of the bytes of the last 10 s
KEEP_S = 60.0
# Shorter spans are noise (two samples of one request a few ms apart).
MIN_SPAN_S = 0.2


class GatewayProgress(SQLModel, table=True):
    __tablename__ = "gateway_progress"

    id: int | None = Field(default=None, primary_key=True)
    upload_id: str = Field(index=True)
    offset: int
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)  # type: ignore[call-overload]


def sample(engine: Engine, upload_id: str, offset: int, *, at: datetime | None = None) -> None:
    """Record ``offset`` at ``at`` (now) and forget the upload's samples older than KEEP_S."""
    at = at or utcnow()
    with Session(engine) as s:
        s.add(GatewayProgress(upload_id=upload_id, offset=offset, at=at))
        s.execute(
            delete(GatewayProgress).where(
                col(GatewayProgress.upload_id) == upload_id,
                col(GatewayProgress.at) < at - timedelta(seconds=KEEP_S),
            )
        )
        s.commit()


def samples(engine: Engine, upload_id: str, *, since: datetime) -> list[tuple[datetime, int]]:
    """The upload's samples at or after ``since``, oldest first: (at, offset)."""
    with Session(engine) as s:
        stmt = (
            select(GatewayProgress.at, GatewayProgress.offset)
            .where(
                col(GatewayProgress.upload_id) == upload_id,
                col(GatewayProgress.at) >= since,
            )
            .order_by(col(GatewayProgress.at), col(GatewayProgress.id))
        )
        return [(aware(at), int(offset)) for at, offset in s.exec(stmt).all()]


def forget(engine: Engine, upload_id: str, *, now: datetime | None = None) -> None:
    """Drop every sample of the upload (its bytes are all in, or it was cancelled), and any
    upload's older than KEEP_S (those of uploads abandoned mid-way: nothing else removes them)."""
    cutoff = (now or utcnow()) - timedelta(seconds=KEEP_S)
    with Session(engine) as s:
        s.execute(delete(GatewayProgress).where(col(GatewayProgress.upload_id) == upload_id))
        s.execute(delete(GatewayProgress).where(col(GatewayProgress.at) < cutoff))
        s.commit()


def rate_from(
    points: Sequence[tuple[datetime, int]], *, now: datetime, window_s: float = WINDOW_S
) -> float | None:
    """Bytes per second over the last ``window_s`` before ``now`` of ``points`` ((at, offset)
    pairs, any order): from the earliest point in the window to the latest. 0.0 when nothing
    arrived in the window (paused, stalled); None when the points span too little to say."""
    start = now - timedelta(seconds=window_s)
    recent = sorted(p for p in points if start <= p[0] <= now)
    if not recent:
        return 0.0 if points else None
    first, last = recent[0], recent[-1]
    span = (last[0] - first[0]).total_seconds()
    if span < MIN_SPAN_S:
        return None
    return max(0.0, (last[1] - first[1]) / span)


def rate(
    engine: Engine, upload_id: str, *, offset: int, updated_at: datetime, now: datetime
) -> float | None:
    """The upload's rate now (:func:`rate_from` over its samples and the row's own point)."""
    start = now - timedelta(seconds=WINDOW_S)
    points = samples(engine, upload_id, since=start)
    points.append((aware(updated_at), offset))
    return rate_from(points, now=now)
