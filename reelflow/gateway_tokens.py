"""The gateway's bearer tokens: HS256 JWTs (PyJWT) naming a creator and what it may do.

Owns: minting a token for a creator (``reelflow gateway token``), verifying one on every
gateway request, the claims (:class:`Claims`) and the rule that the signing key is at least
:data:`MIN_SECRET_BYTES`. Claims: ``sub`` (the creator), ``acc`` (accounts it may publish to),
``msz`` (its own upload limit, or null), ``scope`` (``upload``; ``events``: read-only, for one
upload's status and events), ``upl`` (an ``events`` token's upload id), ``iat``, ``exp``, ``aud``
= :data:`AUDIENCE`, ``iss`` = :data:`ISSUER`. An ``events`` token without ``upl``, or an
``upload`` token with one, is refused.

Only HS256 is accepted (``alg: none``, HS512, RS256... are refused: the algorithm is the
verifier's choice, never the token's). Times are checked against the ``now`` argument with
:data:`LEEWAY_S` of skew between gateway instances. A refusal is a :class:`TokenError` (401)
whose message says expired or invalid and never contains the token.

Must not: read settings or the clock, log, or import starlette.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from reelflow.errors import ConfigurationError, InputRejectedError, ReelflowError
from reelflow.ingest_options import check_account_name

ALGORITHM = "HS256"
AUDIENCE = "reelflow-gateway"
ISSUER = "reelflow"
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output
LEEWAY_S = 5  # clock skew tolerated between the instance that minted and the one verifying
SCOPES = ("upload", "events")
DEFAULT_SCOPE = "upload"
EVENTS_SCOPE = "events"
MAX_TTL_S = 366 * 86400
MAX_SUBJECT_CHARS = 256
# A token is a few hundred bytes; a bound stops a client from making us parse megabytes.
MAX_TOKEN_CHARS = 8192
_REQUIRED = ["sub", "acc", "iat", "exp", "aud", "iss"]


class TokenError(ReelflowError):
    """A bearer token refused (missing, malformed, forged, expired, wrong audience or scope):
    the gateway answers 401. ``reason`` is ``missing``, ``expired`` or ``invalid``."""

    retryable = False
    http_status = 401

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    """What a verified token says: the creator, its accounts, limit, scope and lifetime."""

    subject: str
    accounts: tuple[str, ...]
    max_size: int | None
    expires_at: datetime
    issued_at: datetime
    scope: str = DEFAULT_SCOPE
    upload: str | None = None  # an events token: the one upload it may read

    def limit(self, max_size: int) -> int:
        """The upload limit for this token: the server's, lowered by the token's own."""
        return max_size if self.max_size is None else min(max_size, self.max_size)


def check_secret(secret: bytes | str | None) -> bytes:
    """The signing key as bytes; ConfigurationError unless it is at least 32 bytes."""
    if secret is None:
        raise ConfigurationError(
            "REELFLOW_GATEWAY_SECRET is not set (a signing key of at least "
            f"{MIN_SECRET_BYTES} bytes)"
        )
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"REELFLOW_GATEWAY_SECRET is {len(key)} bytes; at least {MIN_SECRET_BYTES} are "
            "needed (e.g. `openssl rand -base64 48`)"
        )
    return key


def _check_subject(subject: str) -> str:
    if (
        not isinstance(subject, str)
        or not subject.strip()
        or len(subject) > MAX_SUBJECT_CHARS
        or not subject.isprintable()
    ):
        raise InputRejectedError(
            f"token subject must be 1-{MAX_SUBJECT_CHARS} printable characters",
            reason="invalid_subject",
        )
    return subject


def _timestamp(now: datetime) -> int:
    aware = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    return math.floor(aware.timestamp())


def mint(
    secret: bytes | str,
    subject: str,
    *,
    accounts: Sequence[str] = (),
    ttl_s: int,
    max_size: int | None = None,
    now: datetime,
    scope: str = DEFAULT_SCOPE,
    upload: str | None = None,
) -> str:
    """A signed token for ``subject``, valid ``ttl_s`` seconds from ``now``.

    ``accounts`` are the accounts its uploads may publish to (none: store only); ``max_size``
    lowers the gateway's upload limit for it; ``upload`` is the one upload an ``events`` token
    may read (required for that scope, refused for ``upload``). Bad arguments are a
    InputRejectedError."""
    key = check_secret(secret)
    _check_subject(subject)
    for account in accounts:
        check_account_name(account)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise InputRejectedError(
            f"token ttl must be 1..{MAX_TTL_S} seconds, not {ttl_s!r}", reason="invalid_ttl"
        )
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
    ):
        raise InputRejectedError(
            f"token max size must be a positive number of bytes, not {max_size!r}",
            reason="invalid_max_size",
        )
    if scope not in SCOPES:
        raise InputRejectedError(
            f"token scope {scope!r} is not one of {', '.join(SCOPES)}", reason="invalid_scope"
        )
    if (scope == EVENTS_SCOPE) != bool(upload):
        raise InputRejectedError(
            "an events token names exactly one upload, and only an events token does",
            reason="invalid_scope",
        )
    issued = _timestamp(now)
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "acc": list(dict.fromkeys(accounts)),
        "msz": max_size,
        "scope": scope,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if upload:
        payload["upl"] = upload
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def _invalid(why: str) -> TokenError:
    return TokenError(f"invalid token, {why}", reason="invalid")


def verify(
    secret: bytes | str,
    token: str | None,
    *,
    now: datetime,
    scope: str = DEFAULT_SCOPE,
    leeway_s: int = LEEWAY_S,
) -> Claims:
    """The claims of a token signed with ``secret`` (HS256 only), for ``audience`` reelflow's
    gateway and ``scope``, not expired at ``now`` (± ``leeway_s``); TokenError otherwise."""
    key = check_secret(secret)
    if not token:
        raise TokenError("the request carries no token", reason="missing")
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid("too long")
    if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode others
        raise _invalid("malformed")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            # exp / iat are checked below against the caller's clock, not PyJWT's.
            options={
                "require": _REQUIRED,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAlgorithmError as exc:
        raise _invalid(f"algorithm not {ALGORITHM}") from exc
    except jwt.InvalidSignatureError as exc:
        raise _invalid("bad signature") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise _invalid(f"no {exc.claim} claim") from exc
    except jwt.InvalidAudienceError as exc:
        raise _invalid("wrong audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise _invalid("wrong issuer") from exc
    except jwt.PyJWTError as exc:
        # The exception's text may quote the token's parts: say only which kind of failure.
        # (Messages never put a word right after "token": the redactor would take it for one.)
        raise _invalid("malformed") from exc
    return _claims(payload, now=now, scope=scope, leeway_s=leeway_s)


def _int_claim(payload: dict[str, object], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"bad {name} claim")
    return int(value)


def _claims(payload: dict[str, object], *, now: datetime, scope: str, leeway_s: int) -> Claims:
    current = _timestamp(now)
    expires = _int_claim(payload, "exp")
    issued = _int_claim(payload, "iat")
    if current >= expires + leeway_s:
        raise TokenError("expired token, mint a new one", reason="expired")
    if issued > current + leeway_s:
        raise _invalid("issued in the future")
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise _invalid("bad sub claim")
    accounts = payload.get("acc")
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise _invalid("bad acc claim")
    max_size = payload.get("msz")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
    ):
        raise _invalid("bad msz claim")
    token_scope = payload.get("scope", DEFAULT_SCOPE)
    if token_scope != scope:
        raise _invalid(f"not an {scope} token")
    upload = payload.get("upl")
    if scope == EVENTS_SCOPE:
        if not isinstance(upload, str) or not upload:
            raise _invalid("bad upl claim")
    elif upload is not None:
        raise _invalid("an upload token names no upload")
    return Claims(
        subject=subject,
        accounts=tuple(accounts),
        max_size=max_size,
        expires_at=datetime.fromtimestamp(expires, UTC),
        issued_at=datetime.fromtimestamp(issued, UTC),
        scope=scope,
        upload=upload if scope == EVENTS_SCOPE else None,
    )
