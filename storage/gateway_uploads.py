"""The upload gateway's table: one ``gateway_upload`` row per tus upload, and its repository.

A row is what HEAD answers from (``offset``, ``length``, ``metadata_header``, ``expires_at``) and
what the hand-off reads (``state``, ``session_id``, ``upload_id``, ``staging_key``). ``offset``
counts only durable bytes: ``parts_bytes`` (parts the store acknowledged and the ledger holds)
plus ``tail_size`` (the short tail kept as an object in the store, see
:mod:`storage.tus_writer`).

Any gateway instance serves any request, so every change after creation is a compare-and-swap
on ``version`` (:func:`cas_update`: ``UPDATE … WHERE id = ? AND version = ?``, version + 1); a
lost race returns None and the caller decides (the writer raises ``UploadConflictError``). With
a lease fence the same transaction checks the fencing token, so a stale holder's late write is
rolled back with ``LeaseLostError``.

States: ``receiving`` → ``received`` (every byte durable, hand-off pending) → ``processing`` (a
flow run took it: ``flow_run_id``) → ``stored`` | ``failed``; ``cancelled`` (DELETE) and
``expired`` (past ``expires_at``) from ``receiving``.

Must not: touch the object store, the upload ledger or any other table (the writer does that).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import DateTime, Field, Session, SQLModel, col, select

from storage import gateway_progress as _progress  # noqa: F401  (its table is the catalog's too)
from storage import leases as _leases
from storage.clock import utcnow
from storage.rows import commit_row, timestamp_field

RECEIVING = "receiving"
RECEIVED = "received"
PROCESSING = "processing"
STORED = "stored"
FAILED = "failed"
CANCELLED = "cancelled"
EXPIRED = "expired"
STATES = (RECEIVING, RECEIVED, PROCESSING, STORED, FAILED, CANCELLED, EXPIRED)
KINDS = ("single", "partial", "final")

# Where an upload's bytes live in the store. ``incoming/`` is ignored by the cleanup deployment's
# staging sweep and by the S3-event bridge.
INCOMING_PREFIX = "incoming/"
TAIL_NAME = "tail-"


def staging_key_for(upload_id: str) -> str:
    """The key the upload's multipart upload completes to."""
    return f"{upload_prefix(upload_id)}video"


def upload_prefix(upload_id: str) -> str:
    """Every object of the upload lives under this prefix (the video, its tail objects)."""
    return f"{INCOMING_PREFIX}{upload_id}/"


def new_tail_key(upload_id: str) -> str:
    """A fresh key for the upload's tail shorter than a part (tusd's ``.part``): each write
    gets its own, so a writer that loses the CAS never overwrites the tail the row counts."""
    return f"{upload_prefix(upload_id)}{TAIL_NAME}{secrets.token_hex(8)}"


def is_tail_key(key: str) -> bool:
    """A tail object of some upload (not its video, thumbnail or metadata)."""
    return key.startswith(INCOMING_PREFIX) and key.rsplit("/", 1)[-1].startswith(TAIL_NAME)


def session_id_for(upload_id: str) -> str:
    """The upload ledger's session for a tus upload (``UploadSession.id``)."""
    return f"gw_{upload_id}"


class GatewayUpload(SQLModel, table=True):
    __tablename__ = "gateway_upload"

    id: str = Field(primary_key=True)  # the tus id: secrets.token_urlsafe(18)
    owner: str = Field(index=True)  # the token's subject
    account: str | None = None
    metadata_header: str | None = None  # Upload-Metadata as the client sent it (HEAD echoes it)
    metadata_json: str = "{}"  # decoded and validated options
    length: int | None = None  # None while deferred (Upload-Defer-Length: 1)
    offset: int = 0  # durable bytes: parts_bytes + tail_size
    parts_bytes: int = 0
    tail_size: int = 0
    tail_key: str | None = None  # the object holding the tail (a fresh key per write)
    tail_sha256: str | None = None  # of the tail's bytes: checked when it is read back
    next_part: int = 1  # 1-based number of the next part to upload
    part_size: int = 0  # set by TusWriter.create
    kind: str = "single"  # single | partial | final
    concat_json: str | None = None  # final: JSON list of the partial uploads' ids
    store_url: str = ""  # set by TusWriter.create
    staging_key: str = ""  # set by TusWriter.create
    upload_id: str | None = None  # the store's multipart upload id
    session_id: str | None = None  # UploadSession.id in the ledger
    state: str = Field(default=RECEIVING, index=True)
    sha256: str | None = None
    media_id: str | None = None
    flow_run_id: str | None = None
    error: str | None = None
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)  # type: ignore[call-overload]
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    version: int = 0


