"""The S3 event path end to end: bucket notification → SQS → bridge → Prefect event → trigger →
served ``ingest-video`` run, on real servers only.

moto's S3 + SQS run in this process (the bucket's ObjectCreated notifications land in a queue,
delivered by moto itself), Prefect is a real ``prefect server start`` with its trigger and
scheduler services (the session's, shared with test_cancel), ``reelflow serve`` serves every prefect.yaml deployment in a subprocess, and
the bridge is the ``reelflow s3-events`` CLI in subprocesses. The TikTok sandbox runs in this
process over real HTTP. One stack serves the whole module; each test uses its own keys, and
reads runs back through the Prefect REST API (``POST /flow_runs/filter``) with bounded waits.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from reelflow.tiktok.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from tests.support.files import sha256_file
from tests.support.prefect_server import (
    BIN,
    REPO,
    PrefectServer,
    free_port,
    prefect_api,
    start_process,
    stop_process,
    wait_until_served,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RUN_WAIT_S = 120.0  # event → trigger → runner poll → subprocess → ffmpeg → S3; ~10 s when green
SERVE_WAIT_S = 120.0
BRIDGE_TIMEOUT_S = 90.0  # one --once receive is a long poll of at most 20 s
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
ACCOUNT = "e2e-creator"
WEBHOOK_SECRET = "e2e-webhook-secret-0123456789abcdef"  # the webhook wants >= 32 characters
DEPLOYMENT = "ingest-video/ingest-video"  # flow name / deployment name
# The store shares the bucket (media/), so its own writes are notified too: the bridge watches
# only incoming/, or every stored video would come back as an ingest (and its metadata .json
# would be read as the video's sidecar).
INCOMING = "incoming/"


@dataclass
class Stack:
    """Everything the module's tests share: servers, the queue, and the served deployments."""

    server: PrefectServer
    s3: Any
    sqs: Any
    bucket: str  # notifies the queue; also holds the media store (media/)
    hook_bucket: str  # no notification: objects the webhook tests announce by hand
    queue_url: str
    env: dict[str, str]
    sandbox: RunningSandbox
    deployment_id: str
    logs: Path

    @property
    def api(self) -> str:
        return self.server.api_url

    def runs_for(self, source: str) -> list[dict[str, Any]]:
        """The ingest-video runs whose ``source`` parameter is ``source``."""
        body = {"flow_runs": {"deployment_id": {"any_": [self.deployment_id]}}, "limit": 200}
        reply = prefect_api("POST", f"{self.api}/flow_runs/filter", json=body)
        reply.raise_for_status()
        return [r for r in reply.json() if r["parameters"].get("source") == source]

    def final_run(self, source: str) -> dict[str, Any]:
        """The one run for ``source``, once it reached a final state."""

        def done() -> dict[str, Any] | None:
            runs = self.runs_for(source)
            finished = [r for r in runs if r["state"] and r["state"]["type"] in FINAL]
            return finished[0] if finished else None

        try:
            return wait_for(
                done, f"a finished ingest-video run for {source}", RUN_WAIT_S, poll_s=0.5
            )
        except AssertionError:
            raise AssertionError(f"{source}: runs {self.runs_for(source)}\n{self.tail()}") from None

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in [*sorted(self.logs.glob("*.log")), self.server.log_path]
        )

    def events_for(self, bucket: str, key: str) -> list[dict[str, Any]]:
        body = {"filter": {"resource": {"id": [f"reelflow.s3.{bucket}.{key}"]}}, "limit": 50}
        reply = prefect_api("POST", f"{self.api}/events/filter", json=body)
        reply.raise_for_status()
        return list(reply.json()["events"])

    def queue_depth(self) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def deliver(self) -> list[dict[str, Any]]:
        """Run ``reelflow s3-events sqs --once`` until the queue is empty; the summaries."""
        summaries = []
        deadline = time.monotonic() + BRIDGE_TIMEOUT_S
        while self.queue_depth() != (0, 0):
            assert time.monotonic() < deadline, f"queue not drained: {self.queue_depth()}"
            done = subprocess.run(
                [str(BIN / "reelflow"), "s3-events", "sqs", "--queue-url", self.queue_url]
                + ["--prefix", INCOMING, "--once"],
                env=self.env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=BRIDGE_TIMEOUT_S,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            summaries.append(json.loads(done.stdout.strip().splitlines()[-1]))
        return summaries


def _add_account(sandbox: RunningSandbox, env: dict[str, str]) -> None:
    """A sandbox creator (admin route), stored with `reelflow accounts add` for served runs."""
    created = httpx.post(f"{sandbox.base_url}/_sandbox/accounts", json={"name": ACCOUNT}).json()
    # Tokens through the environment, never argv (the CLI's documented way; keeps them off ps).
    done = subprocess.run(
        [str(BIN / "reelflow"), "accounts", "add", ACCOUNT]
        + ["--open-id", created["open_id"], "--expires-in", str(created["expires_in"])],
        env=env
        | {
            "REELFLOW_TIKTOK_ACCESS_TOKEN": created["access_token"],
            "REELFLOW_TIKTOK_REFRESH_TOKEN": created["refresh_token"],
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(
    prefect_server: PrefectServer, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("event-path")
    logs = root / "logs"
    logs.mkdir()
    endpoint = s3_server.endpoint_url
    s3 = s3_server.client()
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket, hook_bucket = f"rf-ev-{uuid.uuid4().hex[:10]}", f"rf-hook-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=hook_bucket)
    queue_url = sqs.create_queue(QueueName=f"rf-ev-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    server = prefect_server
    with start_sandbox(SandboxConfig(processing_delay_s=0.0), data_dir=root / "sandbox") as sandbox:
        env = server.env(
            REELFLOW_HOME=str(root / "home"),
            REELFLOW_STORE_URL=f"s3://{bucket}/media",
            REELFLOW_S3_ENDPOINT_URL=endpoint,
            REELFLOW_TIKTOK_API_BASE=sandbox.base_url,
            REELFLOW_WEBHOOK_SECRET=WEBHOOK_SECRET,
            # The bridge and the served runs read the same policy: only these folders, and
            # only ACCOUNT under incoming/ (hooked/ may name no account).
            REELFLOW_EVENT_BUCKETS=f"{bucket}/{INCOMING},{hook_bucket}/hooked",
            REELFLOW_EVENT_ACCOUNTS=f"{bucket}/{INCOMING}={ACCOUNT}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        )
        for var in ("REELFLOW_DATABASE_URL", "REELFLOW_SQS_ENDPOINT_URL", "AWS_PROFILE"):
            env.pop(var, None)
        serve = start_process([str(BIN / "reelflow"), "serve"], env, logs / "serve.log", REPO)
        try:
            _add_account(sandbox, env)  # while serve starts: runs read the account when they run
            # A deployment of that name may be left on the shared server by another serve.
            wait_until_served(serve, logs / "serve.log", SERVE_WAIT_S)
            deployment = wait_for(
                lambda: _deployment_with_trigger(server.api_url, serve, logs),
                "reelflow serve to register ingest-video and its trigger",
                SERVE_WAIT_S,
            )
            yield Stack(
                server, s3, sqs, bucket, hook_bucket, queue_url, env, sandbox, deployment, logs
            )
        finally:
            stop_process(serve)


def _deployment_with_trigger(api: str, serve: subprocess.Popen[bytes], logs: Path) -> str | None:
    assert serve.poll() is None, (logs / "serve.log").read_text()[-4000:]
    reply = prefect_api("GET", f"{api}/deployments/name/{DEPLOYMENT}")
    if reply.status_code != 200:
        return None
    dep_id = str(reply.json()["id"])
    automations = prefect_api("GET", f"{api}/automations/related-to/prefect.deployment.{dep_id}")
    if automations.status_code != 200 or not automations.json():
        return None
    return dep_id


# --- (a) a video -> a completed, stored and published run -----------------------------------


def test_video_put_becomes_completed_stored_published_run(stack: Stack, clips: Any) -> None:
    """Sidecar then video under incoming/ → one run named after the file completes, the media
    is under media/videos/, tagged stored with its sha256, and the sidecar's direct post
    reached the sandbox."""
    clip = clips.valid()
    sidecar = {
        "account": ACCOUNT,
        "mode": "direct",
        "privacy_level": "SELF_ONLY",
        "disable_comment": True,
        "brand_organic_toggle": True,
    }
    # The bridge reads the sidecar when the video's notification arrives: sidecar first.
    stack.s3.put_object(
        Bucket=stack.bucket, Key="incoming/first-light.json", Body=json.dumps(sidecar).encode()
    )
    stack.s3.upload_file(str(clip), stack.bucket, "incoming/first-light.mp4")
    source = f"s3://{stack.bucket}/incoming/first-light.mp4"

    stack.deliver()
    run = stack.final_run(source)

    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.tail())
    assert run["name"] == "ingest-first-light.mp4"
    assert {"account:" + ACCOUNT, "mode:direct"} <= set(run["tags"])
    params = run["parameters"]
    assert (params["account"], params["mode"], params["privacy_level"]) == (
        ACCOUNT,
        "direct",
        "SELF_ONLY",
    )
    # Post options reach the run as booleans through the trigger's templates; unset ones null.
    assert (params["disable_comment"], params["brand_organic_toggle"]) == (True, True)
    assert params.get("disable_duet") is None
    sha = sha256_file(clip)
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="media/videos/")
    videos = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".mp4")]
    tagged = [
        k
        for k in videos
        if {"Key": "sha256", "Value": sha}
        in stack.s3.get_object_tagging(Bucket=stack.bucket, Key=k)["TagSet"]
    ]
    assert len(tagged) == 1, videos
    head = stack.s3.head_object(Bucket=stack.bucket, Key=tagged[0])
    assert head["ContentLength"] == clip.stat().st_size
    stats = httpx.get(f"{stack.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    assert stats["posts"] == 1, stats
    [post] = stats["publishes"].values()
    assert (post["post_flags"]["disable_comment"], post["post_flags"]["brand_organic_toggle"]) == (
        True,
        True,
    )
    assert len(stack.runs_for(source)) == 1
    # The run's own writes under media/ were notified as well; the bridge lets none through.
    assert [i for s in stack.deliver() for i in s["event_ids"]] == []


# --- (b) a text file named .mp4 -> a failed run with the validation error --------------------


def test_text_file_named_mp4_fails_with_validation_error(stack: Stack, clips: Any) -> None:
    """A text file wearing a .mp4 name → its run ends FAILED, the state message says why."""
    stack.s3.upload_file(str(clips.bad("text")), stack.bucket, "incoming/notes.mp4")
    source = f"s3://{stack.bucket}/incoming/notes.mp4"

    stack.deliver()
    run = stack.final_run(source)

    assert run["state"]["type"] == "FAILED", run["state"]
    message = run["state"]["message"] or ""
    assert "not a video container" in message, message
    assert run["name"] == "ingest-notes.mp4"
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="media/").get("Contents", [])
    assert not [o["Key"] for o in listed if "notes" in o["Key"]]
    uploads = stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", [])
    assert not [u for u in uploads if "notes" in u["Key"]]


# --- (c) the same notification twice -> one run ---------------------------------------------


def test_same_notification_delivered_twice_starts_one_run(stack: Stack, clips: Any) -> None:
    """moto's own notification body re-sent to the queue → two deliveries, one event, one run."""
    key = "incoming/twice.mp4"
    stack.s3.upload_file(str(clips.valid()), stack.bucket, key)
    body = wait_for(lambda: _peek_body(stack, "twice.mp4"), "moto's notification", 30)
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)

    summaries = stack.deliver()

    ids = [i for s in summaries for i in s["event_ids"]]
    assert len(ids) == 2 and ids[0] == ids[1], summaries
    source = f"s3://{stack.bucket}/{key}"
    run = stack.final_run(source)
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.tail())
    # A later object's run existing means the server has handled both deliveries (in order).
    stack.s3.upload_file(str(clips.bad("text")), stack.bucket, "incoming/after-twice.mp4")
    stack.deliver()
    stack.final_run(f"s3://{stack.bucket}/incoming/after-twice.mp4")
    assert len(stack.events_for(stack.bucket, key)) == 1
    assert len(stack.runs_for(source)) == 1


