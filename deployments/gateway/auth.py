"""The credential of every gateway request → Claims: a bearer token, a session cookie, or
(reading one upload's status and events only) a short-lived events token in ``?access=``.

Creation, HEAD, PATCH and DELETE each carry the creator's token (tusd authorizes only at
creation and then trusts the URL; here a leaked upload URL is worth nothing without the token).
A missing, malformed, expired or forged token is a 401 with ``WWW-Authenticate: Bearer``; the
token's verification itself (HS256 only, audience, expiry) is :mod:`reelflow.gateway_tokens`'.
Ownership: an upload of another creator answers 404, exactly as an unknown id does, so the
existence of someone else's upload is never revealed.

Browsers: ``POST /session`` (bearer) or the page's ``GET /?token=`` (:func:`session_redirect`)
exchange the token for the cookie :data:`SESSION_COOKIE`: a JWT of the same subject, accounts
and limit, expiring with the token or after :data:`SESSION_MAX_S`, whichever comes first;
HttpOnly, SameSite=Strict (no other site's page can make the browser send it, so no CSRF
token is needed), Secure over https. An ``Authorization`` header wins over the cookie. A
cross-origin ``EventSource`` (it can send neither headers nor, cross-site, this cookie) asks
``POST /uploads/{id}/events-token`` for a token of scope ``events`` bound to that upload
(claim ``upl``), valid :data:`EVENTS_TOKEN_TTL_S`, accepted only by that upload's ``/status``,
``/events`` and ``/thumbnail`` (:func:`authenticate_reader`). The long-lived token is never
put in a URL by the gateway, and no URL with a query is logged (uvicorn's access log is off).

Must not: log or echo a token, the Authorization or Cookie header, or the secret.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request, cookie_parser
from starlette.responses import RedirectResponse, Response

from reelflow.gateway_tokens import (
    EVENTS_SCOPE,
    Claims,
    TokenError,
    check_secret,
    mint,
    verify,
)
from reelflow.logging import remember_secret
from reelflow.settings import Settings
from reelflow.tus import HeaderMap, TusError

REALM = "reelflow-gateway"
SESSION_COOKIE = "reelflow_session"
SESSION_MAX_S = 12 * 3600
EVENTS_TOKEN_TTL_S = 300
ACCESS_PARAM = "access"


def gateway_secret(settings: Settings) -> bytes:
    """The signing key, or ConfigurationError (one line) when it is unset or under 32 bytes."""
    raw = settings.gateway_secret.get_secret_value() if settings.gateway_secret else None
    secret = check_secret(raw or None)
    remember_secret(raw)  # masked in every log line and error from now on
    return secret


def _unauthorized(message: str, *, error: str | None) -> TusError:
    challenge = f'Bearer realm="{REALM}"'
    if error:  # RFC 6750 §3: a presented token that failed says why; a missing one does not
        challenge += f', error="{error}"'
    return TusError(401, message, headers={"WWW-Authenticate": challenge}, reason="unauthorized")


def bearer_token(headers: HeaderMap) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 when it is missing or not Bearer."""
    value = headers.get("authorization")
    if not value:
        raise _unauthorized(
            "this request needs a bearer token (Authorization: Bearer ...)", error=None
        )
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise _unauthorized(
            "the Authorization header must be 'Bearer <token>'", error="invalid_request"
        )
    return token


def session_cookie_value(headers: HeaderMap) -> str | None:
    """The session cookie's value, if the request carries one."""
    raw = headers.get("cookie")
    if not raw:
        return None
    return cookie_parser(raw).get(SESSION_COOKIE) or None


def authenticate(headers: HeaderMap, secret: bytes, *, now: datetime) -> Claims:
    """The verified claims of the request's bearer token, else of its session cookie; or a
    401 ``TusError``."""
    token = None if headers.get("authorization") else session_cookie_value(headers)
    if token is None:
        token = bearer_token(headers)
    try:
        return verify(secret, token, now=now)
    except TokenError as exc:
        raise _unauthorized(str(exc), error="invalid_token") from None


