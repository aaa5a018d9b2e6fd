"""The publish ledger: the ``tiktok_publish`` table, one row per publish, and its repository.

A row is written before TikTok's init is called; ``publish_id`` is stored the moment init
returns, the upload URL encrypted (it carries an upload token; :mod:`storage.crypto`), and every
re-init is appended to ``init_history``. A publish is identified by (media, account,
generation): generation 0 is *the* publish of a media to an account (a second request with
another caption finds it, and posts nothing); generations 1, 2, ... are explicit re-posts
(``--again``). The generation is kept in the row's canonical options (``options_json`` /
``options_hash``, key ``generation``, absent for 0), so catalogs written before it existed need
no migration: their rows are generation 0. Each repository function is one short transaction,
except :func:`find_or_make_publish`, which retries a lost race for a generation (bounded).

Every write to the ledger is a function here, named for the fact it records (``record_init``,
``record_progress``, ``record_tiktok_status``, ``record_run_error``, ...): flows and tasks call
them and never set columns themselves. Which existing row a request *is* is the pure rule
:func:`reelflow.publish_rules.select_publish`, applied by :func:`find_or_make_publish`.

Accounts and their tokens are :mod:`storage.accounts`.

Must not: call TikTok, decide what to do next (that is ``tasks/`` and ``flows/``), or hand out
a decrypted secret except through :class:`~storage.crypto.SecretBox`. Rows' ``repr`` hides the
encrypted columns too, so a logged row leaks neither plaintext nor ciphertext.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from reelflow.errors import TransientStorageError
from reelflow.publish_rules import (
    FAILED,
    PENDING,
    PROCESSING,
    PUBLISHED,
    SENT_TO_INBOX,
    UPLOADED,
    UPLOADING,
    PublishRequest,
    post_options,
    request_from_options,
    select_publish,
)
from storage.clock import aware, utcnow
from storage.crypto import SecretBox
from storage.rows import commit_row, optional_timestamp_field, timestamp_field, update_row

GENERATION_KEY = "generation"
MAX_GENERATION_RACES = 16  # concurrent --again runs of other options taking the same generation

# TikTok's terminal statuses and the local state each closes a row in.
CLOSING_STATES = {
    "PUBLISH_COMPLETE": PUBLISHED,
    "SEND_TO_USER_INBOX": SENT_TO_INBOX,
    "FAILED": FAILED,
}

# ----- table --------------------------------------------------------------------------------------


class Publish(SQLModel, table=True):
    """One publish of one media to one account (generation 0, or an explicit re-post)."""

    __tablename__ = "tiktok_publish"
    __table_args__ = (UniqueConstraint("media_id", "account", "options_hash"),)

    id: str = Field(primary_key=True)
    media_id: str = Field(index=True)
    account: str
    options_hash: str
    options_json: str  # the canonical post options the hash covers
    mode: str  # "direct" | "inbox"
    status: str = PENDING
    tiktok_status: str | None = None
    publish_id: str | None = Field(default=None, index=True)
    upload_url_enc: str | None = Field(default=None, repr=False)
    upload_url_issued_at: datetime | None = optional_timestamp_field()
    video_size: int
    chunk_size: int | None = None
    chunks_total: int | None = None
    bytes_acknowledged: int = 0
    inits: int = 0
    init_history: str = "[]"  # JSON: [{at, publish_id, reason, replaced, bytes_acknowledged}]
    fail_reason: str | None = None
    error_code: str | None = None
    log_id: str | None = None
    post_id: str | None = None
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    completed_at: datetime | None = optional_timestamp_field()

    def history(self) -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = json.loads(self.init_history or "[]")
        return loaded

    @property
    def generation(self) -> int:
        """0 for *the* publish of the media to the account; 1, 2, ... for explicit re-posts."""
        return int(json.loads(self.options_json or "{}").get(GENERATION_KEY, 0))

    @property
    def post_options(self) -> dict[str, Any]:
        """The row's post options (mode, privacy_level, caption), without the generation."""
        loaded: dict[str, Any] = json.loads(self.options_json or "{}")
        loaded.pop(GENERATION_KEY, None)
        return loaded

    @property
    def created_ts(self) -> float:
        return float(aware(self.created_at).timestamp())

    def request(self, *, again: bool = False) -> PublishRequest:
        """The request this row's recorded options are (a publish is driven with its own)."""
        return request_from_options(self.post_options, self.account, again=again)


