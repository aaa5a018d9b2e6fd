"""Access tokens for one stored TikTok account: refreshed ahead of expiry, rotation persisted.

:class:`TokenManager` hands out a live access token for a stored account and owns the refresh
rules. The account lives behind :class:`AccountStore` (the catalog implements it:
``storage.accounts.AccountTokenStore``, tokens encrypted at rest) and the time comes from the
clock it is given, so this module knows no database:

* refresh *ahead* of expiry, using the ``expires_in`` TikTok sent when the token was issued (the
  pages disagree on lifetimes, 24 h vs 2 h, so none is assumed);
* a refresh's result (access token, possibly rotated refresh token, both expiries) is written in
  one transaction, and a good refresh token is never overwritten with an empty one;
* ``call(fn)``: a 401 ``access_token_invalid`` triggers exactly one refresh and one more call; a
  second 401 is terminal;
* a refused refresh (``invalid_grant``: revoked, expired, or rotated away) is terminal
  (:class:`AuthorizationRevokedError`) unless another run rotated the token meanwhile, which a
  re-read of the row tells apart.

Must not: log, return in a message, or keep in ``repr`` any token; retry anything itself (errors
keep their ``retryable`` flag and the calling Prefect task retries); import the storage layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypedDict, TypeVar, Unpack

from reelflow.errors import ConfigurationError
from reelflow.logging import get_logger
from reelflow.tiktok.client import TOKEN_PATH, TikTokClient
from reelflow.tiktok.errors import AccessTokenInvalidError, TikTokAuthError

T = TypeVar("T")

REFRESH_AHEAD_MAX_S = 300.0  # refresh at most 5 minutes before expiry...
REFRESH_AHEAD_FRACTION = 0.1  # ...or a tenth of the lifetime, for short-lived tokens


class AuthorizationRevokedError(TikTokAuthError):
    """The account's refresh token was refused or has expired: a person must re-authorize."""


class SealedSecret(Protocol):
    """A stored secret, decrypted only when it is used (its ``repr`` shows nothing)."""

    def reveal(self) -> str: ...


@dataclass(frozen=True)
class StoredTokens:
    """One account as its store holds it: both tokens sealed, expiries as aware UTC times, and
    a version that every token write bumps."""

    open_id: str | None
    scopes: str  # comma-separated, as TikTok sends it
    access_token: SealedSecret = field(repr=False)
    refresh_token: SealedSecret = field(repr=False)
    access_expires_at: datetime
    access_lifetime_s: int  # the expires_in received with the access token
    refresh_expires_at: datetime | None
    token_version: int


class RefreshedTokens(TypedDict):
    """What a refresh hands its store: the new tokens and their lifetimes (s), as TikTok sent
    them. None (or an empty refresh token) means "keep what is stored"."""

    access_token: str
    refresh_token: str | None
    expires_in: int
    refresh_expires_in: int | None
    open_id: str | None
    scopes: str | None


class AccountStore(Protocol):
    """Where accounts' tokens are kept (the catalog, encrypted: ``storage.accounts``)."""

    def load(self, name: str) -> StoredTokens | None:
        """The account ``name`` as stored now, or None when there is none."""
        ...

    def save_refreshed(
        self, name: str, *, now: datetime, **tokens: Unpack[RefreshedTokens]
    ) -> None:
        """Persist a refresh's result in one transaction; an empty refresh token keeps the
        stored one, and None for the other optional values keeps what is stored."""
        ...


class RefreshErrorRecorder(Protocol):
    """A store that also keeps the last refused refresh (``accounts list`` shows it); optional."""

    def record_refresh_error(self, name: str, error: str, *, now: datetime) -> None: ...


def refresh_due(account: StoredTokens, now: datetime) -> bool:
    """True when the stored access token is expired or inside its refresh-ahead margin."""
    expires_at = account.access_expires_at
    ahead = min(REFRESH_AHEAD_MAX_S, max(0, account.access_lifetime_s) * REFRESH_AHEAD_FRACTION)
    return expires_at - timedelta(seconds=ahead) <= now


