"""The bridge: one notification body in, one Prefect event per new video out.

Owns: :class:`Bridge` (refuse what the policy refuses, skip what is not a video or is
reelflow's own store, look the object up, emit) and :func:`read_object_options`, the S3 edge
that HEADs the video and GETs its sidecar through the client it is given.

Must not: build its own S3 or Prefect client (they are arguments), define publish-option rules
(:mod:`deployments.s3_events.options` applies :mod:`reelflow.ingest_options`), or emit anything
for a body it could not fully handle: an exception leaves the whole notification to be
delivered again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deployments.s3_events.events import build_event
from deployments.s3_events.notifications import KeyFilter, S3Object, parse_notification, sidecar_key
from deployments.s3_events.options import (
    MAX_SIDECAR_BYTES,
    ObjectOptions,
    PublishOptions,
    options_from_metadata,
    options_from_sidecar,
    resolve_options,
)
from deployments.s3_events.sinks import EventSink
from reelflow.errors import InputRejectedError
from reelflow.event_policy import EventPolicy, printable
from reelflow.logging import get_logger
from storage.s3 import map_s3_error

LOGGER_NAME = "reelflow.s3_events"


def log() -> Any:
    """The bridge's logger (also the SQS loop's and the webhook's)."""
    # Bound per call: a logger bound at import would freeze structlog's pre-configure defaults.
    return get_logger(LOGGER_NAME)


def _is_missing(exc: Exception) -> bool:
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
    except InputRejectedError as exc:
        return ObjectOptions(sidecar_key=found_key, error=str(exc), **identity)
    return ObjectOptions(options=options, sidecar_key=found_key, **identity)


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
        on a malformed body (:class:`MalformedNotificationError`) or a failed S3 lookup."""
        events = []
        for obj in parse_notification(body):
            refusal = self.policy.refuses(obj.bucket, obj.key)
            if refusal is not None:
                # Before any S3 call: a foreign bucket is never even looked at.
                log().warning(
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
                log().info("s3_object_skipped", bucket=obj.bucket, key=obj.key, reason=reason)
                continue
            found = read_object_options(self.s3, obj)
            if found is None:
                log().warning("s3_object_vanished", bucket=obj.bucket, key=obj.key)
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
                log().error(
                    "s3_object_refused",
                    bucket=obj.bucket,
                    key=obj.key,
                    reason="neither versionId nor ETag in the record or from HEAD",
                )
                continue
            if found.error:
                log().error("s3_object_options_rejected", key=obj.key, error=found.error)
            events.append(build_event(obj, found, occurred=self.clock()))
        if events:
            self.sink.emit(events)
        for e in events:
            log().info("s3_event_emitted", event_id=e["id"], source=e["payload"]["source"])
        return [e["id"] for e in events]
