"""Sweeps over gateway uploads: which ones need their hand-off again, and which expired.

* :func:`stalled_uploads`: uploads whose last byte is durable but no live run has them —
  ``received`` with no run for a while (the gateway died between the last byte and the hand-off,
  an event was lost, a run gave up retryably), or ``processing`` by a run that died (its lease
  is free and it left no error). The gateway's hand-off sweeper starts their runs again; the
  flow's compare-and-swap take makes that exactly once.
* :func:`expire_uploads` (the ``cleanup`` deployment): uploads still ``receiving`` past
  ``expires_at`` are marked ``expired`` and their multipart upload, tails and ledger parts removed
  (afterwards the gateway answers 410); multipart uploads under ``incoming/`` that no row names
  (a gateway killed while creating one) are aborted once older than the cleanup's TTL.
* :func:`gateway_session_ids`: the ledger sessions the gateway still owns, which the generic
  janitor must leave alone (an upload may take longer than its TTL to arrive).

Must not: emit events or start runs (the gateway does), or touch the object store beyond what
``storage.tus_writer`` removes for an expired upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from reelflow.logging import get_logger
from storage import gateway_uploads as uploads
from storage import stages
from storage.clock import aware, utcnow
from storage.gateway_uploads import GatewayUpload
from storage.leases import Lease, lease_name
from storage.runtime import Runtime
from storage.tus_writer import TusWriter, UploadConflictError

# Rows the gateway still owns: their ledger session is not the janitor's to abandon.
OPEN_STATES = (uploads.RECEIVING, uploads.RECEIVED, uploads.PROCESSING)


def upload_lease_name(upload: str, store_url: str) -> str:
    """The lease a run working on gateway upload ``upload`` holds (that of source ``tus:<id>``)."""
    return lease_name(f"tus:{upload}", store_url)


@dataclass(frozen=True)
class Stalled:
    """An upload to hand off again; ``after_run`` is the dead run's id for a ``processing`` one."""

    row: GatewayUpload
    after_run: str | None = None


def _lease_free(s: Session, name: str, now: datetime) -> bool:
    lease = s.get(Lease, name)
    if lease is None or lease.owner is None:
        # Released: by the crash hook ("crashed"), or after a cancellation a person asked for.
        return lease is None or lease.note != "cancelled"
    return lease.expires_at is None or aware(lease.expires_at) < now


def stalled_uploads(
    engine: Engine, *, older_than_s: float, now: datetime | None = None
) -> list[Stalled]:
    """Uploads to hand off again (see the module docstring), oldest first."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    found = [Stalled(row) for row in uploads.list_received_without_run(engine, cutoff)]
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(GatewayUpload).where(
            GatewayUpload.state == uploads.PROCESSING,
            col(GatewayUpload.error).is_(None),
            col(GatewayUpload.updated_at) < cutoff,
        )
        for row in s.exec(stmt.order_by(col(GatewayUpload.updated_at))).all():
            if _lease_free(s, upload_lease_name(row.id, row.store_url), now):
                found.append(Stalled(row, after_run=row.flow_run_id))
    return found


def gateway_session_ids(engine: Engine) -> set[str]:
    """Ledger sessions of uploads the gateway still owns (receiving, received, processing)."""
    with Session(engine) as s:
        stmt = select(GatewayUpload.session_id).where(col(GatewayUpload.state).in_(OPEN_STATES))
        return {sid for sid in s.exec(stmt).all() if sid}


def _age_h(dt: datetime, now: datetime) -> float:
    return round((now - aware(dt)).total_seconds() / 3600, 2)


def expire_uploads(
    rt: Runtime, *, upload_ttl: timedelta, dry_run: bool, now: datetime | None = None
) -> list[dict[str, object]]:
    """Expired uploads → ``expired``, nothing left of them; orphan multipart uploads aborted.
    One row per finding, in the cleanup report's shape (kind, what, age_h, action)."""
    now = now or utcnow()
    verb = "would remove" if dry_run else "removed"
    log = get_logger()
    rows: list[dict[str, object]] = []
    for row in uploads.list_expired(rt.catalog.engine, now):
        if row.store_url != rt.store.url:
            continue  # staged in another store: the cleanup of that store's deployment removes it
        if not dry_run:
            try:
                TusWriter(rt.store, rt.catalog, part_size=row.part_size).terminate(
                    row, state=uploads.EXPIRED
                )
            except UploadConflictError:
                continue  # a request changed it meanwhile: the next cleanup looks again
            log.info("gateway_upload_expired", upload=row.id, offset=row.offset)
            # The status API already answers failed/upload_expired; the stage log (metrics, the
            # daily report's failure reasons) learns it too.
            stages.record(
                rt.catalog.engine,
                row.id,
                stages.FAILED,
                upload_id=row.id,
                origin="gateway",
                owner=row.owner,
                account=row.account,
                size_bytes=row.length,
                reason="upload_expired",
                message=f"the upload expired at {row.offset} bytes",
            )
        rows.append(
            {
                "kind": "gateway_upload",
                "what": row.id,
                "age_h": _age_h(row.expires_at, now),
                "action": verb,
            }
        )
    cutoff = now - upload_ttl
    for pending in rt.store.list_uploads(uploads.INCOMING_PREFIX):
        if aware(pending.initiated) > cutoff:
            continue
        upload = pending.key.removeprefix(uploads.INCOMING_PREFIX).split("/", 1)[0]
        if uploads.get(rt.catalog.engine, upload) is not None:
            continue  # a row's own: expiry (above) or its run removes it
        if not dry_run:
            rt.store.abort_upload(pending.key, pending.upload_id)
        rows.append(
            {
                "kind": "multipart_upload",
                "what": f"{pending.key} ({pending.upload_id})",
                "age_h": _age_h(pending.initiated, now),
                "action": verb,
            }
        )
    return rows
