"""The S3 bucket-event bridge against real servers: moto's S3 + SQS over HTTP, a real Prefect API.

moto delivers the bucket's ObjectCreated notifications (and the s3:TestEvent sent when they are
configured) to the SQS queue itself; the tests read what reached Prefect back through
``POST /api/events/filter``. The event persister flushes every few seconds, so reads poll with a
bounded deadline; "nothing was emitted" is checked after a later sentinel event is visible.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from typer.testing import CliRunner

from deployments.events_cli import events_app
from deployments.s3_events import (
    EVENT_CREATED,
    MAX_WEBHOOK_BODY_BYTES,
    Bridge,
    KeyFilter,
    PrefectEventSink,
    make_webhook_app,
)
from reelflow.errors import ConfigurationError
from reelflow.event_policy import EventPolicy
from storage.s3 import make_s3_client
from tests.support.waiting import wait_for

SECRET = "webhook-secret-for-tests-0123456789abcdef"  # the webhook wants >= 32 characters


def find_events(api: str, **filters: Any) -> list[dict[str, Any]]:
    body = {"filter": {"event": {"name": [EVENT_CREATED]}, **filters}, "limit": 50}
    reply = httpx.post(f"{api}/events/filter", json=body, timeout=10)
    reply.raise_for_status()
    return list(reply.json()["events"])


def events_for(api: str, bucket: str, key: str) -> list[dict[str, Any]]:
    return find_events(api, resource={"id": [f"reelflow.s3.{bucket}.{key}"]})


def events_with_id(api: str, event_id: str) -> list[dict[str, Any]]:
    return find_events(api, id={"id": [event_id]})


def expected_id(bucket: str, key: str, etag: str) -> str:
    # moto's records carry neither versionId nor sequencer, so the etag identifies the version.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3://{bucket}/{key}##{etag}"))


@pytest.fixture
def endpoint(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REELFLOW_S3_ENDPOINT_URL", s3_server.endpoint_url)
    return str(s3_server.endpoint_url)


@pytest.fixture(autouse=True)
def event_policy_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """REELFLOW_EVENT_BUCKETS names the test's bucket (any account may be named there)."""
    name = request.getfixturevalue("bucket") if "bucket" in request.fixturenames else "rf-none"
    monkeypatch.setenv("REELFLOW_EVENT_BUCKETS", name)
    monkeypatch.setenv("REELFLOW_EVENT_ACCOUNTS", f"{name}=*")
    return str(name)


@pytest.fixture
def s3(endpoint: str) -> Any:
    return make_s3_client(endpoint_url=endpoint)


