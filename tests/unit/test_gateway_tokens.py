"""The gateway's bearer tokens (reelflow.gateway_tokens): HS256 only, claims, clock, refusals."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.gateway_tokens import (
    AUDIENCE,
    ISSUER,
    LEEWAY_S,
    MIN_SECRET_BYTES,
    Claims,
    TokenError,
    check_secret,
    mint,
    verify,
)

SECRET = b"k" * 64  # long enough for the HS512 forgery below to sign without a warning
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def token(**kw: Any) -> str:
    base: dict[str, Any] = {"accounts": ["main"], "ttl_s": 3600, "now": NOW}
    return mint(SECRET, "creator-1", **(base | kw))


def payload(**kw: Any) -> dict[str, Any]:
    issued = int(NOW.timestamp())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "creator-1",
        "acc": ["main"],
        "msz": None,
        "scope": "upload",
        "iat": issued,
        "exp": issued + 3600,
    }
    return {k: v for k, v in (base | kw).items() if v is not ...}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(reason: str, tok: str | None, **kw: Any) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify(SECRET, tok, **({"now": NOW} | kw))
    err = info.value
    assert err.reason == reason, err
    assert err.http_status == 401
    assert not err.retryable
    if tok:
        # The message names the failure; no part of the token is echoed.
        assert all(part not in str(err) for part in tok.split(".") if len(part) > 4)
    assert "\n" not in str(err)
    return err


def test_round_trip() -> None:
    """A minted token verifies to the same subject, accounts, limit and lifetime."""
    claims = verify(SECRET, token(max_size=1000), now=NOW)
    assert claims == Claims(
        subject="creator-1",
        accounts=("main",),
        max_size=1000,
        expires_at=NOW + timedelta(hours=1),
        issued_at=NOW,
        scope="upload",
    )


def test_claims_are_the_documented_ones() -> None:
    """The payload carries sub, acc, msz, scope, iat, exp, aud and iss, signed HS256."""
    tok = token(accounts=["a", "b", "a"])
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    body = jwt.decode(tok, options={"verify_signature": False})
    assert body == payload(acc=["a", "b"])


def test_token_limit_only_lowers_the_server_limit() -> None:
    """A token's max size lowers the gateway's; without one the gateway's applies."""
    assert verify(SECRET, token(max_size=10), now=NOW).limit(100) == 10
    assert verify(SECRET, token(max_size=1000), now=NOW).limit(100) == 100
    assert verify(SECRET, token(), now=NOW).limit(100) == 100


def test_str_secret_is_its_utf8_bytes() -> None:
    """A secret given as text (the setting) signs like its UTF-8 bytes."""
    tok = mint("k" * 64, "s", ttl_s=60, now=NOW)
    assert verify(SECRET, tok, now=NOW).subject == "s"


def test_expired_token_is_refused() -> None:
    """A token is refused as expired once exp (plus the leeway) has passed."""
    tok = token(ttl_s=60)
    verify(SECRET, tok, now=NOW + timedelta(seconds=60 + LEEWAY_S - 1))
    err = refused("expired", tok, now=NOW + timedelta(seconds=60 + LEEWAY_S))
    assert "expired" in str(err)


def test_token_issued_in_the_future_is_refused() -> None:
    """A token whose iat is ahead of the verifier's clock by more than the leeway is invalid."""
    tok = token()
    verify(SECRET, tok, now=NOW - timedelta(seconds=LEEWAY_S))
    refused("invalid", tok, now=NOW - timedelta(seconds=LEEWAY_S + 1))


def test_wrong_secret_is_refused() -> None:
    """A token signed with another key is invalid (forged)."""
    other = mint(b"x" * MIN_SECRET_BYTES, "creator-1", accounts=["main"], ttl_s=60, now=NOW)
    err = refused("invalid", other)
    assert "signature" in str(err)


def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is refused."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload()).encode())
    refused("invalid", f"{header}.{body}.")


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_other_hmac_algorithms_are_refused(algorithm: str) -> None:
    """A token signed with the right key but another algorithm is refused."""
    refused("invalid", jwt.encode(payload(), SECRET, algorithm=algorithm))


def test_wrong_audience_and_issuer_are_refused() -> None:
    """A token for another audience or from another issuer is invalid."""
    refused("invalid", jwt.encode(payload(aud="other-service"), SECRET, algorithm="HS256"))
    refused("invalid", jwt.encode(payload(iss="someone"), SECRET, algorithm="HS256"))


