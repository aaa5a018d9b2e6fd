"""The bearer token of every gateway request: ``Authorization: Bearer <JWT>`` → Claims.

Creation, HEAD, PATCH and DELETE each carry the creator's token (tusd authorizes only at
creation and then trusts the URL; here a leaked upload URL is worth nothing without the token).
A missing, malformed, expired or forged token is a 401 with ``WWW-Authenticate: Bearer``; the
token's verification itself (HS256 only, audience, expiry) is :mod:`reelflow.gateway_tokens`'.
Ownership: an upload of another creator answers 404, exactly as an unknown id does, so the
existence of someone else's upload is never revealed.

Must not: log or echo the token, the Authorization header or the secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reelflow.gateway_tokens import Claims, TokenError, check_secret, verify
from reelflow.logging import remember_secret
from reelflow.settings import Settings
from reelflow.tus import HeaderMap, TusError

REALM = "reelflow-gateway"


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


def authenticate(headers: HeaderMap, secret: bytes, *, now: datetime) -> Claims:
    """The verified claims of the request's token, or a 401 ``TusError``."""
    token = bearer_token(headers)
    try:
        return verify(secret, token, now=now)
    except TokenError as exc:
        raise _unauthorized(str(exc), error="invalid_token") from None


def not_found(upload_id: str) -> TusError:
    return TusError(404, f"no upload {upload_id}", reason="not_found")


def owned(row: Any, claims: Claims, upload_id: str) -> Any:
    """``row`` when the token's subject created it; otherwise the same 404 as an unknown id."""
    if row is None or row.owner != claims.subject:
        raise not_found(upload_id)
    return row
