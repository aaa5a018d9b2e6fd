"""TikTok accounts in the catalog: the ``tiktok_account`` table and its repository.

``Account`` is a named TikTok login: its ``open_id`` and scopes, the access and refresh tokens
*encrypted* (:mod:`storage.crypto`), and their absolute expiry times (computed from the
``expires_in`` TikTok sent, never assumed). :class:`AccountTokenStore` is the catalog's side of
``reelflow.tiktok.tokens.AccountStore``: what ``TokenManager`` reads and writes, including the
outcome of the last refresh (``last_refresh_at``, ``last_refresh_error`` and its time, columns
:data:`ADDED_COLUMNS` adds to older catalogs). :func:`token_health` is what ``accounts list``
shows of it; :func:`remove_account` deletes the row, and with it both tokens.

Must not: call TikTok, or decide when to refresh (that is ``reelflow.tiktok.tokens``). Rows'
``repr`` hides the encrypted columns, so a logged row leaks neither plaintext nor ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Unpack

from sqlalchemy import DateTime
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from reelflow.errors import ConfigurationError
from reelflow.tiktok.tokens import RefreshedTokens, StoredTokens
from storage.clock import aware, utcnow
from storage.crypto import SecretBox
from storage.rows import commit_row, optional_timestamp_field, timestamp_field


class Account(SQLModel, table=True):
    """A TikTok login. Token columns hold Fernet ciphertext; expiries are absolute UTC times."""

    __tablename__ = "tiktok_account"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    open_id: str | None = None
    scopes: str = ""  # comma-separated, as TikTok sends it
    access_token_enc: str = Field(repr=False)
    refresh_token_enc: str = Field(repr=False)
    access_expires_at: datetime = Field(sa_type=DateTime(timezone=True))
    access_lifetime_s: int  # the expires_in received, to refresh a fraction ahead of expiry
    refresh_expires_at: datetime | None = optional_timestamp_field()
    token_version: int = 0  # bumped by every token write, so a reader sees a rotation happened
    last_refresh_at: datetime | None = optional_timestamp_field()  # the last refresh that worked
    last_refresh_error: str | None = None  # the last refused refresh's code and message
    last_refresh_error_at: datetime | None = optional_timestamp_field()
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


# Columns added after the table first shipped (storage.catalog adds them to an older catalog).
_TIMESTAMP_DDL = "TIMESTAMP WITH TIME ZONE"
ADDED_COLUMNS = {
    "last_refresh_at": _TIMESTAMP_DDL,
    "last_refresh_error": "TEXT",
    "last_refresh_error_at": _TIMESTAMP_DDL,
}
MAX_REFRESH_ERROR_CHARS = 500  # a message, not a log: enough for code, text and log_id


def save_account(
    engine: Engine,
    box: SecretBox,
    name: str,
    *,
    access_token: str,
    refresh_token: str,
    expires_in: int,
    refresh_expires_in: int | None,
    open_id: str | None = None,
    scopes: str = "",
    now: datetime | None = None,
) -> Account:
    """Add an account or re-authorize an existing one (replaces both tokens)."""
    if not access_token or not refresh_token:
        raise ConfigurationError("an account needs both an access token and a refresh token")
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as s:
        row = s.exec(select(Account).where(Account.name == name)).first()
        if row is None:
            row = Account(
                name=name,
                access_token_enc="",
                refresh_token_enc="",
                access_expires_at=now,
                access_lifetime_s=0,
            )
        row.access_token_enc = box.seal(access_token)
        row.refresh_token_enc = box.seal(refresh_token)
        row.access_expires_at = now + timedelta(seconds=expires_in)
        row.access_lifetime_s = expires_in
        row.refresh_expires_at = (
            now + timedelta(seconds=refresh_expires_in) if refresh_expires_in else None
        )
        return _save_new_version(s, row, open_id=open_id, scopes=scopes, now=now)


def store_refreshed_tokens(
    engine: Engine,
    box: SecretBox,
    name: str,
    *,
    access_token: str,
    refresh_token: str | None,
    expires_in: int,
    refresh_expires_in: int | None,
    open_id: str | None = None,
    scopes: str | None = None,
    now: datetime | None = None,
) -> Account:
    """Persist a refresh's result in one transaction (access + rotated refresh token together).

    An empty ``refresh_token`` keeps the stored one: a good refresh token is never overwritten
    with nothing. The refresh expiry only moves when TikTok sent a new one.
    """
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as s:
        row = s.exec(select(Account).where(Account.name == name)).first()
        if row is None:
            raise ConfigurationError(f"no TikTok account named {name!r}")
        row.access_token_enc = box.seal(access_token)
        row.access_expires_at = now + timedelta(seconds=expires_in)
        row.access_lifetime_s = expires_in
        if refresh_token:
            row.refresh_token_enc = box.seal(refresh_token)
        if refresh_expires_in:
            row.refresh_expires_at = now + timedelta(seconds=refresh_expires_in)
        row.last_refresh_at, row.last_refresh_error, row.last_refresh_error_at = now, None, None
        return _save_new_version(s, row, open_id=open_id, scopes=scopes, now=now)


def record_refresh_error(engine: Engine, name: str, error: str, *, now: datetime) -> None:
    """Note a refused refresh on the account (no token in it: the message is redacted and
    TokenManager's messages name none); a later successful refresh clears it."""
    with Session(engine, expire_on_commit=False) as s:
        row = s.exec(select(Account).where(Account.name == name)).first()
        if row is None:
            return  # removed meanwhile: nothing to note it on
        row.last_refresh_error = error[:MAX_REFRESH_ERROR_CHARS]
        row.last_refresh_error_at = now
        commit_row(s, row)


def remove_account(engine: Engine, name: str) -> bool:
    """Delete the account and so both its (encrypted) tokens; False when there was none.

    The publish ledger keeps the account's name on its rows (what was posted where stays
    known); a later ``accounts add`` of the name starts from new tokens.
    """
    with Session(engine) as s:
        row = s.exec(select(Account).where(Account.name == name)).first()
        if row is None:
            return False
        s.delete(row)
        s.commit()
        return True


def _seconds_until(when: datetime | None, now: datetime) -> int | None:
    return None if when is None else int((aware(when) - now).total_seconds())


def token_health(row: Account, now: datetime) -> dict[str, Any]:
    """What ``accounts list`` shows of an account's tokens (never the tokens): seconds until
    each expires (negative: expired), the last refresh and the last refused one, and a one-word
    ``health``: ``ok``, ``refresh_due`` (the access token expired; the next use refreshes it),
    ``refresh_failing`` (the last refresh was refused after the last good one) or ``expired``
    (the refresh token expired: re-authorize with ``accounts add``)."""
    access_in = _seconds_until(row.access_expires_at, now)
    refresh_in = _seconds_until(row.refresh_expires_at, now)
    last_ok, last_err = aware(row.last_refresh_at), aware(row.last_refresh_error_at)
    failing = row.last_refresh_error is not None and (
        last_ok is None or (last_err is not None and last_err >= last_ok)
    )
    if refresh_in is not None and refresh_in <= 0:
        health = "expired"
    elif failing:
        health = "refresh_failing"
    elif access_in is not None and access_in <= 0:
        health = "refresh_due"
    else:
        health = "ok"
    return {
        "health": health,
        "access_expires_in_s": access_in,
        "refresh_expires_in_s": refresh_in,
        "last_refresh_at": last_ok.isoformat() if last_ok else None,
        "last_refresh_error": row.last_refresh_error,
        "last_refresh_error_at": last_err.isoformat() if last_err else None,
    }


def _save_new_version(
    s: Session, row: Account, *, open_id: str | None, scopes: str | None, now: datetime
) -> Account:
    """Commit ``row``'s new tokens as the next token version; an empty ``open_id`` or
    ``scopes`` keeps the stored one."""
    row.open_id = open_id or row.open_id
    row.scopes = scopes or row.scopes
    row.token_version += 1
    row.updated_at = now
    return commit_row(s, row)


def get_account(engine: Engine, name: str) -> Account | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.exec(select(Account).where(Account.name == name)).first()


def list_accounts(engine: Engine) -> list[Account]:
    with Session(engine) as s:
        return list(s.exec(select(Account).order_by(Account.name)).all())  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Sealed:
    """A token column's ciphertext, opened with the box only when it is used."""

    box: SecretBox = field(repr=False)
    ciphertext: str = field(repr=False)

    def reveal(self) -> str:
        return self.box.open(self.ciphertext)


class AccountTokenStore:
    """The catalog as ``TokenManager``'s :class:`~reelflow.tiktok.tokens.AccountStore`."""

    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self._engine = engine
        self._box = box

    def __repr__(self) -> str:
        return "AccountTokenStore()"

    def load(self, name: str) -> StoredTokens | None:
        row = get_account(self._engine, name)
        if row is None:
            return None
        return StoredTokens(
            open_id=row.open_id,
            scopes=row.scopes,
            access_token=_Sealed(self._box, row.access_token_enc),
            refresh_token=_Sealed(self._box, row.refresh_token_enc),
            access_expires_at=aware(row.access_expires_at),  # SQLite hands back naive times
            access_lifetime_s=row.access_lifetime_s,
            refresh_expires_at=aware(row.refresh_expires_at),
            token_version=row.token_version,
        )

    def save_refreshed(
        self, name: str, *, now: datetime, **tokens: Unpack[RefreshedTokens]
    ) -> None:
        store_refreshed_tokens(self._engine, self._box, name, now=now, **tokens)

    def record_refresh_error(self, name: str, error: str, *, now: datetime) -> None:
        record_refresh_error(self._engine, name, error, now=now)