def test_tampered_payload_is_refused() -> None:
    """Changing the payload (more accounts) without re-signing breaks the signature."""
    header, _, signature = token().split(".")
    forged = b64url(json.dumps(payload(acc=["main", "other"])).encode())
    refused("invalid", f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("claim", ["sub", "acc", "exp", "iat", "aud", "iss"])
def test_missing_claim_is_refused(claim: str) -> None:
    """A correctly signed token without a required claim is invalid."""
    refused("invalid", jwt.encode(payload(**{claim: ...}), SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    "claims",
    [
        {"acc": "main"},
        {"acc": [1]},
        {"sub": ""},
        {"sub": 7},
        {"msz": 0},
        {"msz": "big"},
        {"msz": True},
    ],
)
def test_malformed_claims_are_refused(claims: dict[str, Any]) -> None:
    """A correctly signed token with claims of the wrong shape is invalid."""
    refused("invalid", jwt.encode(payload(**claims), SECRET, algorithm="HS256"))


def test_scope_is_checked() -> None:
    """An events token does not authorize uploads, nor an upload token events."""
    events = token(scope="events", upload="up-1")
    assert verify(SECRET, events, now=NOW, scope="events").scope == "events"
    refused("invalid", events)
    refused("invalid", token(), scope="events")


def test_an_events_token_names_its_one_upload() -> None:
    """An events token carries ``upl`` and verifies to it; one without it, or an upload token
    with one, is refused (signed correctly or not), and none is minted."""
    claims = verify(SECRET, token(scope="events", upload="up-1"), now=NOW, scope="events")
    assert claims.upload == "up-1"
    assert verify(SECRET, token(), now=NOW).upload is None
    unbound = jwt.encode(payload(scope="events"), SECRET, algorithm="HS256")
    refused("invalid", unbound, scope="events")
    bound = jwt.encode(payload(upl="up-1"), SECRET, algorithm="HS256")
    refused("invalid", bound)
    for kw in ({"scope": "events"}, {"upload": "up-1"}):
        with pytest.raises(InputRejectedError):
            token(**kw)


@pytest.mark.parametrize("tok", [None, ""])
def test_missing_token_is_refused(tok: str | None) -> None:
    """No token at all is refused as missing."""
    refused("missing", tok)


@pytest.mark.parametrize(
    "tok", ["abc", "a.b.c", "Bearer x", "x" * 9000, "...", "é.é.é", "\ud800.a.b"]
)
def test_garbage_token_is_refused(tok: str) -> None:
    """Anything that is not a JWT is invalid."""
    refused("invalid", tok)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(min_size=1, max_size=300) | st.text(alphabet="abcXYZ019-_.", max_size=300))
def test_arbitrary_tokens_raise_only_token_errors(tok: str) -> None:
    """Any string as a token is refused with a TokenError, never another exception."""
    with pytest.raises(TokenError):
        verify(SECRET, tok, now=NOW)


@pytest.mark.parametrize("secret", [None, b"", b"k" * (MIN_SECRET_BYTES - 1), "short"])
def test_short_secret_is_a_configuration_error(secret: bytes | str | None) -> None:
    """A signing key under 32 bytes (or none) is refused, for minting and verifying alike."""
    with pytest.raises(ConfigurationError):
        check_secret(secret)
    if secret is not None:
        with pytest.raises(ConfigurationError):
            mint(secret, "s", ttl_s=60, now=NOW)
        with pytest.raises(ConfigurationError):
            verify(secret, token(), now=NOW)


@pytest.mark.parametrize(
    "kw",
    [
        {"ttl_s": 0},
        {"ttl_s": -5},
        {"ttl_s": True},
        {"max_size": 0},
        {"accounts": ["bad name"]},
        {"scope": "admin"},
    ],
)
def test_bad_mint_arguments_are_validation_errors(kw: dict[str, Any]) -> None:
    """A token is never minted with a bad lifetime, limit, account or scope."""
    with pytest.raises(InputRejectedError):
        token(**kw)


@pytest.mark.parametrize("subject", ["", "  ", "a\nb", "x" * 257])
def test_bad_subject_is_refused_at_mint(subject: str) -> None:
    """The subject is 1-256 printable characters."""
    with pytest.raises(InputRejectedError):
        mint(SECRET, subject, ttl_s=60, now=NOW)


def test_minimum_secret_is_enough() -> None:
    """A key of exactly 32 bytes signs and verifies."""
    key = b"m" * MIN_SECRET_BYTES
    assert verify(key, mint(key, "s", ttl_s=60, now=NOW), now=NOW).subject == "s"
