"""The catalog: SQLModel tables (upload ledger, media), the engine factory and the schema.

:func:`make_engine` creates every table of the catalog: this module's, the leases'
(:mod:`storage.leases`), the accounts' (:mod:`storage.accounts`), the publish ledger's
(:mod:`storage.publishing`), the scheduled publishes' (:mod:`storage.schedule`) and the stage
log's (:mod:`storage.stages`); none of
those imports this one.

The ledger is written before the next step relies on it: a part row exists only after the
store acknowledged the part. It is a record, not the truth: on resume the upload code
reconciles it with the store (``ListParts``). Works on SQLite and PostgreSQL (psycopg 3).

A :class:`Catalog` made with ``fenced(fence)`` belongs to the run holding a source's lease: each
of its ledger writes (sessions, parts, media) checks the fencing token in the write's own
transaction, and a stale token's write is rolled back with ``LeaseLostError``.

Media deletion (the ``delete-media`` flow drives it) is three steps, each safe to repeat:
:func:`begin_media_delete` (refuse while a publish is in flight or queued, else mark the media
``deleting`` and plan which content-addressed keys no other media row references),
:func:`confirm_media_delete` (a second look for a publish that slipped in), the object deletes
(the caller's), then :func:`finish_media_delete` (the rows). A run killed after the mark leaves
a ``deleting`` media that the same delete finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import UniqueConstraint, event, func, inspect, or_, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from reelflow import publish_rules as _publish_rules
from reelflow.errors import InputRejectedError, MediaInUseError

# Imported for their tables too: make_engine creates every table SQLModel knows.
from storage import accounts as _accounts  # noqa: F401
from storage import gateway_uploads as _gateway_uploads  # noqa: F401
from storage import leases as _leases
from storage import publishing as _publishing  # noqa: F401
from storage import schedule as _schedule  # noqa: F401
from storage import stages as _stages  # noqa: F401
from storage.base import PartReceipt
from storage.clock import aware, utcnow
from storage.rows import timestamp_field as _ts
from storage.rows import update_row


class UploadSession(SQLModel, table=True):
    """One attempt to stage a source in the store, identified by (fingerprint, store, chunk size)."""

    id: str = Field(primary_key=True)
    source_uri: str
    source_fingerprint: str = Field(index=True)
    store_url: str
    staging_key: str
    upload_id: str | None = None
    size_bytes: int
    chunk_size: int
    parts_total: int
    content_type: str
    ext: str
    status: str = "open"  # open | assembled | completed | aborted
    sha256: str | None = None
    media_id: str | None = None
    error: str | None = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class UploadPartRow(SQLModel, table=True):
    __tablename__ = "upload_part"
    __table_args__ = (UniqueConstraint("upload_id", "part_number"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(index=True, foreign_key="uploadsession.id")
    upload_id: str = Field(index=True)
    part_number: int
    offset: int
    size: int
    sha256_b64: str | None
    etag: str
    uploaded_at: datetime = _ts()
    # What the store acknowledged for a full-object CRC64NVME upload's part (ListParts reports
    # it, and it is compared on assembly); None for SHA-256 uploads.
    crc64nvme_b64: str | None = None


_UPSERTS: dict[str, Any] = {"postgresql": pg_insert, "sqlite": sqlite_insert}
_PART_UPDATE_COLUMNS = ("offset", "size", "sha256_b64", "etag", "uploaded_at", "crc64nvme_b64")
_PART_ADDED_COLUMNS = {"crc64nvme_b64": "VARCHAR"}
_Row = TypeVar("_Row", bound=SQLModel)


class Media(SQLModel, table=True):
    media_id: str = Field(primary_key=True)
    sha256: str = Field(unique=True, index=True)
    size_bytes: int
    content_type: str
    container: str
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    bitrate: int | None = None
    has_audio: bool
    audio_codec: str | None = None
    store_url: str
    video_key: str
    thumbnail_key: str
    metadata_key: str
    thumbnail_time_ms: int = 0
    source_uri: str
    status: str = "stored"
    created_at: datetime = _ts()


def make_engine(url: str) -> Engine:
    """Engine for the catalog; SQLite gets WAL + a busy timeout so part writes from threads queue."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    _create_schema(engine)
    return engine


# Any fixed 64-bit key: it names the catalog's schema lock among PostgreSQL advisory locks.
_SCHEMA_LOCK_KEY = 0x7265656C666C6F77  # "reelflow"