def authenticate_reader(
    headers: HeaderMap,
    query: Mapping[str, str],
    secret: bytes,
    upload_id: str,
    *,
    now: datetime,
) -> tuple[Claims, str | None]:
    """Who may read ``upload_id``'s status, events or thumbnail: the bearer token or cookie,
    else an events token (``?access=``) bound to exactly this upload. Returns the claims and
    the events token when that is what authorized the request (links in the answer carry it)."""
    access = query.get(ACCESS_PARAM)
    if not access or headers.get("authorization") or session_cookie_value(headers):
        return authenticate(headers, secret, now=now), None
    try:
        claims = verify(secret, access, now=now, scope=EVENTS_SCOPE)
    except TokenError as exc:
        raise _unauthorized(str(exc), error="invalid_token") from None
    if claims.upload != upload_id:
        raise not_found(upload_id)  # another upload's events token: nothing to reveal here
    return claims, access


def _remaining_s(claims: Claims, now: datetime, cap_s: int) -> int:
    left = math.floor((claims.expires_at - now).total_seconds())
    if left < 1:
        raise _unauthorized("expired token, mint a new one", error="invalid_token")
    return min(cap_s, left)


def events_token(
    secret: bytes, claims: Claims, upload_id: str, *, now: datetime
) -> tuple[str, int]:
    """A read-only token for ``upload_id``'s status and events: (token, lifetime in s), never
    outliving the token that asked for it."""
    return _derived(secret, claims, now, EVENTS_TOKEN_TTL_S, scope=EVENTS_SCOPE, upload=upload_id)


def session_token(secret: bytes, claims: Claims, *, now: datetime) -> tuple[str, int]:
    """The session cookie's JWT for ``claims`` (same subject, accounts, limit; scope upload):
    (token, lifetime in s = min(the token's remaining life, 12 h))."""
    return _derived(secret, claims, now, SESSION_MAX_S)


def _derived(
    secret: bytes, claims: Claims, now: datetime, most_s: int, **kind: Any
) -> tuple[str, int]:
    """A token of ``claims``' subject, accounts and limit living at most ``most_s`` and never
    past ``claims``' own expiry: (token, lifetime in s)."""
    ttl = _remaining_s(claims, now, most_s)
    token = mint(
        secret,
        claims.subject,
        accounts=claims.accounts,
        max_size=claims.max_size,
        ttl_s=ttl,
        now=now,
        **kind,
    )
    return token, ttl


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def start_session(
    request: Request, secret: bytes, claims: Claims, response: Response, *, now: datetime
) -> int:
    """Set the session cookie for ``claims`` on ``response``; its lifetime in seconds."""
    token, ttl = session_token(secret, claims, now=now)
    set_session_cookie(response, request, token, ttl)
    return ttl


def session_redirect(request: Request, secret: bytes, *, now: datetime, to: str = "/") -> Response:
    """``GET /?token=<bearer>`` (the upload page's route calls this when ``token`` is in the
    query): verify it, set the session cookie and answer 303 to ``to``, so the token leaves
    the address bar and the history at once. A bad token: 401, and no cookie."""
    token = request.query_params.get("token") or ""
    try:
        claims = verify(secret, token, now=now)
    except TokenError as exc:
        raise _unauthorized(str(exc), error="invalid_token") from None
    response = RedirectResponse(to, status_code=303, headers={"Cache-Control": "no-store"})
    start_session(request, secret, claims, response, now=now)
    return response


def not_found(upload_id: str) -> TusError:
    return TusError(404, f"no upload {upload_id}", reason="not_found")


def owned(row: Any, claims: Claims, upload_id: str) -> Any:
    """``row`` when the token's subject created it; otherwise the same 404 as an unknown id."""
    if row is None or row.owner != claims.subject:
        raise not_found(upload_id)
    return row
