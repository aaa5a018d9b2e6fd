"""TikTok accounts in the catalog: the ``tiktok_account`` table and its repository.

``Account`` is a named TikTok login: its ``open_id`` and scopes, the access and refresh tokens
*encrypted* (:mod:`storage.crypto`), and their absolute expiry times (computed from the
``expires_in`` TikTok sent, never assumed). :class:`AccountTokenStore` is the catalog's side of
``reelflow.tiktok.tokens.AccountStore``: what ``TokenManager`` reads and writes.

Must not: call TikTok, or decide when to refresh (that is ``reelflow.tiktok.tokens``). Rows'
``repr`` hides the encrypted columns, so a logged row leaks neither plaintext nor ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Unpack

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
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


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
        return _save_new_version(s, row, open_id=open_id, scopes=scopes, now=now)


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