# ----- identities ------------------------------------------------------------------------------


def options_hash(options: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the post options (mode, privacy, caption, ...)."""
    canonical = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def publish_row_id(media_id: str, account: str, generation: int = 0) -> str:
    """The row id of a publish: (media, account, generation), never the caption or privacy.

    (Rows written before generations existed have ids from their options' hash; they are
    found through :func:`publishes_for`, never by recomputing an id.)
    """
    digest = hashlib.sha256(f"{media_id}\0{account}\0g{generation}".encode()).hexdigest()
    return f"pub_{digest[:24]}"


def ledger_options(options: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The options a row stores: the post options, plus the generation when it is not 0."""
    stored = {k: v for k, v in options.items() if k != GENERATION_KEY}
    if generation:
        stored[GENERATION_KEY] = generation
    return stored


# ----- publishes -------------------------------------------------------------------------------


def ensure_publish(engine: Engine, row: Publish) -> Publish:
    """Insert ``row`` unless a row with its id exists; return what the catalog holds."""
    with Session(engine, expire_on_commit=False) as s:
        existing = s.get(Publish, row.id)
        if existing is not None:
            return existing
        s.add(row)
        try:
            s.commit()
        except IntegrityError:  # a concurrent run inserted it first
            s.rollback()
            existing = s.get(Publish, row.id)
            if existing is None:
                raise
            return existing
        s.refresh(row)
        return row


def publishes_for(engine: Engine, media_id: str, account: str) -> list[Publish]:
    """Every publish of ``media_id`` to ``account``, oldest generation first."""
    with Session(engine, expire_on_commit=False) as s:
        stmt = select(Publish).where(Publish.media_id == media_id, Publish.account == account)
        rows = list(s.exec(stmt).all())
    return sorted(rows, key=lambda r: (r.generation, r.created_at))


def replace_pending_options(engine: Engine, row: Publish, request: PublishRequest) -> Publish:
    """Give a publish that never reached TikTok (``pending``, no ``publish_id``) the request's
    options, and return the row as it now stands.

    One conditional UPDATE: a row inited meanwhile keeps its options (TikTok has them), as does
    one whose new options an older row of this media and account already has.
    """
    stored = ledger_options(post_options(request), row.generation)
    stmt = (
        sa_update(Publish)
        .where(
            Publish.id == row.id,  # type: ignore[arg-type]
            Publish.status == PENDING,  # type: ignore[arg-type]
            Publish.publish_id.is_(None),  # type: ignore[union-attr]
        )
        .values(
            options_json=json.dumps(stored, sort_keys=True),
            options_hash=options_hash(stored),
            mode=request.mode,
            updated_at=utcnow(),
        )
    )
    try:
        with engine.begin() as conn:
            replaced = conn.execute(stmt).rowcount == 1
    except IntegrityError:
        replaced = False
    return (get_publish(engine, row.id) or row) if replaced else row


def find_or_make_publish(
    engine: Engine, media_id: str, video_size: int, request: PublishRequest
) -> Publish:
    """The ledger row for this request: an existing publish (:func:`select_publish`), or a new
    one (generation 0, or the next generation for ``again``), inserted before TikTok hears of it."""
    account, again, options = request.account, request.again, post_options(request)
    for _ in range(MAX_GENERATION_RACES):
        rows = publishes_for(engine, media_id, account)
        found = select_publish(rows, options, again=again)
        if found is not None:
            return found
        generation = max((r.generation for r in rows), default=0) + 1 if again else 0
        stored = ledger_options(options, generation)
        row = ensure_publish(
            engine,
            Publish(
                id=publish_row_id(media_id, account, generation),
                media_id=media_id,
                account=account,
                options_hash=options_hash(stored),
                options_json=json.dumps(stored, sort_keys=True),
                mode=request.mode,
                video_size=video_size,
            ),
        )
        if not again or row.post_options == options:
            return row  # ours, or a concurrent run's of the same request
        # a concurrent --again with other options took this generation: take the next one
    raise TransientStorageError(
        f"publish of {media_id} to {account!r}: {MAX_GENERATION_RACES} concurrent "
        "re-posts took every generation tried; run it again"
    )


def get_publish(engine: Engine, row_id: str) -> Publish | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.get(Publish, row_id)


def update_publish(engine: Engine, row_id: str, **fields: Any) -> Publish:
    return update_row(engine, Publish, row_id, **fields)


def record_progress(
    engine: Engine, row_id: str, publish_id: str, *, bytes_acknowledged: int, status: str
) -> bool:
    """One UPDATE per acknowledged chunk (the hot path); False if the session was replaced."""
    stmt = (
        sa_update(Publish)
        .where(Publish.id == row_id, Publish.publish_id == publish_id)  # type: ignore[arg-type]
        .values(bytes_acknowledged=bytes_acknowledged, status=status, updated_at=utcnow())
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1


def record_tiktok_status(
    engine: Engine,
    row_id: str,
    *,
    status: str,
    post_id: str | None,
    fail_reason: str | None,
    log_id: str | None,
    size: int,
) -> Publish:
    """Write one status answer of TikTok's into the ledger (a terminal status closes the row)."""
    local = CLOSING_STATES.get(status)
    if local is None:
        return update_publish(engine, row_id, tiktok_status=status)
    fields: dict[str, Any] = {"status": local, "log_id": log_id, "completed_at": utcnow()}
    if local == FAILED:
        fields |= {"fail_reason": fail_reason or "", "error_code": fail_reason}
    else:
        fields |= {"fail_reason": None, "error_code": None, "bytes_acknowledged": size}
    if local == PUBLISHED:
        fields["post_id"] = post_id
    return update_publish(engine, row_id, tiktok_status=status, **fields)


def record_all_acknowledged(engine: Engine, row_id: str, size: int) -> Publish:
    """TikTok holds every byte (its status said so): only polling remains."""
    return update_publish(engine, row_id, status=UPLOADED, bytes_acknowledged=size)


def record_poll_deadline(engine: Engine, row_id: str) -> Publish:
    """The poll deadline passed first: the reconcile deployment finishes the row."""
    return update_publish(engine, row_id, status=PROCESSING)


def record_run_error(
    engine: Engine, row_id: str, *, code: str | None, log_id: str | None, message: str
) -> None:
    """What stopped a run; a row TikTok failed keeps TikTok's own ``fail_reason``."""
    fields: dict[str, Any] = {"error_code": code, "log_id": log_id}
    latest = get_publish(engine, row_id)
    if latest is not None and latest.status != FAILED:
        fields["fail_reason"] = message[:500]
    update_publish(engine, row_id, **fields)


def record_init(
    engine: Engine,
    box: SecretBox,
    row_id: str,
    *,
    publish_id: str,
    upload_url: str,
    chunk_size: int,
    chunks_total: int,
    reason: str,
    now: datetime | None = None,
) -> Publish:
    """Store a new publish session the moment init returns; a re-init records what it replaced."""
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(Publish, row_id)
        if row is None:
            raise KeyError(row_id)
        history = row.history()
        history.append(
            {
                "at": now.isoformat(),
                "publish_id": publish_id,
                "reason": reason,
                "replaced": row.publish_id,
                "bytes_acknowledged": row.bytes_acknowledged,
            }
        )
        row.init_history = json.dumps(history)
        row.inits += 1
        row.publish_id = publish_id
        row.upload_url_enc = box.seal(upload_url)
        row.upload_url_issued_at = now
        row.chunk_size, row.chunks_total = chunk_size, chunks_total
        row.bytes_acknowledged = 0
        row.status, row.tiktok_status = UPLOADING, "PROCESSING_UPLOAD"
        row.fail_reason = row.error_code = row.log_id = row.post_id = None
        row.updated_at = now
        return commit_row(s, row)


def list_publishes(engine: Engine, media_id: str | None = None) -> list[Publish]:
    with Session(engine) as s:
        stmt = select(Publish).order_by(Publish.created_at)  # type: ignore[arg-type]
        if media_id is not None:
            stmt = stmt.where(Publish.media_id == media_id)
        return list(s.exec(stmt).all())


def publishes_in(engine: Engine, status: str, *, limit: int) -> list[Publish]:
    """Up to ``limit`` publishes in local state ``status``, oldest first."""
    with Session(engine) as s:
        stmt = (
            select(Publish)
            .where(Publish.status == status)
            .order_by(Publish.created_at)  # type: ignore[arg-type]
            .limit(limit)
        )
        return list(s.exec(stmt).all())
