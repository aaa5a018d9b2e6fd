"""The pure rules of the tus 1.0.0 resumable upload protocol, as the gateway applies them.

Owns: the protocol's constants (version, extensions, checksum algorithms, the CORS header
lists), parsing and checking of every tus request header (``Tus-Resumable``,
``X-HTTP-Method-Override``, ``Upload-Length`` / ``Upload-Defer-Length``, ``Upload-Offset``,
``Upload-Metadata``, ``Upload-Checksum``, ``Upload-Concat``), the PATCH preconditions, expiry,
and turning an upload's metadata into checked ingest options with the rules every entry point
runs (:mod:`reelflow.ingest_options`). A refusal is a :class:`TusError` carrying the HTTP
status the handler answers and any headers the protocol requires with it.

Must not: do I/O, read settings or the clock (``now`` and limits are arguments), or import
starlette, boto3, prefect or sqlmodel. The HTTP handlers (deployments/gateway) call these.

API (as GATEWAY.md, plus the additions marked +):

    TUS_VERSION, SUPPORTED_VERSIONS+, EXTENSIONS, CHECKSUM_ALGORITHMS, OFFSET_CONTENT_TYPE+,
    CHECKSUM_MISMATCH_STATUS+ (460), CORS_ALLOW_METHODS+, CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS
    TusError(status, message, *, headers=None, reason=...)        .status .headers .reason
    check_version(header, method) -> None                           412 + Tus-Version
    effective_method(method, override) -> str                       400 unknown override
    parse_metadata(header) -> dict[str, str | None]                 400 malformed / duplicate
    encode_metadata(meta) -> str +                                  the inverse (clients, tests)
    parse_length(headers, *, max_size) -> int | None                400 / 413; None = deferred
    check_size(length, max_size) -> int +                           413 (e.g. a final's total)
    parse_offset(header) -> int                                     400
    parse_checksum(header) -> Checksum | None                       400 unknown algo / bad digest
    Checksum(algorithm, digest): .hasher() .matches(digest) .verify(digest)+ (460) .header()+
    parse_concat(header) -> Concat | None                           Concat(kind, ids); 400
    check_final_creation(headers) +                                 400 length on a final
    creation_has_upload(content_type) -> bool +                     creation-with-upload body?
    check_patch(*, state_offset, state_length, kind, content_type, offset_header,
                body_length=None) -> int                            415, 400, 403, 409, 400
    patch_length(header, *, state_length, state_offset, max_size) -> int | None +
                                                                    deferred length on PATCH
    http_date(dt) -> str ; expired(expires_at, now) -> bool ; check_not_expired(...) + (410)
    options_headers(max_size) -> dict[str, str] +                   the OPTIONS response
    head_headers(*, offset, length, metadata_header, concat_header, expires_at) + HEAD response
    patch_headers(*, offset, expires_at) +                          a 204 PATCH response
    upload_options(meta, *, allowed_accounts, settings, now) -> UploadOptions
        CHANGED return type: UploadOptions (the checked raw values + .ingest: IngestOptions,
        .publish/.mode/.publish_at as IngestOptions has them, .as_json() for the catalog),
        because IngestOptions has no filename/filetype. 400 bad option, 403 account not allowed,
        ConfigurationError (not a TusError) when the settings' defaults are inconsistent.

``check_patch`` returns the checked client offset (== ``state_offset``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from reelflow.errors import ConfigurationError, InputRejectedError, ReelflowError
from reelflow.ingest_options import IngestOptions, check_ingest_options
from reelflow.publish_rules import PublishRequest
from reelflow.settings import Settings

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
# The metadata header is stored with the upload and echoed by every HEAD: a bound keeps a
# client from parking megabytes in the catalog (a 2200-unit caption is under 9 KiB of it).
MAX_METADATA_HEADER_BYTES = 64 * 1024
MAX_CONCAT_UPLOADS = 1000  # tus-js-client's parallelUploads sends a handful
MAX_FILENAME_CHARS = 1024
# An upload id as the gateway makes them (secrets.token_urlsafe): the URL-safe base64 alphabet.
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CONCAT_PATH = re.compile(r"(?:.*/)?uploads/(?P<id>[^/]+)/?")
_DIGITS = re.compile(r"[0-9]+")
_HUGE = 10**21  # stands for any number of more than 20 digits
# Printable ASCII but space and comma: the spec's key grammar.
_METADATA_KEY = re.compile(r"[!-+\--~]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGEST_BYTES = {name: hashlib.new(name).digest_size for name in CHECKSUM_ALGORITHMS}


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


def _bad(message: str, reason: str = "bad_request") -> TusError:
    return TusError(400, message, reason=reason)


def _shown(value: str, limit: int = 40) -> str:
    """A client's header value quoted in a message: short, and no control characters."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text) if _CONTROL.search(text) or not text.isascii() else repr(text)


