"""What an S3 notification announces, and which of the announced objects are videos to ingest.

Owns: parsing notification bodies (AWS ``Records[]``, the ``s3:TestEvent``, SNS envelopes,
MinIO/Ceph webhook bodies) into :class:`S3Object` values, the key filter, and where a video's
sidecar sits.

Pure: bytes, strings and mappings in, plain values or :class:`MalformedNotificationError` out. Must
not import boto3, prefect or starlette, read settings, or touch the network.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from reelflow.errors import ConfigurationError, InputRejectedError

# .mkv is stored as video/x-matroska; its publish is refused (docs/formats.md).
DEFAULT_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
SIDECAR_SUFFIX = ".json"


class MalformedNotificationError(InputRejectedError):
    """The body is not an S3 notification this bridge understands; retrying cannot help."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="malformed_notification", **context)


@dataclass(frozen=True)
class S3Object:
    """One ``ObjectCreated`` record: the object version a notification announces."""

    bucket: str
    key: str  # decoded: S3 sends it URL-encoded with '+' for spaces
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_name: str = "ObjectCreated:Put"
    event_time: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_notification(body: bytes | str | Mapping[str, Any]) -> list[S3Object]:
    """The ``ObjectCreated`` objects in one notification body (other event kinds are dropped).

    Accepts the AWS ``{"Records": [...]}`` body (SQS, Lambda), the same wrapped in an SNS
    envelope (``Message`` is a JSON string), and MinIO/Ceph webhook bodies (same records,
    ``s3:``-prefixed event names, extra top-level ``EventName``/``Key``). ``s3:TestEvent``,
    which S3 sends when a notification is configured, yields no objects.
    """
    doc = _load_json(body) if not isinstance(body, Mapping) else body
    if not isinstance(doc, Mapping):
        raise MalformedNotificationError("notification body is not a JSON object")
    if doc.get("Type") == "Notification" and "Message" in doc:
        message = doc["Message"]
        if not isinstance(message, str):
            raise MalformedNotificationError("SNS envelope's Message is not a string")
        inner = _load_json(message)
        if not isinstance(inner, Mapping) or inner.get("Type") == "Notification":
            raise MalformedNotificationError("SNS Message is not an S3 notification")
        return parse_notification(inner)
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedNotificationError("notification has no Records list")
    return [obj for i, r in enumerate(records) if (obj := _parse_record(r, i)) is not None]


def _load_json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedNotificationError(f"notification body is not JSON: {exc}") from exc


def _parse_record(record: Any, index: int) -> S3Object | None:
    where = f"Records[{index}]"
    if not isinstance(record, Mapping):
        raise MalformedNotificationError(f"{where} is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedNotificationError(f"{where}.eventName is missing")
    # MinIO and Ceph prefix the name with "s3:"; AWS does not.
    name = name.removeprefix("s3:")
    if not name.startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, Mapping) else None
    obj = s3.get("object") if isinstance(s3, Mapping) else None
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise MalformedNotificationError(f"{where}.s3.bucket/object is missing")
    bucket_name, raw_key = bucket.get("name"), obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        raise MalformedNotificationError(f"{where}.s3.bucket.name is missing")
    if not isinstance(raw_key, str) or not raw_key:
        raise MalformedNotificationError(f"{where}.s3.object.key is missing")
    size = obj.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedNotificationError(f"{where}.s3.object.size is not a byte count")
    etag = _opt_str(obj, "eTag", where)
    time = record.get("eventTime")
    return S3Object(
        bucket=bucket_name,
        key=unquote_plus(raw_key),
        size=size,
        etag=etag.strip('"') if etag else None,
        version_id=_opt_str(obj, "versionId", where),
        sequencer=_opt_str(obj, "sequencer", where),
        event_name=name,
        event_time=time if isinstance(time, str) else None,
    )


def _opt_str(obj: Mapping[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedNotificationError(f"{where}.s3.object.{name} is not a string")
    return value


@dataclass(frozen=True)
class KeyFilter:
    """Which keys are videos to ingest: a key prefix and case-insensitive name suffixes."""

    prefix: str = ""
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES

    def __post_init__(self) -> None:
        suffixes = tuple(s.lower() for s in self.suffixes if s)
        if not suffixes:
            raise ConfigurationError("at least one suffix is needed (e.g. .mp4)")
        if any(s.endswith(SIDECAR_SUFFIX) for s in suffixes):
            raise ConfigurationError(f"{SIDECAR_SUFFIX} keys are sidecars, never videos")
        object.__setattr__(self, "suffixes", suffixes)

    def rejects(self, key: str) -> str | None:
        """Why ``key`` is not a video to ingest (``prefix``/``sidecar``/``suffix``), or None."""
        if not key.startswith(self.prefix):  # S3 keys are case-sensitive, prefixes too
            return "prefix"
        lowered = key.lower()
        if lowered.endswith(SIDECAR_SUFFIX):
            return "sidecar"
        return None if lowered.endswith(self.suffixes) else "suffix"


def sidecar_key(key: str) -> str:
    """``in/clip.mp4`` -> ``in/clip.json``: the video's extension replaced by ``.json``."""
    return posixpath.splitext(key)[0] + SIDECAR_SUFFIX
