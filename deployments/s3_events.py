"""S3 bucket notifications -> Prefect events: the bridge behind ``reelflow s3-events``.

Owns, as a pure core (no boto3, prefect, starlette or network): parsing notification bodies
(AWS ``Records[]``, the ``s3:TestEvent``, SNS envelopes, MinIO/Ceph webhook bodies), the key
filter, the publish options a sidecar ``<name>.json`` or the object's ``x-amz-meta-reelflow-*``
metadata ask for, and the event each new object becomes.

Owns, as edges (each receives its client): reading metadata and sidecars from S3
(:func:`read_object_options`), posting events to the Prefect API (:class:`PrefectEventSink`),
the SQS long-poll loop (:func:`poll_sqs`) and the webhook app (:func:`make_webhook_app`).

Trust (issue 8 §3): only objects in ``REELFLOW_EVENT_BUCKETS`` (buckets or bucket/prefix
folders) with safe keys become events; a notification naming another bucket, or a key with a
``..`` segment, a control character or NUL, is refused: logged, its message deleted, no event.
A sidecar or metadata may name only the accounts ``REELFLOW_EVENT_ACCOUNTS`` allows for its
bucket/prefix, else the event carries ``options_error``. The rules live in
:mod:`reelflow.event_policy`, which the ``ingest-video`` flow applies again to every run an event
started: anyone who can post to the Prefect API can forge an event, so the bridge's checks are a
first filter, not the guarantee.

Delivery is at least once end to end: an SQS message is deleted (a webhook answered 200) only
after Prefect accepted its events, and the event id is derived from the object version
(:func:`event_id`: bucket, key and versionId, or ETag; never the sequencer, which a replay can
change), so a redelivered or re-sequenced notification repeats an id the server drops instead
of starting a second run. The sidecar is read when the video's notification is handled, so it
must be uploaded before the video; metadata travels with the object and has no such race.

Must not: start flow runs (the ``ingest-video`` deployment's trigger does), delete an SQS
message before the Prefect API accepted its events, or let a bad sidecar stop the bridge: a bad
sidecar still yields the event, with ``options_error`` set and no publish options, so the run it
starts fails with that validation error where the user looks (the run list), and can never
publish with defaults the sidecar meant to override.
"""

from __future__ import annotations

import email.header
import hmac
import json
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote_plus

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from reelflow.errors import ConfigurationError, ReelflowError, ValidationError
from reelflow.event_policy import EventPolicy, printable
from reelflow.logging import get_logger

if TYPE_CHECKING:
    from starlette.applications import Starlette

EVENT_CREATED = "reelflow.s3.object.created"
RESOURCE_ID_PREFIX = "reelflow.s3."
DEFAULT_SUFFIXES = (".mp4", ".mov", ".webm")
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 64 * 1024  # options fit in a few hundred bytes; anything bigger is a mistake
MAX_CAPTION_UTF16_UNITS = 2200  # TikTok counts the title in UTF-16 code units
METADATA_PREFIX = "reelflow-"
METADATA_FIELDS = {
    "account": "account",
    "caption": "caption",
    "privacy": "privacy_level",
    "mode": "mode",
    "publish-at": "publish_at",
}
SQS_WAIT_TIME_S = 20  # SQS's maximum long poll: fewest empty receives
SQS_MAX_BATCH = 10  # ReceiveMessage's MaxNumberOfMessages limit
MAX_RECEIVE_PAUSE_S = 30.0  # back-off ceiling while SQS is unreachable
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024
MIN_WEBHOOK_SECRET_CHARS = 32  # a shared secret shorter than this can be guessed offline

PrivacyLevel = Literal[
    "PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"
]
PublishMode = Literal["direct", "inbox", "none"]


def _log() -> Any:
    # Bound per call: a logger bound at import would freeze structlog's pre-configure defaults.
    return get_logger("reelflow.s3_events")


