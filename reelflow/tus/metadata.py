"""An upload's ``Upload-Metadata``: the header parsed and encoded, and its values turned into
checked ingest options with the rules every entry point runs (:mod:`reelflow.ingest_options`).

Must not: do I/O, read settings or the clock (``settings`` and ``now`` are arguments).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.ingest_options import (
    POST_OPTION_KEYS,
    IngestOptions,
    PostOptions,
    check_ingest_request,
    post_options_from_text,
    post_options_text,
)
from reelflow.publish_rules import PublishRequest
from reelflow.settings import Settings
from reelflow.tus.protocol import BASE64, CONTROL_CHARS, TusError, bad_request, shown

# The metadata header is stored with the upload and echoed by every HEAD: a bound keeps a
# client from parking megabytes in the catalog (a 2200-unit caption is under 9 KiB of it).
MAX_METADATA_HEADER_BYTES = 64 * 1024
MAX_FILENAME_CHARS = 1024
# Printable ASCII but space and comma: the spec's key grammar.
_METADATA_KEY = re.compile(r"[!-+\--~]+")


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """``Upload-Metadata: key base64,key2 base64``: keys printable ASCII without space or
    comma, unique; values base64 of UTF-8 text. A key alone (no value) maps to None, an empty
    value to ``""``. Missing or blank header: ``{}``. Anything malformed: 400."""
    if header is None or not header.strip():
        return {}
    if len(header.encode("utf-8", "surrogateescape")) > MAX_METADATA_HEADER_BYTES:
        raise bad_request(
            f"Upload-Metadata is over {MAX_METADATA_HEADER_BYTES} bytes", "bad_metadata"
        )
    meta: dict[str, str | None] = {}
    for number, element in enumerate(header.split(","), start=1):
        # Optional whitespace around the commas (a list header); inside a pair, one space. An
        # empty value is "key " (tus-js-client's encoding): that space is kept as a separator.
        key, sep, encoded = element.lstrip(" \t").partition(" ")
        encoded = encoded.rstrip(" \t")
        if not key or _METADATA_KEY.fullmatch(key) is None:
            raise bad_request(
                f"Upload-Metadata pair {number} has no valid key (printable ASCII, "
                "no spaces or commas)",
                "bad_metadata",
            )
        if key in meta:
            raise bad_request(f"Upload-Metadata key {key!r} appears twice", "bad_metadata")
        meta[key] = _decode_value(key, encoded) if sep else None
    return meta


def _decode_value(key: str, encoded: str) -> str:
    # Some encoders drop the padding; restore it rather than refuse an otherwise valid value.
    padded = encoded + "=" * (-len(encoded) % 4)
    if BASE64.fullmatch(padded) is None or len(padded) % 4:
        raise bad_request(f"Upload-Metadata value of {key!r} is not base64", "bad_metadata")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(
            f"Upload-Metadata value of {key!r} is not base64", "bad_metadata"
        ) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"Upload-Metadata value of {key!r} is not UTF-8 text", "bad_metadata"
        ) from exc


def encode_metadata(meta: Mapping[str, str | None]) -> str:
    """The ``Upload-Metadata`` header for ``meta`` (the inverse of :func:`parse_metadata`)."""
    pairs = []
    for key, value in meta.items():
        if not key or _METADATA_KEY.fullmatch(key) is None:
            raise ValueError(f"metadata key {key!r} is not printable ASCII without space/comma")
        pairs.append(key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}")
    return ",".join(pairs)


# ----- options ---------------------------------------------------------------------------------

# Refusals of the run's own defaults (REELFLOW_CHUNK_SIZE_BYTES, _UPLOAD_CONCURRENCY,
# _MEMORY_BUDGET_BYTES): no metadata can cause or fix them.
_SETTINGS_REASONS = frozenset({"invalid_chunk_size", "invalid_concurrency", "over_memory_budget"})
OPTION_KEYS = (
    "filename",
    "filetype",
    "account",
    "caption",
    "privacy_level",
    "mode",
    "publish_at",
    *POST_OPTION_KEYS,  # "true"/"false" (reelflow.ingest_options.post_options_from_text)
)


@dataclass(frozen=True)
class UploadOptions:
    """An upload's checked metadata: the values as given (blank = absent) and the ingest
    options they make (defaults applied, by
    :func:`reelflow.ingest_options.check_ingest_request`)."""

    filename: str | None
    filetype: str | None
    account: str | None
    caption: str | None
    privacy_level: str | None
    mode: str | None  # as given; ``ingest.mode`` is the mode the run uses
    publish_at: datetime | None
    ingest: IngestOptions
    post: PostOptions = PostOptions()

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
            **post_options_text(self.post),
        }


def _text(meta: Mapping[str, str | None], key: str, *, controls: bool = False) -> str | None:
    value = meta.get(key)
    if value is None or not value.strip():
        return None
    # NUL cannot be stored in PostgreSQL text; other controls have no place in a name/type.
    if "\x00" in value or (not controls and CONTROL_CHARS.search(value)):
        raise bad_request(f"metadata {key} contains control characters", "bad_metadata")
    return value


def _publish_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise bad_request(
            f"metadata publish_at {shown(value)} is not an ISO 8601 date-time "
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
        raise bad_request(
            f"metadata filename is over {MAX_FILENAME_CHARS} characters", "bad_metadata"
        )
    account = _text(meta, "account")
    caption = _text(meta, "caption", controls=True)
    privacy = _text(meta, "privacy_level")
    mode = _text(meta, "mode")
    publish_at = _publish_at(_text(meta, "publish_at"))
    try:
        post = post_options_from_text(meta)
        # The uploader chooses no part size or concurrency: the settings' defaults apply.
        ingest = check_ingest_request(
            settings, None, None, account, caption, privacy, mode, publish_at, now=now, post=post
        )
    except InputRejectedError as exc:
        if exc.reason in _SETTINGS_REASONS:  # the operator's to fix, not the client's
            raise ConfigurationError(exc.message) from exc
        raise bad_request(exc.message, exc.reason) from exc
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
        post=post,
    )