class HeaderMap(Protocol):
    """What the parsers read of a request's headers (starlette's Headers, or a dict)."""

    def get(self, key: str, /) -> str | None: ...


def _header(headers: HeaderMap | Mapping[str, str], name: str) -> str | None:
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
        given = "missing" if header is None else f"{_shown(header)} is not supported"
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
        raise _bad(
            f"X-HTTP-Method-Override {_shown(override)} is not one of {', '.join(METHODS)}",
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


def _non_negative(name: str, value: str) -> int:
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise _bad(
            f"{name} must be a non-negative whole number, not {_shown(value)}",
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
    length = _header(headers, "Upload-Length")
    defer = _header(headers, "Upload-Defer-Length")
    if length is not None and defer is not None:
        raise _bad("send Upload-Length or Upload-Defer-Length, not both", "bad_upload_length")
    if defer is not None:
        if defer.strip() != "1":
            raise _bad(f"Upload-Defer-Length must be 1, not {_shown(defer)}", "bad_upload_length")
        return None
    if length is None:
        raise _bad("Upload-Length (or Upload-Defer-Length: 1) is required", "bad_upload_length")
    return check_size(_non_negative("Upload-Length", length), max_size)


def parse_offset(header: str | None) -> int:
    """``Upload-Offset``: required, a non-negative whole number (400 otherwise)."""
    if header is None:
        raise _bad("Upload-Offset is required", "bad_upload_offset")
    return _non_negative("Upload-Offset", header)


# ----- metadata --------------------------------------------------------------------------------


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """``Upload-Metadata: key base64,key2 base64``: keys printable ASCII without space or
    comma, unique; values base64 of UTF-8 text. A key alone (no value) maps to None, an empty
    value to ``""``. Missing or blank header: ``{}``. Anything malformed: 400."""
    if header is None or not header.strip():
        return {}
    if len(header.encode("utf-8", "surrogateescape")) > MAX_METADATA_HEADER_BYTES:
        raise _bad(f"Upload-Metadata is over {MAX_METADATA_HEADER_BYTES} bytes", "bad_metadata")
    meta: dict[str, str | None] = {}
    for number, element in enumerate(header.split(","), start=1):
        # Optional whitespace around the commas (a list header); inside a pair, one space. An
        # empty value is "key " (tus-js-client's encoding): that space is kept as a separator.
        key, sep, encoded = element.lstrip(" \t").partition(" ")
        encoded = encoded.rstrip(" \t")
        if not key or _METADATA_KEY.fullmatch(key) is None:
            raise _bad(
                f"Upload-Metadata pair {number} has no valid key (printable ASCII, "
                "no spaces or commas)",
                "bad_metadata",
            )
        if key in meta:
            raise _bad(f"Upload-Metadata key {key!r} appears twice", "bad_metadata")
        meta[key] = _decode_value(key, encoded) if sep else None
    return meta


def _decode_value(key: str, encoded: str) -> str:
    # Some encoders drop the padding; restore it rather than refuse an otherwise valid value.
    padded = encoded + "=" * (-len(encoded) % 4)
    if _BASE64.fullmatch(padded) is None or len(padded) % 4:
        raise _bad(f"Upload-Metadata value of {key!r} is not base64", "bad_metadata")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"Upload-Metadata value of {key!r} is not base64", "bad_metadata") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"Upload-Metadata value of {key!r} is not UTF-8 text", "bad_metadata") from exc


def encode_metadata(meta: Mapping[str, str | None]) -> str:
    """The ``Upload-Metadata`` header for ``meta`` (the inverse of :func:`parse_metadata`)."""
    pairs = []
    for key, value in meta.items():
        if not key or _METADATA_KEY.fullmatch(key) is None:
            raise ValueError(f"metadata key {key!r} is not printable ASCII without space/comma")
        pairs.append(key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}")
    return ",".join(pairs)