class MalformedNotification(ValidationError):
    """The body is not an S3 notification this bridge understands; retrying cannot help."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="malformed_notification", **context)


class EventDeliveryError(ReelflowError):
    """The Prefect API did not accept the events; the notification must be delivered again."""

    retryable = True


# --- parsing -------------------------------------------------------------------------------


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
        raise MalformedNotification("notification body is not a JSON object")
    if doc.get("Type") == "Notification" and "Message" in doc:
        message = doc["Message"]
        if not isinstance(message, str):
            raise MalformedNotification("SNS envelope's Message is not a string")
        inner = _load_json(message)
        if not isinstance(inner, Mapping) or inner.get("Type") == "Notification":
            raise MalformedNotification("SNS Message is not an S3 notification")
        return parse_notification(inner)
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedNotification("notification has no Records list")
    return [obj for i, r in enumerate(records) if (obj := _parse_record(r, i)) is not None]


def _load_json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedNotification(f"notification body is not JSON: {exc}") from exc


def _parse_record(record: Any, index: int) -> S3Object | None:
    where = f"Records[{index}]"
    if not isinstance(record, Mapping):
        raise MalformedNotification(f"{where} is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedNotification(f"{where}.eventName is missing")
    # MinIO and Ceph prefix the name with "s3:"; AWS does not.
    name = name.removeprefix("s3:")
    if not name.startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, Mapping) else None
    obj = s3.get("object") if isinstance(s3, Mapping) else None
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise MalformedNotification(f"{where}.s3.bucket/object is missing")
    bucket_name, raw_key = bucket.get("name"), obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        raise MalformedNotification(f"{where}.s3.bucket.name is missing")
    if not isinstance(raw_key, str) or not raw_key:
        raise MalformedNotification(f"{where}.s3.object.key is missing")
    size = obj.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedNotification(f"{where}.s3.object.size is not a byte count")
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
        raise MalformedNotification(f"{where}.s3.object.{name} is not a string")
    return value


# --- filtering -----------------------------------------------------------------------------


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


# --- publish options -----------------------------------------------------------------------


class PublishOptions(BaseModel):
    """What a bucket-triggered run publishes; unset fields fall back to the deployment's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str | None = Field(default=None, min_length=1, max_length=255)
    caption: str | None = None
    privacy_level: PrivacyLevel | None = None
    mode: PublishMode | None = None
    publish_at: AwareDatetime | None = None

    @field_validator("caption")
    @classmethod
    def _caption_fits(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode("utf-16-le")) // 2 > MAX_CAPTION_UTF16_UNITS:
            raise ValueError(f"longer than {MAX_CAPTION_UTF16_UNITS} UTF-16 code units")
        return v

    @field_validator("publish_at", mode="before")
    @classmethod
    def _iso_only(cls, v: Any) -> Any:
        # Lax pydantic would read 1700000000 as a Unix time; the contract is ISO 8601 text.
        if v is not None and not isinstance(v, str | datetime):
            raise ValueError("must be an ISO 8601 date-time with a timezone")
        return v