@pytest.fixture
def sqs(endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def queue(sqs: Any, s3: Any, bucket: str) -> str:
    """A queue that receives every ObjectCreated of ``bucket`` (moto delivers it)."""
    url = sqs.create_queue(QueueName=f"rf-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return str(url)


def run_sqs(queue_url: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(events_app, ["sqs", "--queue-url", queue_url, "--once", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def queue_depth(sqs: Any, queue_url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


def put(s3: Any, bucket: str, key: str, body: bytes = b"\x00" * 64, **kwargs: Any) -> str:
    return str(s3.put_object(Bucket=bucket, Key=key, Body=body, **kwargs)["ETag"].strip('"'))


# --- SQS -----------------------------------------------------------------------------------


def test_video_with_sidecar_becomes_one_event(
    prefect_api: str, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """Sidecar + video put -> moto notifies SQS -> one event with the sidecar's options."""
    sidecar = {
        "account": "acme",
        "caption": "first light ☀️ #reelflow",
        "privacy_level": "SELF_ONLY",
        "mode": "inbox",
        "publish_at": "2026-12-01T10:00:00+01:00",
    }
    put(s3, bucket, "in/my clip+1.json", json.dumps(sidecar).encode())
    etag = put(s3, bucket, "in/my clip+1.mp4")

    summary = run_sqs(queue)

    # The s3:TestEvent, the sidecar's and the video's notifications: all handled, all deleted.
    key = "in/my clip+1.mp4"
    assert summary == {
        "received": 3,
        "deleted": 3,
        "left": 0,
        "event_ids": [expected_id(bucket, key, etag)],
    }
    assert queue_depth(sqs, queue) == (0, 0)
    [event] = wait_for(lambda: events_for(prefect_api, bucket, key), "the created event")
    assert event["id"] == summary["event_ids"][0]
    assert event["resource"]["s3.bucket"] == bucket
    assert event["resource"]["s3.key"] == key
    payload = event["payload"]
    assert payload["source"] == f"s3://{bucket}/{key}"
    assert (payload["size"], payload["etag"], payload["version_id"]) == (64, etag, None)
    assert {k: payload[k] for k in sidecar} == {
        **sidecar,
        "publish_at": "2026-12-01T10:00:00+01:00",
    }
    assert payload["run_name"] == "ingest-my clip+1.mp4"
    assert payload["sidecar_key"] == "in/my clip+1.json"
    assert payload["options_error"] is None


def test_metadata_options_and_deployment_defaults(
    prefect_api: str, s3: Any, bucket: str, queue: str
) -> None:
    """No sidecar: options come from x-amz-meta-reelflow-*; the rest stays null (defaults)."""
    meta = {"reelflow-account": "meta-acct", "reelflow-mode": "direct"}
    put(s3, bucket, "in/meta.MOV", Metadata=meta)
    put(s3, bucket, "in/plain.webm")

    summary = run_sqs(queue)

    assert len(summary["event_ids"]) == 2
    [with_meta] = wait_for(lambda: events_for(prefect_api, bucket, "in/meta.MOV"), "meta event")
    [plain] = wait_for(lambda: events_for(prefect_api, bucket, "in/plain.webm"), "plain event")
    assert (with_meta["payload"]["account"], with_meta["payload"]["mode"]) == (
        "meta-acct",
        "direct",
    )
    assert with_meta["payload"]["caption"] is None
    options = ("account", "caption", "privacy_level", "mode", "publish_at", "sidecar_key")
    assert [plain["payload"][k] for k in options] == [None] * len(options)


def test_same_notification_twice_is_one_event(
    prefect_api: str, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """A notification delivered twice gives the same event id, and the server keeps one."""
    etag = put(s3, bucket, "in/dup.mp4")
    # Peek at moto's own notification body, then deliver it a second time.
    bodies = []
    for _ in range(5):
        reply = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=0)
        bodies = [m["Body"] for m in reply.get("Messages", []) if "dup.mp4" in m["Body"]]
        if bodies:
            break
    assert bodies, "moto did not deliver the notification"
    sqs.send_message(QueueUrl=queue, MessageBody=bodies[0])

    summary = run_sqs(queue)

    dup_id = expected_id(bucket, "in/dup.mp4", etag)
    assert summary["event_ids"] == [dup_id, dup_id]
    assert summary["deleted"] == 3  # TestEvent + original + copy
    # Once a later event is visible, both deliveries have been through the server.
    put(s3, bucket, "in/sentinel.mp4")
    run_sqs(queue)
    wait_for(lambda: events_for(prefect_api, bucket, "in/sentinel.mp4"), "the sentinel")
    assert len(events_with_id(prefect_api, dup_id)) == 1
    assert len(events_for(prefect_api, bucket, "in/dup.mp4")) == 1


def test_bad_sidecar_still_emits_with_options_error(
    prefect_api: str, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """A bad sidecar neither crashes the bridge nor blocks the queue: the event carries the
    validation error (the run fails with it) and no options, so nothing can be published."""
    put(s3, bucket, "in/bad.json", json.dumps({"acount": "x", "mode": "direct"}).encode())
    put(s3, bucket, "in/bad.mp4")
    put(s3, bucket, "in/broken.json", b"{not json")
    put(s3, bucket, "in/broken.mp4")

    summary = run_sqs(queue)

    assert (summary["deleted"], summary["left"], len(summary["event_ids"])) == (5, 0, 2)
    [bad] = wait_for(lambda: events_for(prefect_api, bucket, "in/bad.mp4"), "the bad event")
    [broken] = wait_for(lambda: events_for(prefect_api, bucket, "in/broken.mp4"), "broken")
    error = bad["payload"]["options_error"]
    assert error.startswith(f"sidecar {bucket}/in/bad.json: ")
    assert "acount: Extra inputs are not permitted" in error
    assert (bad["payload"]["mode"], bad["payload"]["account"]) == ("none", None)
    assert "not JSON" in broken["payload"]["options_error"]
    assert queue_depth(sqs, queue) == (0, 0)


def test_sidecars_and_other_files_are_ignored(
    prefect_api: str, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """.json and .txt keys, and keys outside --prefix, produce no event; their messages go."""
    put(s3, bucket, "in/orphan.json", b"{}")
    put(s3, bucket, "in/notes.txt", b"hello")
    put(s3, bucket, "elsewhere/clip.mp4")
    put(s3, bucket, "in/sentinel.mp4")

    summary = run_sqs(queue, "--prefix", "in/")

    assert (summary["received"], summary["deleted"], len(summary["event_ids"])) == (5, 5, 1)
    wait_for(lambda: events_for(prefect_api, bucket, "in/sentinel.mp4"), "the sentinel")
    for key in ("in/orphan.json", "in/notes.txt", "elsewhere/clip.mp4"):
        assert events_for(prefect_api, bucket, key) == []


def test_malformed_message_is_left_for_redrive(
    prefect_api: str, sqs: Any, bucket: str, queue: str
) -> None:
    """A message that is not a notification is logged and not deleted (redrive decides)."""
    sqs.send_message(QueueUrl=queue, MessageBody="this is not an S3 notification")

    summary = run_sqs(queue)

    assert (summary["received"], summary["deleted"], summary["left"]) == (2, 1, 1)
    assert queue_depth(sqs, queue) == (0, 1)  # in flight until its visibility timeout ends


def test_vanished_object_is_acknowledged_without_event(
    prefect_api: str, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """An object deleted before the bridge saw it: nothing to ingest, message deleted."""
    put(s3, bucket, "in/gone.mp4")
    s3.delete_object(Bucket=bucket, Key="in/gone.mp4")

    summary = run_sqs(queue)

    assert (summary["deleted"], summary["left"], summary["event_ids"]) == (2, 0, [])


def test_s3_failure_leaves_the_message_and_redelivery_emits_once(
    prefect_api: str,
    s3_server: Any,
    s3: Any,
    sqs: Any,
    bucket: str,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At least once: a failed HEAD keeps the message; the redelivery emits, then deletes it."""
    monkeypatch.setenv("REELFLOW_S3_MAX_ATTEMPTS", "1")  # no botocore retry hides the fault
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"VisibilityTimeout": "1"})
    etag = put(s3, bucket, "in/retry.mp4")
    s3_server.set_faults([{"op": "HeadObject", "kind": "500", "times": 1}])
    try:
        first = run_sqs(queue)
    finally:
        s3_server.set_faults([])
    assert (first["deleted"], first["left"], first["event_ids"]) == (1, 1, [])

    time.sleep(1.2)  # the queue's visibility timeout, so the message is delivered again
    second = run_sqs(queue)

    assert (second["received"], second["deleted"], second["left"]) == (1, 1, 0)
    assert second["event_ids"] == [expected_id(bucket, "in/retry.mp4", etag)]
    wait_for(lambda: events_for(prefect_api, bucket, "in/retry.mp4"), "the redelivered event")
    assert queue_depth(sqs, queue) == (0, 0)


def test_unreachable_prefect_api_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge that cannot reach Prefect exits 1 at start, before receiving any message."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = CliRunner().invoke(
            events_app, ["sqs", "--queue-url", "http://127.0.0.1:9/1/q", "--once"]
        )
    assert result.exit_code == 1
    assert "error: EventDeliveryError: Prefect API http://127.0.0.1:9/api" in result.stderr


def test_missing_queue_is_a_configuration_error(prefect_api: str, endpoint: str) -> None:
    """A queue URL that names no queue exits 2 with SQS's reason, not a retry loop."""
    missing = f"{endpoint}/123456789012/no-such-queue"
    result = CliRunner().invoke(events_app, ["sqs", "--queue-url", missing])
    assert result.exit_code == 2
    assert "error: ConfigurationError: SQS receive from" in result.stderr
    assert "NonExistentQueue" in result.stderr


def test_bridge_refuses_without_prefect_api_url() -> None:
    """No PREFECT_API_URL: refuse, rather than emit into a private ephemeral server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(ConfigurationError):
        PrefectEventSink().__enter__()


# --- webhook -------------------------------------------------------------------------------


class WebhookServer:
    """uvicorn serving the webhook app on a free port in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn to start", timeout_s=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def webhook(prefect_api: str, endpoint: str, bucket: str) -> Iterator[str]:
    with serve_webhook(endpoint, EventPolicy.parse(bucket, f"{bucket}=*")) as url:
        yield url


@contextlib.contextmanager
def serve_webhook(endpoint: str, policy: EventPolicy) -> Iterator[str]:
    # One attempt per S3 call, so an injected 500 reaches the bridge without retry back-off.
    s3 = make_s3_client(endpoint_url=endpoint, max_attempts=1)
    with PrefectEventSink() as sink:
        bridge = Bridge(s3=s3, sink=sink, key_filter=KeyFilter(), policy=policy)
        with WebhookServer(make_webhook_app(bridge, secret=SECRET)) as server:
            yield server.url


def minio_body(
    bucket: str, key: str, etag: str, size: int = 64, sequencer: str = "1879E4F3A1B2C3D4"
) -> bytes:
    """What MinIO POSTs to a webhook target: AWS records, s3:-prefixed names, EventName/Key."""
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": "2026-11-21T12:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {
                "key": key.replace(" ", "+"),
                "size": size,
                "eTag": etag,
                "sequencer": sequencer,
            },
        },
    }
    return json.dumps(
        {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}
    ).encode()


def test_webhook_rejects_missing_or_wrong_secret(
    prefect_api: str, webhook: str, s3: Any, bucket: str
) -> None:
    """401 without Authorization, with a wrong bare secret or a wrong bearer; nothing emitted."""
    denied = minio_body(bucket, "in/denied.mp4", put(s3, bucket, "in/denied.mp4"))
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": f"Bearer {SECRET}x"}):
        reply = httpx.post(webhook + "/", content=denied, headers=headers, timeout=10)
        assert reply.status_code == 401, headers
        assert reply.headers["www-authenticate"] == "Bearer"
    ok = minio_body(bucket, "in/allowed.mp4", put(s3, bucket, "in/allowed.mp4"))
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.post(webhook + "/", content=ok, headers=auth, timeout=10).status_code == 200
    wait_for(lambda: events_for(prefect_api, bucket, "in/allowed.mp4"), "the allowed event")
    assert events_for(prefect_api, bucket, "in/denied.mp4") == []


def test_webhook_accepts_bearer_and_bare_secret(
    prefect_api: str, webhook: str, s3: Any, bucket: str
) -> None:
    """200 with the emitted ids for Bearer <secret> and for the bare secret; one event kept."""
    key = "in/web clip.mp4"
    body = minio_body(bucket, key, put(s3, bucket, key, Metadata={"reelflow-account": "minio"}))
    ids = []
    for auth in (f"Bearer {SECRET}", SECRET):
        reply = httpx.post(webhook + "/", content=body, headers={"Authorization": auth}, timeout=10)
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["event_ids"])
    assert ids[0] == ids[1] and len(ids[0]) == 1
    [event] = wait_for(lambda: events_for(prefect_api, bucket, key), "the webhook event")
    assert event["id"] == ids[0][0]
    assert event["payload"]["sequencer"] == "1879E4F3A1B2C3D4"
    assert event["payload"]["account"] == "minio"
    assert len(events_with_id(prefect_api, ids[0][0])) == 1


def test_webhook_bad_bodies_and_health(webhook: str, bucket: str) -> None:
    """400 on garbage or a non-notification; TestEvent and ignored keys give 200 and no ids."""
    auth = {"Authorization": SECRET}
    for garbage in (b"garbage", b"[]", b'{"Records": [{"eventName": "ObjectCreated:Put"}]}'):
        reply = httpx.post(webhook + "/", content=garbage, headers=auth, timeout=10)
        assert reply.status_code == 400
        assert reply.json()["error"]
    test_event = json.dumps({"Event": "s3:TestEvent", "Bucket": bucket}).encode()
    reply = httpx.post(webhook + "/", content=test_event, headers=auth, timeout=10)
    assert (reply.status_code, reply.json()) == (200, {"event_ids": []})
    sidecar = minio_body(bucket, "in/x.json", "e")
    reply = httpx.post(webhook + "/", content=sidecar, headers=auth, timeout=10)
    assert (reply.status_code, reply.json()) == (200, {"event_ids": []})
    health = httpx.get(webhook + "/healthz", timeout=10)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_webhook_answers_503_when_s3_fails(
    prefect_api: str, webhook: str, s3_server: Any, s3: Any, bucket: str
) -> None:
    """An S3 failure is a 503 (the sender retries); the retry succeeds with the same id."""
    body = minio_body(bucket, "in/flaky.mp4", put(s3, bucket, "in/flaky.mp4"))
    auth = {"Authorization": f"Bearer {SECRET}"}
    s3_server.set_faults([{"op": "HeadObject", "kind": "503", "times": 1}])
    try:
        failed = httpx.post(webhook + "/", content=body, headers=auth, timeout=10)
    finally:
        s3_server.set_faults([])
    assert failed.status_code == 503
    assert failed.json()["error"].startswith(f"HEAD s3://{bucket}/in/flaky.mp4: ")
    retried = httpx.post(webhook + "/", content=body, headers=auth, timeout=10)
    assert retried.status_code == 200
    [event] = wait_for(lambda: events_for(prefect_api, bucket, "in/flaky.mp4"), "the event")
    assert retried.json()["event_ids"] == [event["id"]]


def test_webhook_refuses_to_start_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REELFLOW_WEBHOOK_SECRET: exit 2 with one line on stderr, before binding anything."""
    monkeypatch.delenv("REELFLOW_WEBHOOK_SECRET", raising=False)
    result = CliRunner().invoke(events_app, ["webhook", "--port", "0"])
    assert result.exit_code == 2
    assert "REELFLOW_WEBHOOK_SECRET is not set" in result.stderr


# --- trust (issue 8 §3) --------------------------------------------------------------------


def line_of(record: dict[str, Any]) -> str:
    return json.dumps(record)


def heads_of(s3_server: Any, bucket: str) -> list[str]:
    """Keys of ``bucket`` the bridge HEADed (it looks at nothing it refuses)."""
    return [r.key for r in s3_server.requests() if r.op == "HeadObject" and r.bucket == bucket]


def test_webhook_refuses_a_bucket_not_listed(
    prefect_api: str, endpoint: str, s3_server: Any, s3: Any, bucket: str
) -> None:
    """Repro: someone-elses-bucket/in/evil.mp4 with a sidecar choosing account studio and
    PUBLIC_TO_EVERYONE. Not in REELFLOW_EVENT_BUCKETS: 200 (nothing to redeliver), no event,
    and the bridge never even HEADs it; a listed bucket's object still goes through."""
    other = f"someone-elses-bucket-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=other)
    sidecar = {"account": "studio", "privacy_level": "PUBLIC_TO_EVERYONE", "mode": "direct"}
    put(s3, other, "in/evil.json", json.dumps(sidecar).encode())
    evil = minio_body(other, "in/evil.mp4", put(s3, other, "in/evil.mp4"))
    fine = minio_body(bucket, "in/fine.mp4", put(s3, bucket, "in/fine.mp4"))
    auth = {"Authorization": f"Bearer {SECRET}"}

    with serve_webhook(endpoint, EventPolicy.parse(bucket, f"{bucket}=studio")) as url:
        refused = httpx.post(url + "/", content=evil, headers=auth, timeout=10)
        accepted = httpx.post(url + "/", content=fine, headers=auth, timeout=10)

    assert (refused.status_code, refused.json()) == (200, {"event_ids": []})
    assert accepted.status_code == 200 and len(accepted.json()["event_ids"]) == 1
    wait_for(lambda: events_for(prefect_api, bucket, "in/fine.mp4"), "the listed bucket's event")
    assert events_for(prefect_api, other, "in/evil.mp4") == []
    assert heads_of(s3_server, other) == []


def test_sidecar_naming_an_account_not_allowed_fails_the_run_validation(
    prefect_api: str, endpoint: str, s3: Any, bucket: str
) -> None:
    """A listed bucket whose sidecar names studio where only acme is allowed: the event carries
    options_error, no account, privacy or mode, so its run fails validation and posts nothing."""
    sidecar = {"account": "studio", "privacy_level": "PUBLIC_TO_EVERYONE", "mode": "direct"}
    put(s3, bucket, "in/evil.json", json.dumps(sidecar).encode())
    notification = minio_body(bucket, "in/evil.mp4", put(s3, bucket, "in/evil.mp4"))

    with serve_webhook(endpoint, EventPolicy.parse(f"{bucket}/in", f"{bucket}/in=acme")) as url:
        reply = httpx.post(url + "/", content=notification, headers={"Authorization": SECRET})

    assert reply.status_code == 200
    [event] = wait_for(lambda: events_for(prefect_api, bucket, "in/evil.mp4"), "the event")
    payload = event["payload"]
    assert "account 'studio' is not allowed" in payload["options_error"]
    assert [payload[k] for k in ("account", "privacy_level")] == [None, None]
    assert payload["mode"] == "none"


def test_unsafe_keys_are_refused_and_their_messages_deleted(
    prefect_api: str, s3_server: Any, s3: Any, sqs: Any, bucket: str, queue: str
) -> None:
    """Repro: in/../secret/x.mp4 (a real object moto notifies) and in/\\x00x.mp4, in/\\nx.mp4
    (forged notifications) pass --prefix in/ but are refused: logged, deleted, no event, no HEAD."""
    put(s3, bucket, "in/../secret/x.mp4")
    for key in ("in/%00x.mp4", "in/x%0A.mp4"):
        forged = json.loads(minio_body(bucket, "placeholder", "e"))
        forged["Records"][0]["s3"]["object"]["key"] = key
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(forged))
    put(s3, bucket, "in/sentinel.mp4")

    result = CliRunner().invoke(
        events_app, ["sqs", "--queue-url", queue, "--once", "--prefix", "in/"]
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # TestEvent, the dot key, two forged, the sentinel: all deleted, one event.
    assert (summary["received"], summary["deleted"], summary["left"]) == (5, 5, 0)
    assert len(summary["event_ids"]) == 1
    assert queue_depth(sqs, queue) == (0, 0)
    assert heads_of(s3_server, bucket) == ["in/sentinel.mp4"]
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    refusals = [r for r in logged if "refused" in line_of(r)]
    assert len([r for r in refusals if r.get("event") == "s3_object_refused"]) == 3
    assert "\x00" not in result.stderr
    wait_for(lambda: events_for(prefect_api, bucket, "in/sentinel.mp4"), "the sentinel")
    assert events_for(prefect_api, bucket, "in/../secret/x.mp4") == []


def test_bridge_refuses_to_start_without_event_buckets(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No REELFLOW_EVENT_BUCKETS: both commands exit 2 with one line, before any receive."""
    monkeypatch.delenv("REELFLOW_EVENT_BUCKETS")
    monkeypatch.setenv("REELFLOW_WEBHOOK_SECRET", SECRET)
    for args in (
        ["sqs", "--queue-url", "http://127.0.0.1:9/1/q", "--once"],
        ["webhook", "--port", "0"],
    ):
        result = CliRunner().invoke(events_app, args)
        assert result.exit_code == 2, result.output
        assert "REELFLOW_EVENT_BUCKETS is not set" in result.stderr


def test_webhook_refuses_a_short_secret_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret under 32 characters: exit 2 naming the minimum, the secret itself not shown."""
    monkeypatch.setenv("REELFLOW_WEBHOOK_SECRET", "hunter2-is-short")
    result = CliRunner().invoke(events_app, ["webhook", "--port", "0"])
    assert result.exit_code == 2
    assert "at least 32" in result.stderr
    assert "hunter2" not in result.stderr


def test_resequenced_notification_is_one_event(
    prefect_api: str, webhook: str, s3: Any, bucket: str
) -> None:
    """Two notifications of one object version differing only in sequencer: one event id, and
    the server keeps one event (so the trigger starts one run)."""
    key = "in/resequenced.mp4"
    etag = put(s3, bucket, key)
    auth = {"Authorization": f"Bearer {SECRET}"}
    ids = []
    for sequencer in ("0062E99A88DC407460", "0062E99A88DC4074FF"):
        body = minio_body(bucket, key, etag, sequencer=sequencer)
        reply = httpx.post(webhook + "/", content=body, headers=auth, timeout=10)
        assert reply.status_code == 200, reply.text
        ids.extend(reply.json()["event_ids"])
    assert len(ids) == 2 and ids[0] == ids[1] == expected_id(bucket, key, etag)
    sentinel = minio_body(bucket, "in/after.mp4", put(s3, bucket, "in/after.mp4"))
    assert httpx.post(webhook + "/", content=sentinel, headers=auth, timeout=10).status_code == 200
    wait_for(lambda: events_for(prefect_api, bucket, "in/after.mp4"), "the sentinel")
    assert len(events_for(prefect_api, bucket, key)) == 1


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b" " * n
        sent += n


def test_webhook_chunked_body_past_1_mib_is_413(webhook: str, s3: Any, bucket: str) -> None:
    """A chunked body (no Content-Length) of 1 MiB + 1 byte is 413; a notification padded to
    exactly 1 MiB is accepted."""
    auth = {"Authorization": SECRET}
    over = httpx.post(
        webhook + "/", content=_chunks(MAX_WEBHOOK_BODY_BYTES + 1), headers=auth, timeout=30
    )
    assert over.status_code == 413, over.text
    assert "content-length" not in over.request.headers
    body = minio_body(bucket, "in/padded.mp4", put(s3, bucket, "in/padded.mp4"))
    padded = body + b" " * (MAX_WEBHOOK_BODY_BYTES - len(body))

    def exact() -> Iterator[bytes]:
        yield padded[: len(padded) // 2]
        yield padded[len(padded) // 2 :]

    ok = httpx.post(webhook + "/", content=exact(), headers=auth, timeout=30)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["event_ids"]) == 1


def test_webhook_stops_reading_at_the_limit() -> None:
    """An endless chunked body is cut off after the limit plus at most one chunk: the app pulls
    no more from the connection than that (the ASGI receive counts what it handed over)."""
    import asyncio

    class NoSink:
        def emit(self, events: Any) -> None:  # pragma: no cover - must not run
            raise AssertionError(events)

    bridge = Bridge(s3=None, sink=NoSink(), key_filter=KeyFilter(), policy=EventPolicy())
    app = make_webhook_app(bridge, secret=SECRET)
    chunk = b" " * 65536
    handed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal handed
        handed += len(chunk)
        assert handed < 64 * MAX_WEBHOOK_BODY_BYTES, "the app kept reading"
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", SECRET.encode()), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8787),
    }
    asyncio.run(app(scope, receive, send))

    assert sent[0]["status"] == 413
    assert handed <= MAX_WEBHOOK_BODY_BYTES + len(chunk)