# ----- checksum --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    """A PATCH body's expected digest (``Upload-Checksum: <algorithm> <base64 digest>``)."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        """A fresh hashlib object of the algorithm, to feed the body to."""
        # md5 here is an integrity check the client chose, not a security primitive.
        return hashlib.new(self.algorithm, usedforsecurity=False)

    def matches(self, digest: bytes) -> bool:
        """Whether the body's ``digest`` is the expected one (constant time)."""
        return hmac.compare_digest(self.digest, digest)

    def verify(self, digest: bytes) -> None:
        """460 (Checksum Mismatch) unless the body's ``digest`` is the expected one."""
        if not self.matches(digest):
            raise TusError(
                CHECKSUM_MISMATCH_STATUS,
                f"the body's {self.algorithm} does not match Upload-Checksum; "
                "the chunk was discarded",
                reason="checksum_mismatch",
            )

    def header(self) -> str:
        """This checksum as an ``Upload-Checksum`` value."""
        return f"{self.algorithm} {base64.b64encode(self.digest).decode()}"


def parse_checksum(header: str | None) -> Checksum | None:
    """``Upload-Checksum``: None when absent; 400 for an unknown algorithm or a digest that is
    not base64 of the algorithm's size."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise _bad(
            f"Upload-Checksum algorithm {_shown(algorithm)} is not supported "
            f"({', '.join(CHECKSUM_ALGORITHMS)})",
            "bad_checksum_algorithm",
        )
    encoded = encoded.strip()
    try:
        if _BASE64.fullmatch(encoded) is None:
            raise ValueError(encoded)
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("Upload-Checksum digest is not base64", "bad_checksum") from exc
    if len(digest) != _DIGEST_BYTES[algorithm]:
        raise _bad(
            f"Upload-Checksum {algorithm} digest is {len(digest)} bytes, not "
            f"{_DIGEST_BYTES[algorithm]}",
            "bad_checksum",
        )
    return Checksum(algorithm, digest)


# ----- concatenation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Concat:
    """``Upload-Concat``: a ``partial`` upload, or a ``final`` one made of ``ids`` in order."""

    kind: Literal["partial", "final"]
    ids: tuple[str, ...] = ()


def _concat_id(url: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError as exc:
        raise _bad(f"Upload-Concat URL {_shown(url)} is not a URL", "bad_concat") from exc
    found = _CONCAT_PATH.fullmatch(path)
    if found is None or UPLOAD_ID.fullmatch(found["id"]) is None:
        raise _bad(f"Upload-Concat URL {_shown(url)} is not an upload of this server", "bad_concat")
    return found["id"]


def parse_concat(header: str | None) -> Concat | None:
    """``Upload-Concat``: None when absent; ``partial``; or ``final;<url> <url>...`` where each
    URL is ``/uploads/{id}`` or an absolute URL ending so (400 otherwise, or for a repeat)."""
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return Concat("partial")
    kind, sep, urls = value.partition(";")
    if kind.strip() != "final" or not sep:
        raise _bad(
            f"Upload-Concat must be 'partial' or 'final;<urls>', not {_shown(header)}", "bad_concat"
        )
    ids = tuple(_concat_id(url) for url in urls.split())
    if not ids:
        raise _bad("Upload-Concat final lists no partial uploads", "bad_concat")
    if len(ids) > MAX_CONCAT_UPLOADS:
        raise _bad(f"Upload-Concat final lists over {MAX_CONCAT_UPLOADS} uploads", "bad_concat")
    # Each partial is consumed by the final upload it is part of; twice makes no sense.
    if len(set(ids)) != len(ids):
        raise _bad("Upload-Concat final lists an upload twice", "bad_concat")
    return Concat("final", ids)


def check_final_creation(headers: HeaderMap | Mapping[str, str]) -> None:
    """A final concatenation takes its length from its partials: 400 if it sends one."""
    if _header(headers, "Upload-Length") is not None or (
        _header(headers, "Upload-Defer-Length") is not None
    ):
        raise _bad(
            "a final upload (Upload-Concat: final) must not send Upload-Length or "
            "Upload-Defer-Length",
            "bad_upload_length",
        )


# ----- PATCH -----------------------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def creation_has_upload(content_type: str | None) -> bool:
    """Whether a creation POST carries the first bytes (creation-with-upload): its
    ``Content-Type`` is ``application/offset+octet-stream``."""
    return _media_type(content_type) == OFFSET_CONTENT_TYPE


def check_patch(
    *,
    state_offset: int,
    state_length: int | None,
    kind: str,
    content_type: str | None,
    offset_header: str | None,
    body_length: int | None = None,
) -> int:
    """A PATCH's preconditions, in tusd's order: 415 content type, 400 bad ``Upload-Offset``,
    403 on a final upload, 409 offset not the upload's (nothing changes), 400 a body
    (``Content-Length``, when known) past ``Upload-Length``. Returns the offset.

    ``state_length`` is the length after this PATCH (:func:`patch_length` first, for a
    deferred upload that declares it now)."""
    if _media_type(content_type) != OFFSET_CONTENT_TYPE:
        raise TusError(
            415,
            f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}"
            + ("" if content_type is None else f", not {_shown(content_type)}"),
            reason="bad_content_type",
        )
    offset = parse_offset(offset_header)
    if kind == "final":
        raise TusError(
            403,
            "a final upload (Upload-Concat: final) cannot be patched",
            reason="patch_on_final",
        )
    if offset != state_offset:
        raise TusError(
            409,
            f"Upload-Offset {offset} is not the upload's offset {state_offset}",
            reason="offset_mismatch",
            offset=offset,
            state_offset=state_offset,
        )
    if state_length is not None and body_length is not None:
        check_within_length(offset + body_length, state_length)
    return offset


def check_within_length(end: int, length: int) -> None:
    """400 when bytes would end at ``end``, past the upload's ``length`` (nothing of them may
    be stored: the writer calls this as the body streams, when Content-Length is unknown)."""
    if end > length:
        raise _bad(
            f"the body ends at byte {end}, past Upload-Length {length}", "past_upload_length"
        )


def patch_length(
    header: str | None, *, state_length: int | None, state_offset: int, max_size: int
) -> int | None:
    """The upload's length after a PATCH that may carry ``Upload-Length`` (a deferred length
    is declared once; 400 to change it or to set it below the offset, 413 over the limit)."""
    if header is None:
        return state_length
    length = _non_negative("Upload-Length", header)
    if state_length is not None:
        if length != state_length:
            raise _bad(
                f"Upload-Length {length} cannot change the upload's length {state_length}",
                "bad_upload_length",
            )
        return state_length
    if length < state_offset:
        raise _bad(
            f"Upload-Length {length} is below the bytes already received ({state_offset})",
            "bad_upload_length",
        )
    return check_size(length, max_size)


def head_headers(
    *,
    offset: int | None,
    length: int | None,
    metadata_header: str | None = None,
    concat_header: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, str]:
    """A HEAD answer's headers: ``Upload-Offset`` (None: a final upload whose concatenation
    is not done yet, which must not send one), ``Upload-Length`` or ``Upload-Defer-Length: 1``,
    the metadata and concat headers as given at creation, ``Upload-Expires``, and
    ``Cache-Control: no-store`` (a cached offset would make a client resume at the wrong byte)."""
    headers = {"Cache-Control": "no-store"}
    if offset is not None:
        headers["Upload-Offset"] = str(offset)
    if length is not None:
        headers["Upload-Length"] = str(length)
    elif concat_header is None or not concat_header.strip().startswith("final"):
        headers["Upload-Defer-Length"] = "1"
    if metadata_header:
        headers["Upload-Metadata"] = metadata_header
    if concat_header:
        headers["Upload-Concat"] = concat_header
    if expires_at is not None:
        headers["Upload-Expires"] = http_date(expires_at)
    return headers


def patch_headers(*, offset: int, expires_at: datetime | None) -> dict[str, str]:
    """A successful PATCH's headers (204): the new offset, and the expiry, which the
    expiration extension requires on every PATCH answer of an upload that expires."""
    headers = {"Upload-Offset": str(offset)}
    if expires_at is not None:
        headers["Upload-Expires"] = http_date(expires_at)
    return headers


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


# ----- options ---------------------------------------------------------------------------------

# Refusals of the run's own defaults (REELFLOW_CHUNK_SIZE_BYTES, _UPLOAD_CONCURRENCY,
# _MEMORY_BUDGET_BYTES): no metadata can cause or fix them.
_SETTINGS_REASONS = frozenset({"invalid_chunk_size", "invalid_concurrency", "over_memory_budget"})
OPTION_KEYS = ("filename", "filetype", "account", "caption", "privacy_level", "mode", "publish_at")


@dataclass(frozen=True)
class UploadOptions:
    """An upload's checked metadata: the values as given (blank = absent) and the ingest
    options they make (defaults applied, by :func:`reelflow.ingest_options.check_ingest_options`)."""

    filename: str | None
    filetype: str | None
    account: str | None
    caption: str | None
    privacy_level: str | None
    mode: str | None  # as given; ``ingest.mode`` is the mode the run uses
    publish_at: datetime | None
    ingest: IngestOptions

    @property
    def publish(self) -> PublishRequest | None:
        return self.ingest.publish

    def as_json(self) -> dict[str, str | None]:
        """The values to record with the upload (a run checks them again with the same rules)."""
        return {
            "filename": self.filename,
            "filetype": self.filetype,
            "account": self.account,
            "caption": self.caption,
            "privacy_level": self.privacy_level,
            "mode": self.mode,
            "publish_at": None if self.publish_at is None else self.publish_at.isoformat(),
        }


def _text(meta: Mapping[str, str | None], key: str, *, controls: bool = False) -> str | None:
    value = meta.get(key)
    if value is None or not value.strip():
        return None
    # NUL cannot be stored in PostgreSQL text; other controls have no place in a name/type.
    if "\x00" in value or (not controls and _CONTROL.search(value)):
        raise _bad(f"metadata {key} contains control characters", "bad_metadata")
    return value


def _publish_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise _bad(
            f"metadata publish_at {_shown(value)} is not an ISO 8601 date-time "
            "(e.g. 2026-12-01T18:00:00+00:00)",
            "bad_publish_at",
        ) from exc


def upload_options(
    meta: Mapping[str, str | None],
    *,
    allowed_accounts: Collection[str],
    settings: Settings,
    now: datetime,
) -> UploadOptions:
    """The upload's metadata as checked ingest options, with the rules of the CLI and the S3
    sidecars; unknown keys (tus-js-client's ``name``, ``type``, ``relativePath``...) ignored.

    ConfigurationError when the settings' own defaults break the ingest rules (the gateway
    can find out at start with ``upload_options({}, allowed_accounts=(), ...)``).

    400 with the rule's one-line reason for a bad option; 403 when ``account`` is not one of
    ``allowed_accounts`` (the token's): the request is well formed, the credential valid, but
    it does not carry authority over that account, and a 401 would make clients re-login."""
    filename = _text(meta, "filename")
    if filename is not None and len(filename) > MAX_FILENAME_CHARS:
        raise _bad(f"metadata filename is over {MAX_FILENAME_CHARS} characters", "bad_metadata")
    account = _text(meta, "account")
    caption = _text(meta, "caption", controls=True)
    privacy = _text(meta, "privacy_level")
    mode = _text(meta, "mode")
    publish_at = _publish_at(_text(meta, "publish_at"))
    try:
        ingest = check_ingest_options(
            chunk_size_bytes=None,
            concurrency=None,
            account=account,
            caption=caption,
            privacy=privacy,
            mode=mode,
            publish_at=publish_at,
            default_chunk_size_bytes=settings.chunk_size_bytes,
            default_concurrency=settings.upload_concurrency,
            memory_budget_bytes=settings.memory_budget_bytes,
            now=now,
        )
    except InputRejectedError as exc:
        if exc.reason in _SETTINGS_REASONS:  # the operator's to fix, not the client's
            raise ConfigurationError(exc.message) from exc
        raise _bad(exc.message, exc.reason) from exc
    if account is not None and account not in allowed_accounts:
        raise TusError(
            403,
            f"account {account!r} is not one of this token's accounts",
            reason="account_not_allowed",
        )
    return UploadOptions(
        filename=filename,
        filetype=_text(meta, "filetype"),
        account=account,
        caption=caption,
        privacy_level=privacy,
        mode=mode,
        publish_at=publish_at,
        ingest=ingest,
    )