def options_from_sidecar(data: bytes, *, where: str) -> dict[str, Any]:
    """The raw fields of a sidecar file; ``where`` names it in errors (``bucket/key``)."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValidationError(
            f"sidecar {where}: larger than {MAX_SIDECAR_BYTES} bytes", reason="bad_sidecar"
        )
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError(f"sidecar {where}: not UTF-8 ({exc})", reason="bad_sidecar") from exc
    except ValueError as exc:
        raise ValidationError(f"sidecar {where}: not JSON: {exc}", reason="bad_sidecar") from exc
    if not isinstance(doc, dict):
        raise ValidationError(f"sidecar {where}: must be a JSON object", reason="bad_sidecar")
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
            raise ValidationError(
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
    """Merge field by field: the sidecar wins over metadata; null or absent means unset."""
    meta = _validate(metadata, f"metadata of {object_name}", reason="bad_metadata")
    side = _validate(sidecar or {}, f"sidecar {sidecar_name}", reason="bad_sidecar")
    merged = {**meta.model_dump(exclude_none=True), **side.model_dump(exclude_none=True)}
    return PublishOptions(**merged)


def _validate(fields: Mapping[str, Any], what: str, *, reason: str) -> PublishOptions:
    try:
        return PublishOptions.model_validate(dict(fields))
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ValidationError(f"{what}: {problems}", reason=reason) from exc


@dataclass(frozen=True)
class ObjectOptions:
    """The outcome of looking an object up: its options, or why they are unusable."""

    options: PublishOptions = field(default_factory=PublishOptions)
    sidecar_key: str | None = None  # set when a sidecar was found
    error: str | None = None  # set when the sidecar or metadata is invalid
    size: int | None = None  # from HEAD, for records that carry none
    etag: str | None = None  # from HEAD: identifies the version when the record does not
    version_id: str | None = None  # from HEAD


# --- the event -----------------------------------------------------------------------------


def event_id(obj: S3Object) -> uuid.UUID:
    """Same object version, same id: S3 delivers at least once and Prefect drops repeated ids.

    The version is the versionId when there is one, else the ETag (the content). Never the
    sequencer: a replayed notification with another sequencer is still the same version.
    """
    version = obj.version_id or ""
    name = f"{obj.uri}#{version}#{'' if version else obj.etag or ''}"
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


def build_event(obj: S3Object, found: ObjectOptions, *, occurred: datetime) -> dict[str, Any]:
    """The Prefect event for one new object (JSON-ready; resource values are strings)."""
    # With invalid options nothing from them is applied and mode is "none": even a flow that
    # ignored options_error could not publish with defaults the sidecar meant to override.
    opts = PublishOptions(mode="none") if found.error else found.options
    basename = posixpath.basename(obj.key)
    return {
        "id": str(event_id(obj)),
        "occurred": occurred.astimezone(UTC).isoformat(),
        "event": EVENT_CREATED,
        "resource": {
            "prefect.resource.id": f"{RESOURCE_ID_PREFIX}{obj.bucket}.{obj.key}",
            "prefect.resource.name": basename,
            "s3.bucket": obj.bucket,
            "s3.key": obj.key,
        },
        "payload": {
            "source": obj.uri,
            "bucket": obj.bucket,
            "key": obj.key,
            "size": obj.size if obj.size is not None else found.size,
            "etag": obj.etag,
            "version_id": obj.version_id,
            "sequencer": obj.sequencer,
            "account": opts.account,
            "caption": opts.caption,
            "privacy_level": opts.privacy_level,
            "mode": opts.mode,
            "publish_at": opts.publish_at.isoformat() if opts.publish_at else None,
            "run_name": f"ingest-{basename}",
            "sidecar_key": found.sidecar_key,
            "options_error": found.error,
            "s3_event_name": obj.event_name,
            "s3_event_time": obj.event_time,
        },
    }


# --- edges: S3, Prefect --------------------------------------------------------------------


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NoSuchVersion", "NotFound") or _status(exc) == 404


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def read_object_options(s3: Any, obj: S3Object) -> ObjectOptions | None:
    """HEAD the object and GET its sidecar; None when the object is already gone.

    An invalid sidecar or metadata is returned as ``error`` (the event still goes out); S3
    failures raise :class:`StorageError` so the notification is delivered again later.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from storage.s3 import map_s3_error

    where = f"{obj.bucket}/{obj.key}"
    head_args = {"Bucket": obj.bucket, "Key": obj.key}
    if obj.version_id:
        head_args["VersionId"] = obj.version_id
    try:
        head = s3.head_object(**head_args)
    except (ClientError, BotoCoreError) as exc:
        if _is_missing(exc):
            return None
        raise map_s3_error(exc, f"HEAD s3://{where}") from exc
    size = head.get("ContentLength")
    identity = {
        "size": size,
        "etag": str(head.get("ETag") or "").strip('"') or None,
        "version_id": head.get("VersionId") or None,
    }
    side_key = sidecar_key(obj.key)
    side_where = f"{obj.bucket}/{side_key}"
    data: bytes | None
    try:
        reply = s3.get_object(Bucket=obj.bucket, Key=side_key)
        data = reply["Body"].read(MAX_SIDECAR_BYTES + 1)
    except (ClientError, BotoCoreError) as exc:
        if not _is_missing(exc):
            what = f"GET sidecar s3://{side_where}"
            if isinstance(exc, ClientError) and _status(exc) == 403:
                # S3 answers 403, not 404, for a missing key when the caller lacks ListBucket.
                what += " (403 for a missing sidecar means the bridge lacks s3:ListBucket)"
            raise map_s3_error(exc, what) from exc
        data = None
    found_key = side_key if data is not None else None
    try:
        sidecar = None if data is None else options_from_sidecar(data, where=side_where)
        metadata = options_from_metadata(head.get("Metadata") or {}, where=where)
        options = resolve_options(
            metadata=metadata, sidecar=sidecar, object_name=where, sidecar_name=side_where
        )
    except ValidationError as exc:
        return ObjectOptions(sidecar_key=found_key, error=str(exc), **identity)
    return ObjectOptions(options=options, sidecar_key=found_key, **identity)