def create(engine: Engine, row: GatewayUpload) -> GatewayUpload:
    """Insert a new row (``version`` 0); an existing id raises the database's IntegrityCheckError."""
    with Session(engine, expire_on_commit=False) as s:
        return commit_row(s, row)


def get(engine: Engine, upload_id: str) -> GatewayUpload | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.get(GatewayUpload, upload_id)


def get_for_owner(engine: Engine, upload_id: str, owner: str) -> GatewayUpload | None:
    """The row if ``owner`` created it; None for another owner's upload as for a missing one,
    so a handler answers both with 404 and never reveals that the id exists."""
    row = get(engine, upload_id)
    return row if row is not None and row.owner == owner else None


def list_for_owner(
    engine: Engine,
    owner: str,
    *,
    limit: int = 50,
    before: datetime | tuple[datetime, str] | None = None,
    with_partials: bool = True,
) -> list[GatewayUpload]:
    """``owner``'s uploads, newest first. ``before`` pages further back: a ``created_at``, or
    the (``created_at``, ``id``) of the last row of the previous page (rows created in the same
    instant are then neither skipped nor repeated). ``with_partials=False`` leaves out a
    concatenation's partial uploads (pieces of its final one, not uploads of their own)."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(GatewayUpload).where(GatewayUpload.owner == owner)
        if not with_partials:
            stmt = stmt.where(GatewayUpload.kind != "partial")
        if isinstance(before, tuple):
            at, last_id = before
            stmt = stmt.where(
                or_(
                    col(GatewayUpload.created_at) < at,
                    and_(col(GatewayUpload.created_at) == at, col(GatewayUpload.id) < last_id),
                )
            )
        elif before is not None:
            stmt = stmt.where(col(GatewayUpload.created_at) < before)
        stmt = stmt.order_by(col(GatewayUpload.created_at).desc(), col(GatewayUpload.id).desc())
        return list(s.exec(stmt.limit(limit)).all())


def cas_update(
    engine: Engine,
    row_id: str,
    expected_version: int,
    *,
    fence: _leases.Fence | None = None,
    **fields: Any,
) -> GatewayUpload | None:
    """Set ``fields`` on the row if its version is still ``expected_version``; returns the row
    as written (version + 1), or None when another write came first (or the row is gone).

    With ``fence`` the write commits only while the fence's token is the lease row's
    (``LeaseLostError`` otherwise, nothing written), checked in the same transaction.
    """
    bad = set(fields) & {"id", "version", "updated_at"}
    if bad:
        raise ValueError(f"cas_update sets these itself: {sorted(bad)}")
    values = {**fields, "version": expected_version + 1, "updated_at": utcnow()}
    stmt = (
        update(GatewayUpload)
        .where(col(GatewayUpload.id) == row_id, col(GatewayUpload.version) == expected_version)
        .values(**values)
    )
    with Session(engine, expire_on_commit=False) as s:
        if s.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            return None
        _leases.guard(s.connection(), fence)  # raises (and the session rolls back) when stale
        row = s.get(GatewayUpload, row_id, populate_existing=True)
        s.commit()
        return row


def list_expired(engine: Engine, now: datetime) -> list[GatewayUpload]:
    """Uploads still receiving bytes whose ``expires_at`` has passed at ``now``."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(GatewayUpload).where(
            GatewayUpload.state == RECEIVING, col(GatewayUpload.expires_at) < now
        )
        return list(s.exec(stmt.order_by(col(GatewayUpload.expires_at))).all())


def list_received_without_run(engine: Engine, older_than: datetime) -> list[GatewayUpload]:
    """Uploads whose last byte arrived (``received``) before ``older_than`` and that no flow run
    has taken: the hand-off sweeper starts their runs again (the flow's CAS take makes that
    exactly once)."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(GatewayUpload).where(
            GatewayUpload.state == RECEIVED,
            col(GatewayUpload.flow_run_id).is_(None),
            col(GatewayUpload.updated_at) < older_than,
        )
        return list(s.exec(stmt.order_by(col(GatewayUpload.updated_at))).all())
