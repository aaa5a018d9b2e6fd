"""The SQS edge: long-poll a queue of bucket notifications and hand each body to the bridge.

Owns: the SQS client factory (:func:`make_sqs_client`), the receive loop (:func:`poll_sqs`) and
its counters (:class:`SqsStats`).

Must not: delete a message before the bridge returned (its events were accepted), parse bodies
or build events (the bridge does), or loop without a way out (``once``, ``max_messages``,
``stop``); a missing queue or a denied call stops it with :class:`ConfigurationError`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from deployments.s3_events.bridge import Bridge, log
from deployments.s3_events.notifications import MalformedNotificationError
from reelflow.errors import ConfigurationError, ReelflowError
from storage.s3 import map_s3_error

SQS_WAIT_TIME_S = 20  # SQS's maximum long poll: fewest empty receives
SQS_MAX_BATCH = 10  # ReceiveMessage's MaxNumberOfMessages limit
MAX_RECEIVE_PAUSE_S = 30.0  # back-off ceiling while SQS is unreachable

_SQS_REGION = re.compile(r"^https?://(?:sqs\.([a-z0-9-]+)|([a-z0-9-]+)\.queue)\.amazonaws\.com")


def make_sqs_client(*, endpoint_url: str | None, queue_url: str, max_attempts: int = 5) -> Any:
    """A boto3 SQS client; the region comes from an AWS queue URL when it names one."""
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
            log().warning("sqs_receive_failed", error=str(error), pause_s=pause_s)
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
    message_id = message.get("MessageId")
    receives = message.get("Attributes", {}).get("ApproximateReceiveCount")
    try:
        ids = bridge.handle(message.get("Body", ""))
    except MalformedNotificationError as exc:
        log().error(
            "sqs_message_malformed", message_id=message_id, receives=receives, error=str(exc)
        )
        return False
    except ReelflowError as exc:
        log().warning(
            "sqs_message_failed", message_id=message_id, receives=receives, error=str(exc)
        )
        return False
    stats.event_ids.extend(ids)
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    except (ClientError, BotoCoreError) as exc:
        # The events are in; a redelivery re-emits the same ids, which the server drops.
        log().warning("sqs_delete_failed", message_id=message_id, error=str(exc))
        return False
    return True