class EventSink(Protocol):
    def emit(self, events: Sequence[Mapping[str, Any]]) -> None: ...


class PrefectEventSink:
    """Posts events to ``POST /api/events`` of ``PREFECT_API_URL`` (a context manager).

    Not ``emit_event``: that hands events to a background websocket worker which logs and drops
    failures, so the caller cannot know when to delete the SQS message. A 204 from this endpoint
    means the server took the batch; anything else raises :class:`EventDeliveryError`.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()  # one HTTP client, shared by the webhook's threads

    def __enter__(self) -> PrefectEventSink:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            # Without it Prefect would start a private ephemeral server nobody's triggers watch.
            raise ConfigurationError(
                "PREFECT_API_URL is not set: point it at the server running reelflow's deployments"
            )
        client = get_client(sync_client=True)
        client.__enter__()
        problem = client.api_healthcheck()
        if problem is not None:
            client.__exit__(None, None, None)
            raise EventDeliveryError(f"Prefect API {PREFECT_API_URL.value()}: {problem}")
        self._client = client
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.__exit__(exc_type, exc, tb)
            self._client = None

    def emit(self, events: Sequence[Mapping[str, Any]]) -> None:
        import httpx
        from prefect.events import Event

        if self._client is None:
            raise RuntimeError("PrefectEventSink is used outside its with-block")
        # Validating with Prefect's own model catches a non-string resource value here, as a
        # bug in this module, instead of as a 422 from the server.
        body = [Event.model_validate(e).model_dump(mode="json") for e in events]
        try:
            with self._lock:
                self._client.request("POST", "/events", json=body)
        except httpx.HTTPError as exc:
            raise EventDeliveryError(f"Prefect API refused {len(body)} event(s): {exc}") from exc


# --- the bridge ----------------------------------------------------------------------------


def own_store_of(store_url: str) -> tuple[str, str] | None:
    """(bucket, prefix) when reelflow's store is on S3, else None."""
    if not store_url.startswith("s3://"):
        return None
    bucket, _, prefix = store_url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class Bridge:
    """One notification body in, its events posted, their ids out.

    ``policy`` has no default on purpose: a bridge built without one would accept any bucket.
    """

    def __init__(
        self,
        *,
        s3: Any,
        sink: EventSink,
        key_filter: KeyFilter,
        policy: EventPolicy,
        own_store: tuple[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.s3 = s3
        self.sink = sink
        self.key_filter = key_filter
        self.policy = policy
        # (bucket, prefix) of reelflow's own store: what reelflow writes there (stored videos,
        # staging, metadata) must never trigger another ingest of itself.
        self.own_store = own_store
        self.clock = clock

    def handle(self, body: bytes | str) -> list[str]:
        """Emit one event per new video object in ``body``; raises before emitting anything
        on a malformed body (:class:`MalformedNotification`) or a failed S3 lookup."""
        events = []
        for obj in parse_notification(body):
            refusal = self.policy.refuses(obj.bucket, obj.key)
            if refusal is not None:
                # Before any S3 call: a foreign bucket is never even looked at.
                _log().warning(
                    "s3_object_refused",
                    bucket=printable(obj.bucket),
                    key=printable(obj.key),
                    reason=printable(refusal),
                )
                continue
            reason = self.key_filter.rejects(obj.key)
            if reason is None and self.own_store is not None:
                bucket, prefix = self.own_store
                if obj.bucket == bucket and (not prefix or obj.key.startswith(prefix + "/")):
                    reason = "written by reelflow (its own store)"
            if reason is not None:
                _log().info("s3_object_skipped", bucket=obj.bucket, key=obj.key, reason=reason)
                continue
            found = read_object_options(self.s3, obj)
            if found is None:
                _log().warning("s3_object_vanished", bucket=obj.bucket, key=obj.key)
                continue
            account = found.options.account
            if found.error is None and account is not None:
                refusal = self.policy.account_refusal(obj.bucket, obj.key, account)
                if refusal is not None:
                    error = f"options of {obj.bucket}/{obj.key}: {refusal}"
                    found = replace(found, options=PublishOptions(), error=error)
            obj = replace(
                obj,
                etag=obj.etag or found.etag,
                version_id=obj.version_id or found.version_id,
            )
            if not (obj.etag or obj.version_id):
                # No version identity, no dedup: a replay would start a second run.
                _log().error(
                    "s3_object_refused",
                    bucket=obj.bucket,
                    key=obj.key,
                    reason="neither versionId nor ETag in the record or from HEAD",
                )
                continue
            if found.error:
                _log().error("s3_object_options_rejected", key=obj.key, error=found.error)
            events.append(build_event(obj, found, occurred=self.clock()))
        if events:
            self.sink.emit(events)
        for e in events:
            _log().info("s3_event_emitted", event_id=e["id"], source=e["payload"]["source"])
        return [e["id"] for e in events]


# --- SQS -----------------------------------------------------------------------------------

_SQS_REGION = re.compile(r"^https?://(?:sqs\.([a-z0-9-]+)|([a-z0-9-]+)\.queue)\.amazonaws\.com")


def make_sqs_client(*, endpoint_url: str | None, queue_url: str, max_attempts: int = 5) -> Any:
    """A boto3 SQS client; the region comes from an AWS queue URL when it names one."""
    import boto3
    from botocore.config import Config

    match = _SQS_REGION.match(queue_url)
    region = (match.group(1) or match.group(2)) if match else None
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=SQS_WAIT_TIME_S + 20,  # a long poll holds the response for 20 s
    )
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name=region, config=config)


