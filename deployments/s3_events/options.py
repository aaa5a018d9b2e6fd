"""The publish options a new object asks for: its sidecar ``<name>.json`` and its
``x-amz-meta-reelflow-*`` metadata, merged and checked.

Owns: reading a sidecar's bytes and an object's user metadata into raw fields, merging them
(the sidecar wins field by field), and :class:`ObjectOptions`, the outcome of looking an object
up. The rules themselves (privacy levels, modes, the caption limit, account names, a
publish_at's timezone) are :mod:`reelflow.ingest_options`'s, the same every entry point runs;
this module only applies them and names the file or object in the message.

Pure: bytes and mappings in, values or :class:`~reelflow.errors.InputRejectedError` out. Must not
define a rule of its own, import boto3 or prefect, read settings or the clock.
"""

from __future__ import annotations

import email.header
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from reelflow.errors import InputRejectedError
from reelflow.ingest_options import (
    INGEST_MODES,
    POST_OPTION_KEYS,
    check_account_name,
    check_caption,
    check_mode,
    check_privacy,
    check_publish_at,
    parse_flag,
)

MAX_SIDECAR_BYTES = 64 * 1024  # options fit in a few hundred bytes; anything bigger is a mistake
METADATA_PREFIX = "reelflow-"
METADATA_FIELDS = {
    "account": "account",
    "caption": "caption",
    "privacy": "privacy_level",
    "mode": "mode",
    "publish-at": "publish_at",
    # The post options, x-amz-meta-reelflow-disable-comment: true and so on.
    **{key.replace("_", "-"): key for key in POST_OPTION_KEYS},
}
T = TypeVar("T")


def _rule(check: Callable[[T], object], value: T) -> T:
    """Apply one :mod:`reelflow.ingest_options` rule inside a pydantic validator: its refusal
    becomes a field error whose type is the rule's reason and whose text is the rule's."""
    try:
        check(value)
    except InputRejectedError as exc:
        # The message goes in as context, never as the template: it may quote braces.
        raise PydanticCustomError(exc.reason, "{detail}", {"detail": exc.message}) from exc
    return value


def _timezone_only(publish_at: datetime) -> datetime | None:
    # "Not in the past" is the run's check, against its clock when it starts: an event may wait
    # in a queue, and a time that was future here can be past there. now=publish_at keeps only
    # the timezone rule.
    return check_publish_at(publish_at, now=publish_at)