def _peek_body(stack: Stack, name: str) -> str | None:
    # VisibilityTimeout=0 leaves the message in the queue for the bridge.
    reply = stack.sqs.receive_message(
        QueueUrl=stack.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    bodies = [m["Body"] for m in reply.get("Messages", []) if name in m["Body"]]
    return bodies[0] if bodies else None


# --- (d) the webhook without the secret -> 401, no run --------------------------------------


def _notification(
    bucket: str, key: str, etag: str, size: int, sequencer: str = "0062E99A88DC407460"
) -> dict[str, Any]:
    """A MinIO-style webhook body for one new object (``s3:``-prefixed event name)."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "eventName": "s3:ObjectCreated:Put",
                "eventTime": "2026-01-01T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": key, "size": size, "eTag": etag, "sequencer": sequencer},
                },
            }
        ],
    }


def test_webhook_without_secret_is_401_and_starts_no_run(stack: Stack, clips: Any) -> None:
    """No or a wrong Authorization → 401 and nothing reaches Prefect; the same bridge with the
    secret (another object, the sentinel) does start a run, so the silence is not a dead path."""
    port = free_port()
    hook = start_process(
        [str(BIN / "reelflow"), "s3-events", "webhook", "--host", "127.0.0.1"]
        + ["--port", str(port), "--prefix", "hooked/"],
        stack.env,
        stack.logs / "webhook.log",
        REPO,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: _healthy(url, hook, stack.logs), "the webhook to listen", 60)
        clip = clips.valid()
        bodies = {}
        for key in ("hooked/intruder.mp4", "hooked/sentinel.mp4"):
            etag = stack.s3.put_object(Bucket=stack.hook_bucket, Key=key, Body=clip.read_bytes())
            bodies[key] = _notification(
                stack.hook_bucket, key, etag["ETag"].strip('"'), clip.stat().st_size
            )

        missing = httpx.post(url, json=bodies["hooked/intruder.mp4"], timeout=30)
        wrong = httpx.post(
            url,
            json=bodies["hooked/intruder.mp4"],
            headers={"Authorization": "Bearer not-the-secret"},
            timeout=30,
        )
        sentinel = httpx.post(
            url,
            json=bodies["hooked/sentinel.mp4"],
            headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
            timeout=30,
        )
        # The same object version again, re-sequenced: the same event id, so no second run.
        body = bodies["hooked/sentinel.mp4"]
        body["Records"][0]["s3"]["object"]["sequencer"] = "0062E99A88DC4074FF"
        resequenced = httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"}, timeout=30
        )
    finally:
        stop_process(hook)

    assert missing.status_code == 401 and missing.json() == {"error": "unauthorized"}
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert sentinel.status_code == 200, sentinel.text
    assert resequenced.status_code == 200, resequenced.text
    assert resequenced.json()["event_ids"] == sentinel.json()["event_ids"]
    run = stack.final_run(f"s3://{stack.hook_bucket}/hooked/sentinel.mp4")
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.tail())
    assert run["parameters"]["origin"] == "s3-event"
    assert len(stack.runs_for(f"s3://{stack.hook_bucket}/hooked/sentinel.mp4")) == 1
    assert stack.runs_for(f"s3://{stack.hook_bucket}/hooked/intruder.mp4") == []
    assert stack.events_for(stack.hook_bucket, "hooked/intruder.mp4") == []


def _healthy(url: str, proc: subprocess.Popen[bytes], logs: Path) -> bool:
    assert proc.poll() is None, (logs / "webhook.log").read_text()[-3000:]
    try:
        return httpx.get(f"{url}healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- (e) an event posted straight to the Prefect API -> the run refuses it -------------------


def _forge(stack: Stack, source: str, **payload: Any) -> None:
    """What anyone who can reach POST /api/events can send: no bridge, any payload."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "reelflow.s3.object.created",
        "resource": {"prefect.resource.id": f"reelflow.s3.forged.{uuid.uuid4().hex}"},
        "payload": {
            **dict.fromkeys(
                ("account", "caption", "privacy_level", "mode", "publish_at", "options_error")
            ),
            "source": source,
            "origin": "manual",
            **payload,
        },
    }
    prefect_api("POST", f"{stack.api}/events", json=[event]).raise_for_status()


