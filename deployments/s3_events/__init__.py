"""S3 bucket notifications -> Prefect events: the bridge behind ``reelflow s3-events``.

One module per job; the first three are pure (no boto3, prefect, starlette or network):

- :mod:`~deployments.s3_events.notifications`: parsing notification bodies (AWS ``Records[]``,
  the ``s3:TestEvent``, SNS envelopes, MinIO/Ceph webhook bodies), the key filter, sidecar keys.
- :mod:`~deployments.s3_events.options`: the publish options a sidecar ``<name>.json`` or the
  object's ``x-amz-meta-reelflow-*`` metadata ask for, checked by :mod:`reelflow.ingest_options`.
- :mod:`~deployments.s3_events.events`: the event each new object becomes, and its id.
- :mod:`~deployments.s3_events.bridge`: :class:`Bridge` (a body in, its events emitted) and the
  S3 reads it needs (:func:`read_object_options`), through the client it is given.
- :mod:`~deployments.s3_events.sinks`: posting events to the Prefect API (:class:`PrefectEventSink`).
- :mod:`~deployments.s3_events.sqs`: the SQS long-poll loop (:func:`poll_sqs`).
- :mod:`~deployments.s3_events.webhook`: the webhook app (:func:`make_webhook_app`).

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

This file only re-exports; importing it loads boto3 and starlette, never prefect (the sink
imports prefect when it opens).
"""

from deployments.s3_events.bridge import Bridge, own_store_of, read_object_options
from deployments.s3_events.events import EVENT_CREATED, RESOURCE_ID_PREFIX, build_event, event_id
from deployments.s3_events.notifications import (
    DEFAULT_SUFFIXES,
    SIDECAR_SUFFIX,
    KeyFilter,
    MalformedNotificationError,
    S3Object,
    parse_notification,
    sidecar_key,
)
from deployments.s3_events.options import (
    MAX_SIDECAR_BYTES,
    METADATA_FIELDS,
    METADATA_PREFIX,
    ObjectOptions,
    PublishOptions,
    options_from_metadata,
    options_from_sidecar,
    resolve_options,
)
from deployments.s3_events.sinks import EventDeliveryError, EventSink, PrefectEventSink
from deployments.s3_events.sqs import (
    MAX_RECEIVE_PAUSE_S,
    SQS_MAX_BATCH,
    SQS_WAIT_TIME_S,
    SqsStats,
    make_sqs_client,
    poll_sqs,
)
from deployments.s3_events.webhook import (
    MAX_WEBHOOK_BODY_BYTES,
    MIN_WEBHOOK_SECRET_CHARS,
    authorized,
    check_webhook_secret,
    make_webhook_app,
    read_bounded,
)

__all__ = [
    "DEFAULT_SUFFIXES",
    "EVENT_CREATED",
    "MAX_RECEIVE_PAUSE_S",
    "MAX_SIDECAR_BYTES",
    "MAX_WEBHOOK_BODY_BYTES",
    "METADATA_FIELDS",
    "METADATA_PREFIX",
    "MIN_WEBHOOK_SECRET_CHARS",
    "RESOURCE_ID_PREFIX",
    "SIDECAR_SUFFIX",
    "SQS_MAX_BATCH",
    "SQS_WAIT_TIME_S",
    "Bridge",
    "EventDeliveryError",
    "EventSink",
    "KeyFilter",
    "MalformedNotificationError",
    "ObjectOptions",
    "PrefectEventSink",
    "PublishOptions",
    "S3Object",
    "SqsStats",
    "authorized",
    "build_event",
    "check_webhook_secret",
    "event_id",
    "make_sqs_client",
    "make_webhook_app",
    "options_from_metadata",
    "options_from_sidecar",
    "own_store_of",
    "parse_notification",
    "poll_sqs",
    "read_bounded",
    "read_object_options",
    "resolve_options",
    "sidecar_key",
]