@dataclass
class SqsStats:
    received: int = 0
    deleted: int = 0
    left: int = 0  # failed or malformed: the queue redelivers, then its redrive policy decides
    event_ids: list[str] = field(default_factory=list)


def poll_sqs(
    bridge: Bridge,
    sqs: Any,
    queue_url: str,
    *,
    max_messages: int | None = None,
    once: bool = False,
    wait_time_s: int = SQS_WAIT_TIME_S,
    stop: threading.Event | None = None,
) -> SqsStats:
    """Long-poll ``queue_url``; delete each message only after its events were accepted.

    Stops after one receive (``once``), after ``max_messages`` messages, or when ``stop`` is
    set (checked between receives, so within one long poll). A receive that fails after
    botocore's retries is retried after a pause; a missing queue or a denied call raises
    :class:`ConfigurationError`.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from storage.s3 import map_s3_error

    stop = stop or threading.Event()
    stats = SqsStats()
    pause_s = 1.0
    while not stop.is_set():
        want = SQS_MAX_BATCH if max_messages is None else max_messages - stats.received
        if want <= 0:
            break
        try:
            reply = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=min(want, SQS_MAX_BATCH),
                WaitTimeSeconds=wait_time_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except (ClientError, BotoCoreError) as exc:
            error = map_s3_error(exc, f"SQS receive from {queue_url}")
            if not error.retryable:
                # A missing queue, a denied call or a bad URL: no later attempt does better.
                raise ConfigurationError(str(error)) from exc
            if once:
                raise error from exc
            _log().warning("sqs_receive_failed", error=str(error), pause_s=pause_s)
            stop.wait(pause_s)
            pause_s = min(pause_s * 2, MAX_RECEIVE_PAUSE_S)
            continue
        pause_s = 1.0
        for message in reply.get("Messages", []):
            stats.received += 1
            if _handle_message(bridge, sqs, queue_url, message, stats):
                stats.deleted += 1
            else:
                stats.left += 1
        if once:
            break
    return stats


def _handle_message(
    bridge: Bridge, sqs: Any, queue_url: str, message: Mapping[str, Any], stats: SqsStats
) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    message_id = message.get("MessageId")
    receives = message.get("Attributes", {}).get("ApproximateReceiveCount")
    try:
        ids = bridge.handle(message.get("Body", ""))
    except MalformedNotification as exc:
        _log().error(
            "sqs_message_malformed", message_id=message_id, receives=receives, error=str(exc)
        )
        return False
    except ReelflowError as exc:
        _log().warning(
            "sqs_message_failed", message_id=message_id, receives=receives, error=str(exc)
        )
        return False
    stats.event_ids.extend(ids)
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    except (ClientError, BotoCoreError) as exc:
        # The events are in; a redelivery re-emits the same ids, which the server drops.
        _log().warning("sqs_delete_failed", message_id=message_id, error=str(exc))
        return False
    return True


# --- webhook -------------------------------------------------------------------------------


def authorized(header: str | None, secret: str) -> bool:
    """``Authorization: Bearer <secret>`` or the bare secret (MinIO's ``auth_token``)."""
    if not header or not secret:
        return False
    expected = secret.encode()
    scheme, _, rest = header.partition(" ")
    bearer = rest.strip() if scheme.lower() == "bearer" else ""
    # Both comparisons always run, so timing does not reveal which form was tried.
    bare_ok = hmac.compare_digest(header.strip().encode(), expected)
    bearer_ok = hmac.compare_digest(bearer.encode(), expected)
    return bare_ok or bearer_ok


def check_webhook_secret(secret: str) -> None:
    """Refuse a missing or short secret (ConfigurationError), before anything listens."""
    if not secret.strip():
        raise ConfigurationError("the webhook needs a secret (REELFLOW_WEBHOOK_SECRET)")
    if len(secret.strip()) < MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigurationError(
            f"REELFLOW_WEBHOOK_SECRET is {len(secret.strip())} characters; the webhook needs at "
            f"least {MIN_WEBHOOK_SECRET_CHARS} (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )


async def read_bounded(chunks: Any, limit: int) -> bytes | None:
    """The body from an async iterator of chunks, or None as soon as it passes ``limit``
    bytes; the rest is never read (chunked bodies declare no length to refuse up front)."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def make_webhook_app(bridge: Bridge, *, secret: str) -> Starlette:
    """``POST /`` takes S3-format notification bodies; ``GET /healthz`` answers probes."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    check_webhook_secret(secret)

    async def notify(request: Request) -> JSONResponse:
        if not authorized(request.headers.get("authorization"), secret):
            client = request.client.host if request.client else None
            _log().warning("webhook_unauthorized", client=client)
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_WEBHOOK_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            body = await read_bounded(request.stream(), MAX_WEBHOOK_BODY_BYTES)
        except ClientDisconnect:
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        if body is None:
            # The connection is closed after this reply: the unread rest is never consumed.
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            # boto3 and the Prefect client block; keep them off the event loop.
            ids = await run_in_threadpool(bridge.handle, body)
        except MalformedNotification as exc:
            _log().warning("webhook_body_malformed", error=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ReelflowError as exc:
            # The sender (MinIO keeps a queue_dir) retries on 5xx; nothing was emitted yet
            # or the ids it re-sends are dropped as duplicates.
            _log().error("webhook_delivery_failed", error=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"event_ids": ids})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/", notify, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    )
