"""The tus 1.0.0 protocol's constants, its refusal (:class:`TusError`), and the rules every
request runs: ``Tus-Resumable``, ``X-HTTP-Method-Override``, ``Upload-Length`` /
``Upload-Defer-Length``, ``Upload-Offset``, the size limit, expiry, and the OPTIONS answer.

Must not: do I/O, read settings or the clock, or import starlette, boto3, prefect or sqlmodel
(as the whole of :mod:`reelflow.tus`). The package's other modules build on this one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Protocol

from reelflow.errors import ReelflowError

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)  # Tus-Version: in order of preference
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
# sha1 is the one the spec requires (tuspy sends it); sha256 and md5 for other clients.
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_MISMATCH_STATUS = 460  # the checksum extension's own code (not IANA-registered)

# tusd's default CORS lists, plus Upload-Checksum (we verify checksums) and Upload-Expires (we
# expire uploads). A header missing from Expose-Headers is invisible to browser JS: the #1
# browser failure of tus servers ("refused to get unsafe header Location").
CORS_ALLOW_METHODS = ("POST", "HEAD", "PATCH", "OPTIONS", "GET", "DELETE")
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Origin",
    "X-Requested-With",
    "X-Request-ID",
    "X-HTTP-Method-Override",
    "Content-Type",
    "Upload-Length",
    "Upload-Offset",
    "Tus-Resumable",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Incomplete",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Upload-Checksum",
    "Last-Event-ID",  # the status stream's resume point, from a cross-origin client
)
CORS_EXPOSE_HEADERS = (
    "Upload-Offset",
    "Location",
    "Upload-Length",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Max-Size",
    "Tus-Extension",
    "Tus-Checksum-Algorithm",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
)

# X-HTTP-Method-Override may name only the methods the tus endpoint serves.
METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "GET")
# An upload id as the gateway makes them (secrets.token_urlsafe): the URL-safe base64 alphabet.
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DIGITS = re.compile(r"[0-9]+")
_HUGE = 10**21  # stands for any number of more than 20 digits
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class TusError(ReelflowError):
    """A tus request refused: ``status`` is the HTTP answer, ``headers`` go with it (e.g.
    ``Tus-Version`` on a 412). The message is one line, safe to send to the client."""

    retryable = False

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        reason: str = "bad_request",
        **context: Any,
    ) -> None:
        super().__init__(" ".join(message.split()), status=status, **context)
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.reason = reason


def bad_request(message: str, reason: str = "bad_request") -> TusError:
    return TusError(400, message, reason=reason)


def shown(value: str, limit: int = 40) -> str:
    """A client's header value quoted in a message: short, and no control characters."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text) if CONTROL_CHARS.search(text) or not text.isascii() else repr(text)


class HeaderMap(Protocol):
    """What the parsers read of a request's headers (starlette's Headers, or a dict)."""

    def get(self, key: str, /) -> str | None: ...


def header_value(headers: HeaderMap | Mapping[str, str], name: str) -> str | None:
    # starlette's Headers is case-insensitive; a plain dict (tests, other callers) may use
    # either the canonical spelling or lower case.
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


# ----- core ------------------------------------------------------------------------------------


def check_version(header: str | None, method: str) -> None:
    """``Tus-Resumable`` must name a supported version on every request but OPTIONS (whose
    header the server must ignore); otherwise 412 with ``Tus-Version``."""
    if method.upper() == "OPTIONS":
        return
    if header is None or header.strip() not in SUPPORTED_VERSIONS:
        given = "missing" if header is None else f"{shown(header)} is not supported"
        raise TusError(
            412,
            f"Tus-Resumable {given}; this server speaks tus {', '.join(SUPPORTED_VERSIONS)}",
            headers={"Tus-Version": ",".join(SUPPORTED_VERSIONS)},
            reason="unsupported_version",
        )


def effective_method(method: str, override: str | None) -> str:
    """The request's method: ``X-HTTP-Method-Override`` when present (the spec's MUST, for
    clients that cannot send PATCH or DELETE), else the method itself; upper case."""
    if override is None or not override.strip():
        return method.upper()
    wanted = override.strip().upper()
    if wanted not in METHODS:
        raise bad_request(
            f"X-HTTP-Method-Override {shown(override)} is not one of {', '.join(METHODS)}",
            "bad_method_override",
        )
    return wanted


def options_headers(max_size: int) -> dict[str, str]:
    """The headers of an OPTIONS answer: what this server speaks and accepts."""
    return {
        "Tus-Version": ",".join(SUPPORTED_VERSIONS),
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


# ----- numbers ---------------------------------------------------------------------------------


def non_negative(name: str, value: str) -> int:
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise bad_request(
            f"{name} must be a non-negative whole number, not {shown(value)}",
            "bad_" + name.lower().replace("-", "_"),
        )
    digits = text.lstrip("0") or "0"
    # Python refuses to parse over 4300 digits; past 20 the number is over any limit anyway.
    return int(digits) if len(digits) <= 20 else _HUGE


def check_size(length: int, max_size: int) -> int:
    """An upload's length against the limit (``Tus-Max-Size``, lowered by the token): 413."""
    if length > max_size:
        raise TusError(
            413,
            f"upload of {length} bytes is over the limit of {max_size} bytes",
            reason="over_max_size",
            length=length,
            max_size=max_size,
        )
    return length


def parse_length(headers: HeaderMap | Mapping[str, str], *, max_size: int) -> int | None:
    """A creation's length: ``Upload-Length: N`` (0 ≤ N ≤ ``max_size``, else 400 / 413), or
    None for ``Upload-Defer-Length: 1`` (any other value 400); one of the two is required."""
    length = header_value(headers, "Upload-Length")
    defer = header_value(headers, "Upload-Defer-Length")
    if length is not None and defer is not None:
        raise bad_request(
            "send Upload-Length or Upload-Defer-Length, not both", "bad_upload_length"
        )
    if defer is not None:
        if defer.strip() != "1":
            raise bad_request(
                f"Upload-Defer-Length must be 1, not {shown(defer)}", "bad_upload_length"
            )
        return None
    if length is None:
        raise bad_request(
            "Upload-Length (or Upload-Defer-Length: 1) is required", "bad_upload_length"
        )
    return check_size(non_negative("Upload-Length", length), max_size)


def parse_offset(header: str | None) -> int:
    """``Upload-Offset``: required, a non-negative whole number (400 otherwise)."""
    if header is None:
        raise bad_request("Upload-Offset is required", "bad_upload_offset")
    return non_negative("Upload-Offset", header)


# ----- expiration ------------------------------------------------------------------------------


def _aware(dt: datetime) -> datetime:
    # SQLite hands datetimes back without a zone; the catalog stores UTC.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def http_date(dt: datetime) -> str:
    """``dt`` as an RFC 9110 HTTP-date (``Upload-Expires``); a naive ``dt`` is taken as UTC."""
    return format_datetime(_aware(dt).astimezone(UTC), usegmt=True)


def expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether an upload that expires at ``expires_at`` (None: never) has expired at ``now``."""
    return expires_at is not None and _aware(now) >= _aware(expires_at)


def check_not_expired(expires_at: datetime | None, now: datetime) -> None:
    """410 for an expired upload (the gateway keeps track of them)."""
    if expired(expires_at, now):
        assert expires_at is not None
        raise TusError(
            410, f"the upload expired at {http_date(expires_at)}", reason="upload_expired"
        )
