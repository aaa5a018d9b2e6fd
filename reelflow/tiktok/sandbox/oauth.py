"""OAuth for the sandbox: auth codes, grants, access and refresh tokens, and Bearer checks.

This module owns the ``/v2/oauth/token/`` grants (authorization_code, refresh_token with optional
rotation), ``/v2/oauth/revoke/``, the admin token actions (expire, revoke) and turning a Bearer
header into a live, in-scope token. It must not rate-limit (``rates``), touch publishes (a revoke
reports the grant through ``on_revoke``; the status machine fails its publishes) or share the
client's token rules in ``reelflow.tiktok.tokens``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reelflow.tiktok.sandbox.accounts import Account
from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import OAuthError, SandboxError


@dataclass
class Grant:
    grant_id: int
    open_id: str
    scopes: tuple[str, ...]
    refresh_token: str
    refresh_expires_at: float
    revoked: bool = False


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_at: float

    @property
    def open_id(self) -> str:
        return self.grant.open_id


class TokenAuthority:
    """Issues, refreshes, expires and revokes tokens; checks the Bearer token on API calls."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: Clock,
        lock: threading.RLock,
        *,
        account: Callable[[str], Account],
        on_revoke: Callable[[Grant], None],
    ) -> None:
        self._config = config
        self._clock = clock
        self._lock = lock
        self._account = account
        self._on_revoke = on_revoke
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.codes: dict[str, tuple[str, str, float]] = {}  # code -> open_id, uri, expiry
            self.grants: list[Grant] = []
            self.refresh: dict[str, Grant] = {}  # only the live refresh token of each grant
            self.access: dict[str, AccessToken] = {}

    # ----- admin ------------------------------------------------------------------------------

    def issue_auth_code(self, open_id: str, redirect_uri: str | None = None) -> str:
        with self._lock:
            self._account(open_id)
            code = secrets.token_urlsafe(24)
            uri = redirect_uri or self._config.redirect_uri
            self.codes[code] = (open_id, uri, self._clock.now() + self._config.auth_code_ttl_s)
            return code

    def issue_grant(self, account: Account) -> dict[str, Any]:
        """A new grant for ``account`` and its first token pair, as the token endpoint answers."""
        with self._lock:
            refresh = f"rft.{secrets.token_urlsafe(32)}"
            expires_at = self._clock.now() + self._config.refresh_expires_in
            grant = Grant(
                len(self.grants) + 1, account.open_id, account.scopes, refresh, expires_at
            )
            self.grants.append(grant)
            self.refresh[refresh] = grant
            return self._token_response(grant, self._new_access(grant))

    def expire_access_token(self, token: str) -> dict[str, bool]:
        with self._lock:
            if token not in self.access:
                raise SandboxError(404, "invalid_params", "unknown access token")
            self.access[token].expires_at = self._clock.now()
            return {"expired": True}

    def revoke_token(self, token: str) -> dict[str, bool]:
        """Revoke the grant behind an access or refresh token, as a user removing the app would."""
        with self._lock:
            grant = self.refresh.get(token) or getattr(self.access.get(token), "grant", None)
            if grant is None:
                return {"revoked": False}
            grant.revoked = True
            self.refresh.pop(grant.refresh_token, None)
            self._on_revoke(grant)
            return {"revoked": True}

    # ----- OAuth endpoints --------------------------------------------------------------------

    def oauth_token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``POST /v2/oauth/token/``: the authorization_code and refresh_token grants."""
        with self._lock:
            self._check_client(form)
            grant_type, now = form.get("grant_type", ""), self._clock.now()
            if grant_type == "authorization_code":
                entry = self.codes.pop(form.get("code", ""), None)  # single use, even on failure
                if entry is None or entry[2] <= now:
                    raise self._oauth(400, "invalid_grant", "Authorization code is expired.")
                if form.get("redirect_uri", "") != entry[1]:
                    raise self._oauth(400, "invalid_grant", "Redirect URI does not match.")
                return self.issue_grant(self._account(entry[0]))
            if grant_type == "refresh_token":
                grant = self.refresh.get(form.get("refresh_token", ""))
                if grant is None or grant.revoked or grant.refresh_expires_at <= now:
                    raise self._oauth(400, "invalid_grant", "Refresh token is invalid or expired.")
                if self._config.refresh_resets_expiry:
                    grant.refresh_expires_at = now + self._config.refresh_expires_in
                if self._config.rotate_refresh:
                    # [U] whether the old token keeps working is undocumented; here it dies.
                    del self.refresh[grant.refresh_token]
                    grant.refresh_token = f"rft.{secrets.token_urlsafe(32)}"
                    self.refresh[grant.refresh_token] = grant
                return self._token_response(grant, self._new_access(grant))
            if not grant_type:
                raise self._oauth(400, "invalid_request", "grant_type is required.")
            raise self._oauth(400, "unsupported_grant_type", f"Unsupported grant {grant_type!r}.")

    def oauth_revoke(self, form: Mapping[str, str]) -> None:
        """``POST /v2/oauth/revoke/``; unknown tokens succeed silently, as RFC 7009 asks."""
        with self._lock:
            self._check_client(form)
            if not form.get("token"):
                raise self._oauth(400, "invalid_request", "token is required.")
            self.revoke_token(form["token"])

    # ----- API calls --------------------------------------------------------------------------

    def bearer(self, authorization: str | None, scopes_any: tuple[str, ...]) -> AccessToken:
        """The live token behind a Bearer header that holds one of ``scopes_any``."""
        scheme, _, value = (authorization or "").partition(" ")
        with self._lock:
            record = self.access.get(value.strip()) if scheme.lower() == "bearer" else None
            if record is None or record.expires_at <= self._clock.now() or record.grant.revoked:
                raise SandboxError(401, "access_token_invalid", "The access token is invalid.")
            if not set(scopes_any) & set(record.grant.scopes):
                needed = " or ".join(scopes_any)
                raise SandboxError(401, "scope_not_authorized", f"The token lacks {needed}.")
            return record

    # ----- internals --------------------------------------------------------------------------

    def _oauth(self, status: int, error: str, description: str) -> OAuthError:
        return OAuthError(self._config.oauth_error_status or status, error, description)

    def _check_client(self, form: Mapping[str, str]) -> None:
        secret_ok = secrets.compare_digest(
            form.get("client_secret", ""), self._config.client_secret
        )
        if form.get("client_key") != self._config.client_key or not secret_ok:
            raise self._oauth(401, "invalid_client", "Client key or secret is invalid.")

    def _new_access(self, grant: Grant) -> AccessToken:
        token = f"act.{secrets.token_urlsafe(32)}"
        record = AccessToken(token, grant, self._clock.now() + self._config.access_expires_in)
        self.access[token] = record
        return record

    def _token_response(self, grant: Grant, access: AccessToken) -> dict[str, Any]:
        now = self._clock.now()
        return {
            "access_token": access.token,
            "expires_in": round(access.expires_at - now),
            "open_id": grant.open_id,
            "refresh_expires_in": max(0, round(grant.refresh_expires_at - now)),
            "refresh_token": grant.refresh_token,
            "scope": ",".join(grant.scopes),
            "token_type": "Bearer",
        }
