"""The Prefect event one new object becomes: its deterministic id and its shape.

Owns: :func:`event_id` (same object version, same id) and :func:`build_event` (the JSON-ready
event the ``ingest-video`` trigger matches on, ``EVENT_CREATED``).

Pure: values in, a dict out. Must not post anything (the sinks do), import prefect or boto3,
or read the clock (``occurred`` is an argument).
"""

from __future__ import annotations

import posixpath
import uuid
from datetime import UTC, datetime
from typing import Any

from deployments.s3_events.notifications import S3Object
from deployments.s3_events.options import ObjectOptions, PublishOptions
from reelflow.ingest_options import POST_OPTION_KEYS

EVENT_CREATED = "reelflow.s3.object.created"
RESOURCE_ID_PREFIX = "reelflow.s3."


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
            **{key: getattr(opts, key) for key in POST_OPTION_KEYS},
            "run_name": f"ingest-{basename}",
            "sidecar_key": found.sidecar_key,
            "options_error": found.error,
            "s3_event_name": obj.event_name,
            "s3_event_time": obj.event_time,
        },
    }