class TokenManager:
    """Live access tokens for the account ``name``; safe to share between threads."""

    def __init__(
        self,
        client: TikTokClient,
        accounts: AccountStore,
        name: str,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._client = client
        self._accounts = accounts
        self.name = name
        self._clock = clock  # aware UTC now
        self._lock = threading.Lock()
        account = accounts.load(name)
        if account is None:
            raise ConfigurationError(
                f"no TikTok account named {name!r}; add it with `reelflow accounts add {name}`"
            )
        self.open_id = account.open_id
        self.scopes = frozenset(s for s in account.scopes.split(",") if s)
        self._log = get_logger("reelflow.tiktok.tokens", account=name)

    def __repr__(self) -> str:
        return f"TokenManager(account={self.name!r})"

    @property
    def rate_key(self) -> str:
        """What TikTok's per-token rate limits are counted against here: the TikTok user."""
        return self.open_id or f"name:{self.name}"

    def access_token(self) -> str:
        """A live access token, refreshed first when it is due."""
        account = self._account()
        if refresh_due(account, self._clock()):
            return self.refresh()
        return account.access_token.reveal()

    def call(self, fn: Callable[[str], T]) -> T:
        """``fn(access_token)``; on ``access_token_invalid`` refresh once and call again."""
        token = self.access_token()
        try:
            return fn(token)
        except AccessTokenInvalidError as exc:
            self._log.info("access_token_rejected", code=exc.code, log_id=exc.log_id)
            token = self.refresh(rejected=token)
        return fn(token)  # a second rejection is terminal and propagates

    def refresh(self, *, rejected: str | None = None) -> str:
        """Refresh now (serialised per manager); returns the new access token.

        ``rejected`` is the token TikTok just refused: if the stored token is already a
        different one (another thread or run refreshed meanwhile), that one is used instead.
        """
        with self._lock:
            account = self._account()
            now = self._clock()
            current = account.access_token.reveal()
            if rejected is not None and current != rejected and not refresh_due(account, now):
                return current
            if rejected is None and not refresh_due(account, now):
                return current  # someone refreshed while we waited for the lock
            refresh_expires = account.refresh_expires_at
            if refresh_expires is not None and refresh_expires <= now:
                raise self._noted(
                    now,
                    AuthorizationRevokedError(
                        f"TikTok account {self.name!r}: the refresh token expired at "
                        f"{refresh_expires.isoformat()}; re-authorize with `reelflow accounts add`",
                        code="refresh_token_expired",
                        http_status=None,
                        endpoint=TOKEN_PATH,
                    ),
                )
            try:
                tokens = self._client.refresh(account.refresh_token.reveal())
            except TikTokAuthError as exc:
                latest = self._account()
                if latest.token_version != account.token_version:
                    # Another run rotated the refresh token between our read and our call.
                    self._log.info("access_token_refreshed_elsewhere")
                    return latest.access_token.reveal()
                raise self._noted(
                    now,
                    AuthorizationRevokedError(
                        f"TikTok account {self.name!r}: refresh refused ({exc.code}); the "
                        "authorization was revoked or expired; re-authorize with "
                        f"`reelflow accounts add` [log_id {exc.log_id}]",
                        code=exc.code,
                        http_status=exc.http_status,
                        log_id=exc.log_id,
                        endpoint=TOKEN_PATH,
                    ),
                ) from exc
            rotated = account.refresh_token.reveal() != tokens.refresh_token
            self._accounts.save_refreshed(
                self.name,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_in=tokens.expires_in,
                refresh_expires_in=tokens.refresh_expires_in or None,
                open_id=tokens.open_id or None,
                scopes=tokens.scope or None,
                now=now,
            )
            if tokens.open_id:
                self.open_id = tokens.open_id
            self._log.info(
                "access_token_refreshed",
                expires_in=tokens.expires_in,
                refresh_rotated=rotated,
                refresh_expires_in=tokens.refresh_expires_in,
            )
            return tokens.access_token

    def _noted(self, now: datetime, error: AuthorizationRevokedError) -> AuthorizationRevokedError:
        """Keep the refused refresh on the account when the store can (its message names no
        token), then hand the error back to be raised."""
        record: Callable[..., None] | None = getattr(self._accounts, "record_refresh_error", None)
        if record is not None:  # a RefreshErrorRecorder
            record(self.name, f"{error.code}: {error}", now=now)
        return error

    def _account(self) -> StoredTokens:
        account = self._accounts.load(self.name)
        if account is None:
            raise ConfigurationError(f"TikTok account {self.name!r} was removed")
        return account
