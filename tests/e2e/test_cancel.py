"""Cancelling a served ingest-video run through the API, the way the UI's Cancel button does.

Real parts only: a ``prefect server start`` (the session's, shared with test_event_path),
``reelflow serve --only ingest-video`` in a subprocess (Prefect's runner owns the run's process and its cancellation), moto's S3 in this
process, the catalog on SQLite. moto answers a 5 MiB part in milliseconds, so a 100 MiB upload
would be over before a cancel lands: this test slows every UploadPart down by holding the
request in the in-process server before moto sees it (a slow S3, which moto cannot produce).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from reelflow.planning import MIB
from storage import stages
from storage.catalog import UploadSession, make_engine
from storage.leases import Lease
from tests.support.prefect_server import (
    BIN,
    REPO,
    PrefectServer,
    prefect_api,
    start_process,
    stop_process,
    wait_until_served,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

CHUNK = 5 * MIB
CONCURRENCY = 1
PART_DELAY_S = 0.5  # per UploadPart while the first run uploads: ~10 s for 20 parts
SERVE_WAIT_S = 120.0
RUN_WAIT_S = 180.0
CANCEL_WAIT_S = 60.0  # the runner's SIGTERM grace is 30 s before SIGKILL
PROMPT_S = 10.0  # the last part request after the cancel request, at the latest
QUIET_S = 3.0
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


class Served:
    """A Prefect server and `reelflow serve --only ingest-video` against one bucket."""

    def __init__(self, server: PrefectServer, deployment_id: str, logs: Path) -> None:
        self.server = server
        self.api = server.api_url
        self.deployment_id = deployment_id
        self.logs = logs

    def run(self, parameters: dict[str, Any]) -> str:
        reply = prefect_api(
            "POST",
            f"{self.api}/deployments/{self.deployment_id}/create_flow_run",
            json={"parameters": parameters},
        )
        reply.raise_for_status()
        return str(reply.json()["id"])

    def read(self, run_id: str) -> dict[str, Any]:
        reply = prefect_api("GET", f"{self.api}/flow_runs/{run_id}")
        reply.raise_for_status()
        run: dict[str, Any] = reply.json()
        return run

    def state(self, run_id: str) -> str | None:
        state = self.read(run_id)["state"]
        return state["type"] if state else None

    def cancel(self, run_id: str) -> None:
        reply = prefect_api(
            "POST",
            f"{self.api}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING"}, "force": True},
        )
        reply.raise_for_status()
        assert reply.json()["status"] == "ACCEPT", reply.json()

    def final(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        try:
            wait_for(lambda: self.state(run_id) in FINAL, f"run {run_id} to finish", timeout_s)
        except AssertionError:
            raise AssertionError(f"{self.read(run_id)['state']}\n{self.tail()}") from None
        return self.read(run_id)

    def lines(self, needle: str) -> list[str]:
        return [ln for ln in (self.logs / "serve.log").read_text().splitlines() if needle in ln]

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}"
            for p in [*sorted(self.logs.glob("*.log")), self.server.log_path]
        )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def served(
    prefect_server: PrefectServer, s3_server: Any, bucket: str, home: Path, tmp_path: Path
) -> Iterator[Served]:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = prefect_server.env(
        REELFLOW_HOME=str(home),
        REELFLOW_STORE_URL=f"s3://{bucket}/media",
        REELFLOW_S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
    )
    for var in ("REELFLOW_DATABASE_URL", "REELFLOW_CHUNK_SIZE_BYTES", "AWS_PROFILE"):
        env.pop(var, None)
    cmd = [str(BIN / "reelflow"), "serve", "--only", "ingest-video"]
    serve = start_process(cmd, env, logs / "serve.log", REPO)
    try:
        wait_until_served(serve, logs / "serve.log", SERVE_WAIT_S)
        reply = prefect_api(
            "GET", f"{prefect_server.api_url}/deployments/name/ingest-video/ingest-video"
        )
        reply.raise_for_status()
        yield Served(prefect_server, str(reply.json()["id"]), logs)
    finally:
        stop_process(serve)


class SlowParts:
    """Holds each UploadPart request ``delay_s`` in the in-process server; logs when each came."""

    def __init__(self, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.delay_s = 0.0
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        count = s3_server.state.count

        def slow_count(request: Any) -> None:
            count(request)
            if request.op == "UploadPart":
                with self._lock:
                    self.arrivals.append(time.monotonic())
                time.sleep(self.delay_s)

        monkeypatch.setattr(s3_server.state, "count", slow_count)


def parts_listed(s3: Any, bucket: str) -> tuple[dict[str, Any], int] | None:
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if not uploads:
        return None
    up = uploads[0]
    listed = s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    return up, len(listed.get("Parts", []))


def test_cancel_stops_uploads_records_it_and_a_rerun_resumes(
    served: Served,
    s3_server: Any,
    bucket: str,
    home: Path,
    clips: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancel mid-upload → CANCELLED, no more parts, the session says "cancel", the lease is
    free, the multipart upload is kept; a second run sends only the missing parts."""
    clip = clips.large(100 * MIB)
    parts_total = math.ceil(clip.stat().st_size / CHUNK)
    params = {"source": str(clip), "chunk_size_bytes": CHUNK, "concurrency": CONCURRENCY}
    s3 = s3_server.client()
    slow = SlowParts(s3_server, monkeypatch)
    slow.delay_s = PART_DELAY_S

    first = served.run(params)
    wait_for(
        lambda: (p := parts_listed(s3, bucket)) is not None and p[1] >= 2,
        "two parts in ListParts",
        RUN_WAIT_S,
    )
    assert served.state(first) == "RUNNING"
    cancelled_at = time.monotonic()
    served.cancel(first)

    run = served.final(first, CANCEL_WAIT_S)
    assert run["state"]["type"] == "CANCELLED", (run["state"], served.tail())
    took_s = time.monotonic() - cancelled_at
    sent = s3_server.stats().get("UploadPart", 0)
    time.sleep(QUIET_S)
    assert s3_server.stats().get("UploadPart", 0) == sent, "parts still arriving after CANCELLED"
    last_part_after_s = slow.arrivals[-1] - cancelled_at
    assert last_part_after_s < PROMPT_S, (last_part_after_s, took_s)

    # The upload is kept for a resume: the store still has it, with what was sent so far.
    up, done_before = parts_listed(s3, bucket) or ({}, 0)
    assert up, "the multipart upload was aborted; a later run could not resume it"
    assert 2 <= done_before < parts_total, (done_before, parts_total)

    # The catalog says what happened and frees the source for the next run.
    engine = make_engine(f"sqlite:///{home / 'catalog.db'}")
    with Session(engine) as db:
        [session] = db.exec(select(UploadSession)).all()
        leases = db.exec(select(Lease)).all()
    assert session.upload_id == up["UploadId"]
    assert session.status == "open"
    # Written by the flow's on_cancellation hook (record_interruption), which Prefect's runner
    # calls in the serve process after it stopped the run's process; it finds the session
    # through the lease the run still holds, notes the cancellation and releases the lease.
    hook_log = served.lines("record_interruption")
    assert "cancel" in (session.error or "").lower(), (session.error, leases, hook_log)
    assert [(lease.owner, lease.session_id) for lease in leases] == [(None, session.id)]
    assert "cancel" in (leases[0].note or ""), leases
    # The stage log shows it too: receiving (a deployment's run), then cancelled.
    rows = stages.for_run(engine, session.id)
    assert [row.stage for row in rows] == ["receiving", "cancelled"], rows
    assert rows[0].origin == "deployment" and rows[1].reason == "run_cancelled"

    # A second run of the same source resumes: only the missing parts (+ one in flight) go.
    slow.delay_s = 0.0
    s3_server.reset_stats()
    second = served.run(params)
    done = served.final(second, RUN_WAIT_S)
    assert done["state"]["type"] == "COMPLETED", (done["state"], served.tail())
    resent = s3_server.stats().get("UploadPart", 0)
    assert resent <= (parts_total - done_before) + CONCURRENCY, (resent, parts_total, done_before)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with Session(engine) as db:
        [session] = db.exec(select(UploadSession)).all()
    assert session.status == "completed"
    logged = [row.stage for row in stages.for_run(engine, session.id)]
    assert logged[-2:] == ["storing", "stored"], logged
