"""The catalog reads behind the gateway's ``/metrics``: bounded, index-only queries.

``pipeline_stage`` is insert-only and its ``id`` only grows, so the metrics follow it with a
cursor (:func:`stage_rows_after`: a primary-key range up to an id :func:`max_stage_id` gave a
moment before, at most ``limit`` rows) instead of
re-counting the table on every scrape; :func:`stage_rows_of_runs` gives the earlier rows of the
runs a batch touches (how long their previous stage took, whether they were stored before a
failure). :func:`gateway_upload_counts` counts ``gateway_upload`` rows by state (the ``state``
index).

Must not: write anything, or read a table other than these two.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.clock import aware
from storage.gateway_uploads import RECEIVING, GatewayUpload
from storage.stages import PipelineStage


def max_stage_id(engine: Engine) -> int:
    """The largest ``pipeline_stage.id`` (0 for an empty table)."""
    with Session(engine) as s:
        top = s.exec(select(func.max(PipelineStage.id))).one()
    return int(top or 0)


def stage_rows_after(
    engine: Engine, after_id: int, *, up_to_id: int, limit: int
) -> list[PipelineStage]:
    """At most ``limit`` rows with ``after_id < id <= up_to_id``, in id order."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = (
            select(PipelineStage)
            .where(col(PipelineStage.id) > after_id, col(PipelineStage.id) <= up_to_id)
            .order_by(col(PipelineStage.id))
            .limit(limit)
        )
        rows = list(s.exec(stmt).all())
    for row in rows:
        row.at = aware(row.at)
    return rows


def stage_rows_of_runs(
    engine: Engine, run_keys: Collection[str], *, up_to_id: int
) -> list[PipelineStage]:
    """Every row of ``run_keys`` with ``id <= up_to_id``, in id order."""
    if not run_keys:
        return []
    with Session(engine, expire_on_commit=False) as s:
        stmt = (
            select(PipelineStage)
            .where(
                col(PipelineStage.run_key).in_(sorted(run_keys)),
                col(PipelineStage.id) <= up_to_id,
            )
            .order_by(col(PipelineStage.id))
        )
        rows = list(s.exec(stmt).all())
    for row in rows:
        row.at = aware(row.at)
    return rows


def gateway_upload_counts(engine: Engine, now: datetime) -> tuple[dict[str, int], int]:
    """(rows per state, uploads receiving and not yet past ``expires_at``)."""
    with Session(engine) as s:
        by_state = {
            str(state): int(n)
            for state, n in s.exec(
                select(GatewayUpload.state, func.count()).group_by(col(GatewayUpload.state))
            ).all()
        }
        active = s.exec(
            select(func.count()).where(
                GatewayUpload.state == RECEIVING, col(GatewayUpload.expires_at) > now
            )
        ).one()
    return by_state, int(active)