def _create_schema(engine: Engine) -> None:
    """Every table of the catalog, whichever module defines it (see the imports), in one
    transaction. On PostgreSQL workers that start at once on an empty database would race on
    ``CREATE TABLE`` (``UniqueViolation`` on ``pg_class``): a transaction-scoped advisory lock
    makes them take turns, and the later ones find the tables made (SQLite: a file lock)."""
    with _sqlite_schema_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        SQLModel.metadata.create_all(conn)
        _add_columns(conn, "lease", _leases.ADDED_COLUMNS)
        _add_columns(conn, "scheduled_publish", _schedule.ADDED_COLUMNS)
        _add_columns(conn, "tiktok_account", _accounts.ADDED_COLUMNS)
        _add_columns(conn, "upload_part", _PART_ADDED_COLUMNS)


@contextlib.contextmanager
def _sqlite_schema_lock(engine: Engine) -> Iterator[None]:
    """SQLite's DDL runs outside a transaction (pysqlite), so processes opening a new catalog
    file at once raced on ``CREATE TABLE`` ("table … already exists"): they take turns on an
    exclusive lock of a file beside the database instead."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.schema-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """create_all never alters a table: add the columns a later version added to an older
    catalog (the leases' fencing/identity, scheduled posts' options, accounts' refresh health)."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, ddl in columns.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


class Catalog:
    """Ledger and media operations over one engine; each call is its own short transaction."""

    def __init__(self, engine: Engine, *, fence: _leases.Fence | None = None) -> None:
        self.engine = engine
        self.fence = fence

    def fenced(self, fence: _leases.Fence) -> Catalog:
        """This catalog for the run holding ``fence``: its writes are refused once it is stale."""
        return Catalog(self.engine, fence=fence)

    def check_fence(self) -> None:
        """Cheap (no query): raise LeaseLostError if the heartbeat found the lease lost."""
        if self.fence is not None:
            self.fence.check()

    def verify_fence(self) -> None:
        """One query: raise LeaseLostError unless the fence's token is still the lease row's.
        Called right before completing an upload or moving it to its final key."""
        self.check_fence()
        if self.fence is not None:
            with self.engine.begin() as conn:
                _leases.guard(conn, self.fence)

    def _commit_fenced(self, s: Session, row: _Row) -> _Row:
        """Flush ``row``, refuse the write if the fence is no longer the lease row's, commit."""
        s.flush()
        _leases.guard(s.connection(), self.fence)
        s.commit()
        s.refresh(row)
        return row

    # --- sessions -----------------------------------------------------------------------------
    def get_session(self, session_id: str) -> UploadSession | None:
        with Session(self.engine) as s:
            return s.get(UploadSession, session_id)

    def list_sessions(self) -> list[UploadSession]:
        """Every upload session, whatever its status."""
        with Session(self.engine) as s:
            return list(s.exec(select(UploadSession)).all())

    def live_session_ids(self, now: datetime) -> set[str]:
        """Sessions a live run holds: their lease has an owner and has not expired at ``now``."""
        return _leases.live_session_ids(self.engine, now)

    def save_session(self, row: UploadSession) -> UploadSession:
        row.updated_at = utcnow()
        with Session(self.engine, expire_on_commit=False) as s:
            return self._commit_fenced(s, s.merge(row))

    def update_session(self, session_id: str, **fields: Any) -> UploadSession:
        if self.fence is None:
            return update_row(self.engine, UploadSession, session_id, **fields)
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(UploadSession, session_id)
            if row is None:
                raise KeyError(session_id)
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            s.add(row)
            return self._commit_fenced(s, row)

    def completed_session_for(self, fingerprint: str, store_url: str) -> UploadSession | None:
        with Session(self.engine) as s:
            stmt = select(UploadSession).where(
                UploadSession.source_fingerprint == fingerprint,
                UploadSession.store_url == store_url,
                UploadSession.status == "completed",
            )
            return s.exec(stmt).first()

    # --- parts --------------------------------------------------------------------------------
    def record_part(
        self, session_id: str, upload_id: str, offset: int, receipt: PartReceipt
    ) -> None:
        """One upsert per acknowledged part (the hot path: a statement, no ORM round trip)."""
        values: dict[str, Any] = {
            "session_id": session_id,
            "upload_id": upload_id,
            "part_number": receipt.part_number,
            "offset": offset,
            "size": receipt.size,
            "sha256_b64": receipt.sha256_b64,
            "etag": receipt.etag,
            "crc64nvme_b64": receipt.crc64nvme_b64,
            "uploaded_at": utcnow(),
        }
        insert = _UPSERTS[self.engine.dialect.name]  # SQLite or PostgreSQL, as documented
        stmt = insert(UploadPartRow).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["upload_id", "part_number"],
            set_={k: stmt.excluded[k] for k in _PART_UPDATE_COLUMNS},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
            _leases.guard(conn, self.fence)

    def ledger_parts(self, upload_id: str) -> dict[int, PartReceipt]:
        with Session(self.engine) as s:
            rows = s.exec(select(UploadPartRow).where(UploadPartRow.upload_id == upload_id)).all()
            return {
                r.part_number: PartReceipt(
                    r.part_number, r.size, r.etag, r.sha256_b64, r.crc64nvme_b64
                )
                for r in rows
            }

    def forget_parts(self, upload_id: str, part_numbers: set[int] | None = None) -> None:
        with Session(self.engine) as s:
            stmt = delete(UploadPartRow).where(UploadPartRow.upload_id == upload_id)  # type: ignore[arg-type]
            if part_numbers is not None:
                stmt = stmt.where(UploadPartRow.part_number.in_(part_numbers))  # type: ignore[attr-defined]
            s.exec(stmt)  # type: ignore[call-overload]
            _leases.guard(s.connection(), self.fence)
            s.commit()

    # --- media --------------------------------------------------------------------------------
    def get_media(self, media_id: str) -> Media | None:
        with Session(self.engine) as s:
            return s.get(Media, media_id)

    def media_stored_at(self, store_url: str, video_key: str) -> Media | None:
        """The media whose video is ``video_key`` in that store (an upload stored where it was
        received is one), or None."""
        with Session(self.engine) as s:
            stmt = select(Media).where(Media.store_url == store_url, Media.video_key == video_key)
            return s.exec(stmt).first()

    def upsert_media(self, media: Media) -> Media:
        """Insert ``media``, or answer the row of the same content already recorded. When that
        row names another store (one catalog shared by deployments of different stores), it is
        pointed at this copy: the row names where the content was stored last, which is where
        this deployment (the one that just verified it) reads it. Keys are per store since
        uploads are stored where they were uploaded, so the other store's keys are not this one's.
        """
        with Session(self.engine, expire_on_commit=False) as s:
            existing = s.get(Media, media.media_id)
            if existing is None:
                s.add(media)
                return self._commit_fenced(s, media)
            if existing.store_url == media.store_url:
                return existing
            for name in ("store_url", "video_key", "thumbnail_key", "metadata_key"):
                setattr(existing, name, getattr(media, name))
            existing.thumbnail_time_ms = media.thumbnail_time_ms
            s.add(existing)
            return self._commit_fenced(s, existing)

    def list_media(self) -> list[Media]:
        with Session(self.engine) as s:
            return list(s.exec(select(Media).order_by(Media.created_at)).all())  # type: ignore[arg-type]


# ----- media deletion ---------------------------------------------------------------------------

DELETING = "deleting"  # a delete started (objects may be gone); running it again finishes it
# Publishes that may still send to TikTok or read the stored video: a delete waits for them.
_IN_FLIGHT = frozenset(
    {_publish_rules.UPLOADING, _publish_rules.UPLOADED, _publish_rules.PROCESSING}
)
# Publishes that live on after their media: TikTok has the post, so the ledger keeps it (a
# re-ingest of the same video then finds it and never posts it twice).
_KEPT = frozenset({_publish_rules.PUBLISHED, _publish_rules.SENT_TO_INBOX})


@dataclass(frozen=True)
class MediaDeletePlan:
    """What deleting one media removes: ``delete_keys`` (no other media row references them)
    and ``kept_keys`` (another media row of the same store does: content-addressed keys are
    shared by content, so they are reference-counted, never deleted under another row)."""

    media_id: str
    store_url: str
    delete_keys: tuple[str, ...]
    kept_keys: tuple[str, ...]


def media_keys(media: Media) -> tuple[str, ...]:
    return tuple(dict.fromkeys((media.video_key, media.thumbnail_key, media.metadata_key)))


def _in_use(s: Session, media_id: str, now: datetime) -> MediaInUseError | None:
    """Why ``media_id`` cannot be deleted now, or None."""
    pubs = s.exec(select(_publishing.Publish).where(_publishing.Publish.media_id == media_id)).all()
    live_leases = {
        lease.name
        for lease in s.exec(
            select(_leases.Lease).where(
                _leases.Lease.name.in_([p.id for p in pubs]),  # type: ignore[attr-defined]
                col(_leases.Lease.owner).is_not(None),
            )
        ).all()
        if lease.expires_at is not None and aware(lease.expires_at) > now
    }
    busy = [p.id for p in pubs if p.status in _IN_FLIGHT or p.id in live_leases]
    if busy:
        return MediaInUseError(
            f"media {media_id} is being published ({', '.join(busy)}); delete it once the "
            "publish has finished (`reelflow status " + media_id + "`)",
            reason="publish_in_flight",
            publish_ids=busy,
        )
    queued = s.exec(
        select(_schedule.ScheduledPublish).where(
            _schedule.ScheduledPublish.media_id == media_id,
            col(_schedule.ScheduledPublish.status).in_((_schedule.QUEUED, _schedule.CLAIMED)),
        )
    ).all()
    if queued:
        return MediaInUseError(
            f"media {media_id} has {len(queued)} scheduled publish(es) "
            f"({', '.join(q.id for q in queued)}); they must run or be removed first",
            reason="publish_scheduled",
            publish_ids=[q.id for q in queued],
        )
    return None


def begin_media_delete(
    engine: Engine, media_id: str, *, now: datetime | None = None, mark: bool = True
) -> MediaDeletePlan:
    """Refuse (MediaInUseError) or mark the media ``deleting`` and plan its object deletes.

    One transaction: the in-flight check and the mark. A publish that read the media before
    the mark is caught by :func:`confirm_media_delete`'s second look; one that starts after it
    finds no stored media (``flows.publish`` publishes only ``stored`` media).
    Raises ``InputRejectedError`` (``media_not_found``) for an unknown media. ``mark`` False
    only plans (a dry run): the same refusals, nothing written.
    """
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as s:
        media = s.get(Media, media_id)
        if media is None:
            raise InputRejectedError(f"no stored media {media_id!r}", reason="media_not_found")
        refused = _in_use(s, media_id, now)
        if refused is not None:
            raise refused
        if mark:
            media.status = DELETING
            s.add(media)
            s.commit()
        return _plan(s, media)


def _plan(s: Session, media: Media) -> MediaDeletePlan:
    keep: list[str] = []
    delete_keys: list[str] = []
    for key in media_keys(media):
        others = s.exec(
            select(func.count())
            .select_from(Media)
            .where(
                col(Media.media_id) != media.media_id,
                col(Media.store_url) == media.store_url,
                or_(
                    col(Media.video_key) == key,
                    col(Media.thumbnail_key) == key,
                    col(Media.metadata_key) == key,
                ),
            )
        ).one()
        (keep if others else delete_keys).append(key)
    return MediaDeletePlan(media.media_id, media.store_url, tuple(delete_keys), tuple(keep))


def confirm_media_delete(engine: Engine, media_id: str, *, now: datetime | None = None) -> None:
    """The second look after the mark: a publish that slipped in between puts the media back
    (``stored``) and refuses, so nothing it reads is deleted under it."""
    now = now or utcnow()
    with Session(engine) as s:
        refused = _in_use(s, media_id, now)
        if refused is None:
            return
        media = s.get(Media, media_id)
        if media is not None:
            media.status = "stored"
            s.add(media)
            s.commit()
        raise refused


def finish_media_delete(engine: Engine, media_id: str) -> dict[str, int]:
    """Remove the catalog rows of a media whose objects are gone (one transaction): the media,
    its upload sessions and their part rows, its publishes that never reached TikTok (pending
    or failed) and its finished scheduled rows. Publishes TikTok has (published, sent to the
    inbox) stay: they record a post that still exists. Returns the count per table."""
    P, SP = _publishing.Publish, _schedule.ScheduledPublish
    with Session(engine) as s:
        sessions = [
            r.id for r in s.exec(select(UploadSession).where(UploadSession.media_id == media_id))
        ]
        counts = {
            "upload_part": _count_delete(
                s, delete(UploadPartRow).where(col(UploadPartRow.session_id).in_(sessions))
            ),
            "uploadsession": _count_delete(
                s, delete(UploadSession).where(col(UploadSession.id).in_(sessions))
            ),
            "tiktok_publish": _count_delete(
                s, delete(P).where(col(P.media_id) == media_id, col(P.status).not_in(_KEPT))
            ),
            "scheduled_publish": _count_delete(s, delete(SP).where(col(SP.media_id) == media_id)),
            "media": _count_delete(s, delete(Media).where(col(Media.media_id) == media_id)),
        }
        s.commit()
        return counts


def _count_delete(s: Session, stmt: Any) -> int:
    return int(s.exec(stmt).rowcount)  # type: ignore[call-overload]
