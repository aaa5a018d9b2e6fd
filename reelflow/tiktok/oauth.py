"""TikTok's OAuth token endpoint: the forms the client sends and the ``TokenSet`` it reads back.

This module owns what a token exchange or refresh looks like on the wire (the form fields, the
headers) and how a reply becomes a ``TokenSet``; the send is the transport's. It keeps no
tokens: they are passed in and handed back, and ``TokenSet``'s ``repr`` hides both.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from reelflow.tiktok.errors import error_from_response, malformed_response
from reelflow.tiktok.replies import int_or_none, json_object
from reelflow.tiktok.transport import Transport

TOKEN_PATH = "/v2/oauth/token/"
TOKEN_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, repr=False)
class TokenSet:
    """What the token endpoint returned. ``repr`` hides both tokens.

    Lifetimes differ between TikTok's pages (24 h/365 d vs 2 h/180 d), so callers store the
    ``expires_in`` values they receive rather than assuming any.
    """

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    open_id: str
    scope: str  # comma-separated, as TikTok sends it

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.scope.split(",") if s.strip())

    def __repr__(self) -> str:
        return (
            f"TokenSet(open_id={self.open_id!r}, scope={self.scope!r}, "
            f"expires_in={self.expires_in}, refresh_expires_in={self.refresh_expires_in}, "
            "access_token=<redacted>, refresh_token=<redacted>)"
        )

    __str__ = __repr__


def code_form(
    client_key: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str | None,
) -> dict[str, str]:
    """The form that trades an authorization code for tokens."""
    form = {
        "client_key": client_key,
        "client_secret": client_secret,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": redirect_uri,
    }
    if code_verifier is not None:  # desktop/mobile PKCE only
        form["code_verifier"] = code_verifier
    return form


def refresh_form(client_key: str, client_secret: str, refresh_token: str) -> dict[str, str]:
    """The form that trades a refresh token for a new access token."""
    return {
        "client_key": client_key,
        "client_secret": client_secret,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }


def request_tokens(
    transport: Transport,
    api_base: str,
    form: dict[str, str],
    *,
    previous_refresh_token: str | None,
) -> TokenSet:
    """POST ``form`` to the token endpoint and read the reply; errors are typed."""
    resp = transport.send(
        "POST", api_base + TOKEN_PATH, endpoint=TOKEN_PATH, headers=TOKEN_HEADERS, data=form
    )
    return token_set(resp, previous_refresh_token=previous_refresh_token)


def token_set(resp: requests.Response, *, previous_refresh_token: str | None) -> TokenSet:
    """A token reply as a ``TokenSet``. If it carries no refresh token, the one sent is kept,
    so a caller persisting the result never overwrites a good refresh token with an empty one."""
    error = error_from_response(resp, endpoint=TOKEN_PATH)
    if error is not None:
        raise error
    body = json_object(resp, endpoint=TOKEN_PATH)
    if isinstance(body.get("data"), dict) and "access_token" in body["data"]:
        body = body["data"]  # tolerate the v2 envelope around the token fields
    access_token = body.get("access_token")
    refresh_token = body.get("refresh_token") or previous_refresh_token
    if not isinstance(access_token, str) or not access_token:
        raise malformed_response(resp, endpoint=TOKEN_PATH, detail="access_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise malformed_response(resp, endpoint=TOKEN_PATH, detail="refresh_token")
    expires_in = int_or_none(body.get("expires_in"))
    if expires_in is None:
        raise malformed_response(resp, endpoint=TOKEN_PATH, detail="expires_in")
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=expires_in,
        refresh_expires_in=int_or_none(body.get("refresh_expires_in")) or 0,
        open_id=str(body.get("open_id") or ""),
        scope=str(body.get("scope") or ""),
    )
