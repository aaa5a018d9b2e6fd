"""The pipeline's stage log: one ``pipeline_stage`` row each time a run enters a stage.

Every worker writes here, so what a creator or an operator sees (the gateway's status API and
its Server-Sent Events, ``/metrics``, the daily report) is the same from any machine: nothing
lives in one process's memory. Rows are only ever inserted; ``id`` grows with every insert, so
it is the SSE event id (a client reconnecting with ``Last-Event-ID: N`` is sent the rows with
``id > N`` first and misses no stage change).

A row names its run by ``run_key``: the gateway upload's id for a tus upload (``upload_id`` is
the same value), else the ingest's upload-session id; ``flow_run_id`` is the Prefect run that
wrote it, ``origin`` where the work came from (``gateway``, ``cli``, ``s3-event``, ``ui``…).

Stages (:data:`STAGES`): ``receiving`` (first byte), ``received`` (last byte durable),
``validating``, ``scanning``, ``storing``, ``stored``, ``publishing``, ``published``, ``failed``
(with ``reason``, the typed error's reason, and ``message``), ``cancelled``. ``stored`` and
``published`` and ``failed`` and ``cancelled`` are outcomes; ``published`` follows ``stored``.

Must not: touch the object store or any other table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import DateTime, Field, Session, SQLModel, col, select

from storage.clock import aware, utcnow

RECEIVING = "receiving"
RECEIVED = "received"
VALIDATING = "validating"
SCANNING = "scanning"
STORING = "storing"
STORED = "stored"
PUBLISHING = "publishing"
PUBLISHED = "published"
FAILED = "failed"
CANCELLED = "cancelled"
STAGES = (
    RECEIVING,
    RECEIVED,
    VALIDATING,
    SCANNING,
    STORING,
    STORED,
    PUBLISHING,
    PUBLISHED,
    FAILED,
    CANCELLED,
)
# After one of these a run writes no further stage, except ``stored`` → ``publishing``.
FINAL = (PUBLISHED, FAILED, CANCELLED)


class PipelineStage(SQLModel, table=True):
    __tablename__ = "pipeline_stage"

    id: int | None = Field(default=None, primary_key=True)  # the SSE event id
    run_key: str = Field(index=True)
    upload_id: str | None = Field(default=None, index=True)
    stage: str = Field(index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)  # type: ignore[call-overload]
    origin: str | None = None
    owner: str | None = None  # the gateway token's subject, when there is one
    account: str | None = None
    flow_run_id: str | None = None
    media_id: str | None = Field(default=None, index=True)
    size_bytes: int | None = None
    reason: str | None = None  # failed: the typed error's reason
    message: str | None = None  # failed: one line, no secrets (the redactor ran on it)
    detail_json: str = "{}"  # anything else (publish_id, post_id, status, durations)

    @property
    def detail(self) -> dict[str, Any]:
        return dict(json.loads(self.detail_json or "{}"))


def record(
    engine: Engine,
    run_key: str,
    stage: str,
    *,
    upload_id: str | None = None,
    origin: str | None = None,
    owner: str | None = None,
    account: str | None = None,
    flow_run_id: str | None = None,
    media_id: str | None = None,
    size_bytes: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    at: datetime | None = None,
    **detail: Any,
) -> PipelineStage:
    """Insert one stage row and return it (with its ``id``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    row = PipelineStage(
        run_key=run_key,
        upload_id=upload_id,
        stage=stage,
        at=at or utcnow(),
        origin=origin,
        owner=owner,
        account=account,
        flow_run_id=flow_run_id,
        media_id=media_id,
        size_bytes=size_bytes,
        reason=reason,
        message=message,
        detail_json=json.dumps(detail, sort_keys=True, default=str),
    )
    with Session(engine, expire_on_commit=False) as s:
        s.add(row)
        s.commit()
        s.refresh(row)
    row.at = aware(row.at)
    return row


def for_run(engine: Engine, run_key: str, *, after_id: int = 0) -> list[PipelineStage]:
    """The run's stage rows with ``id > after_id``, oldest first."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = (
            select(PipelineStage)
            .where(PipelineStage.run_key == run_key, col(PipelineStage.id) > after_id)
            .order_by(col(PipelineStage.id))
        )
        rows = list(s.exec(stmt).all())
    for row in rows:
        row.at = aware(row.at)
    return rows


def latest(engine: Engine, run_key: str) -> PipelineStage | None:
    """The run's newest stage row."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = (
            select(PipelineStage)
            .where(PipelineStage.run_key == run_key)
            .order_by(col(PipelineStage.id).desc())
            .limit(1)
        )
        row = s.exec(stmt).first()
    if row is not None:
        row.at = aware(row.at)
    return row


def since(
    engine: Engine, start: datetime, *, stages: Sequence[str] | None = None
) -> list[PipelineStage]:
    """Every row written at or after ``start`` (optionally only ``stages``), oldest first:
    what ``/metrics`` and the daily report aggregate."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(PipelineStage).where(col(PipelineStage.at) >= start)
        if stages is not None:
            stmt = stmt.where(col(PipelineStage.stage).in_(list(stages)))
        rows = list(s.exec(stmt.order_by(col(PipelineStage.id))).all())
    for row in rows:
        row.at = aware(row.at)
    return rows


def run_keys_for_media(engine: Engine, media_id: str) -> list[str]:
    """The runs that stored ``media_id`` (a publish of it reports its stages to each)."""
    with Session(engine) as s:
        stmt = (
            select(PipelineStage.run_key)
            .where(PipelineStage.media_id == media_id, PipelineStage.stage == STORED)
            .distinct()
        )
        return list(s.exec(stmt).all())