class PublishOptions(BaseModel):
    """What a bucket-triggered run publishes; unset fields fall back to the deployment's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str | None = None
    caption: str | None = None
    privacy_level: str | None = None
    mode: str | None = None
    publish_at: datetime | None = None
    disable_comment: bool | None = None
    disable_duet: bool | None = None
    disable_stitch: bool | None = None
    brand_content_toggle: bool | None = None
    brand_organic_toggle: bool | None = None

    @field_validator(*POST_OPTION_KEYS, mode="before")
    @classmethod
    def _flag(cls, v: Any, info: Any) -> Any:
        # JSON true/false in a sidecar; "true"/"false" text in metadata (headers are text).
        # Lax pydantic would take 1, "on" or "y" too: the contract is a boolean.
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            try:
                return parse_flag(info.field_name, v)
            except InputRejectedError as exc:
                raise PydanticCustomError(exc.reason, "{detail}", {"detail": exc.message}) from exc
        raise ValueError("must be true or false")

    @field_validator("account")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        return None if v is None else _rule(check_account_name, v)

    @field_validator("caption")
    @classmethod
    def _caption(cls, v: str | None) -> str | None:
        return _rule(check_caption, v)

    @field_validator("privacy_level")
    @classmethod
    def _privacy(cls, v: str | None) -> str | None:
        return _rule(check_privacy, v)

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str | None) -> str | None:
        return None if v is None else _rule(lambda m: check_mode(m, INGEST_MODES), v)

    @field_validator("publish_at", mode="before")
    @classmethod
    def _iso_only(cls, v: Any) -> Any:
        # Lax pydantic would read 1700000000 as a Unix time; the contract is ISO 8601 text.
        if v is not None and not isinstance(v, str | datetime):
            raise ValueError("must be an ISO 8601 date-time with a timezone")
        return v

    @field_validator("publish_at")
    @classmethod
    def _publish_at(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _rule(_timezone_only, v)


@dataclass(frozen=True)
class ObjectOptions:
    """The outcome of looking an object up: its options, or why they are unusable."""

    options: PublishOptions = field(default_factory=PublishOptions)
    sidecar_key: str | None = None  # set when a sidecar was found
    error: str | None = None  # set when the sidecar or metadata is invalid
    size: int | None = None  # from HEAD, for records that carry none
    etag: str | None = None  # from HEAD: identifies the version when the record does not
    version_id: str | None = None  # from HEAD


def options_from_sidecar(data: bytes, *, where: str) -> dict[str, Any]:
    """The raw fields of a sidecar file; ``where`` names it in errors (``bucket/key``)."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise InputRejectedError(
            f"sidecar {where}: larger than {MAX_SIDECAR_BYTES} bytes", reason="bad_sidecar"
        )
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputRejectedError(
            f"sidecar {where}: not UTF-8 ({exc})", reason="bad_sidecar"
        ) from exc
    except ValueError as exc:
        raise InputRejectedError(f"sidecar {where}: not JSON: {exc}", reason="bad_sidecar") from exc
    if not isinstance(doc, dict):
        raise InputRejectedError(f"sidecar {where}: must be a JSON object", reason="bad_sidecar")
    return doc


def options_from_metadata(metadata: Mapping[str, str], *, where: str) -> dict[str, Any]:
    """Fields from user metadata (boto3 gives ``reelflow-account`` for x-amz-meta-reelflow-account)."""
    fields: dict[str, Any] = {}
    for raw_name, value in metadata.items():
        name = raw_name.lower()
        if not name.startswith(METADATA_PREFIX):
            continue
        short = name.removeprefix(METADATA_PREFIX)
        if short not in METADATA_FIELDS:
            # A typo (reelflow-acount) silently ignored would publish with the wrong options.
            known = ", ".join(METADATA_PREFIX + k for k in METADATA_FIELDS)
            raise InputRejectedError(
                f"metadata of {where}: unknown x-amz-meta-{name} (known: {known})",
                reason="bad_metadata",
            )
        fields[METADATA_FIELDS[short]] = _decode_header_value(value)
    return fields


def _decode_header_value(value: str) -> str:
    # Metadata travels in HTTP headers, so non-ASCII captions arrive RFC 2047-encoded.
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def resolve_options(
    *,
    metadata: Mapping[str, Any],
    sidecar: Mapping[str, Any] | None,
    object_name: str = "the object",
    sidecar_name: str = "the sidecar",
) -> PublishOptions:
    """Merge field by field: the sidecar wins over metadata; null or absent means unset.

    A refusal's ``rules`` context lists each failed check (an :mod:`reelflow.ingest_options`
    reason such as ``invalid_mode``, or pydantic's type such as ``extra_forbidden``).
    """
    meta = _validate(metadata, f"metadata of {object_name}", reason="bad_metadata")
    side = _validate(sidecar or {}, f"sidecar {sidecar_name}", reason="bad_sidecar")
    merged = {**meta.model_dump(exclude_none=True), **side.model_dump(exclude_none=True)}
    return PublishOptions(**merged)


def _validate(fields: Mapping[str, Any], what: str, *, reason: str) -> PublishOptions:
    try:
        return PublishOptions.model_validate(dict(fields))
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors
        )
        rules = tuple(str(e["type"]) for e in errors)
        raise InputRejectedError(f"{what}: {problems}", reason=reason, rules=rules) from exc