def test_forged_events_start_runs_that_refuse_them(stack: Stack, clips: Any) -> None:
    """Repro: events posted to the Prefect API naming a worker-local file (a valid clip) or an
    account the bucket/prefix may not use: the trigger starts the runs (origin s3-event, which
    the payload cannot change) and each fails validation; nothing is stored or posted."""
    local = str(clips.valid())
    foreign = f"s3://{stack.hook_bucket}/hooked/forged.mp4"
    posts_before = httpx.get(f"{stack.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    _forge(stack, local)
    _forge(stack, foreign, account=ACCOUNT, mode="direct", privacy_level="PUBLIC_TO_EVERYONE")

    local_run = stack.final_run(local)
    foreign_run = stack.final_run(foreign)

    assert local_run["state"]["type"] == "FAILED", local_run["state"]
    assert "reads only s3:// sources" in (local_run["state"]["message"] or "")
    assert local_run["parameters"]["origin"] == "s3-event"
    assert foreign_run["state"]["type"] == "FAILED", foreign_run["state"]
    assert f"account '{ACCOUNT}' is not allowed" in (foreign_run["state"]["message"] or "")
    posts_after = httpx.get(f"{stack.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    assert posts_after["posts"] == posts_before["posts"]
    for run in (local_run, foreign_run):
        # Refused at the top of the flow: not one task (validate, upload, ...) ever ran.
        body = {"flow_runs": {"id": {"any_": [run["id"]]}}}
        tasks = prefect_api("POST", f"{stack.api}/task_runs/filter", json=body)
        tasks.raise_for_status()
        assert tasks.json() == [], tasks.json()
