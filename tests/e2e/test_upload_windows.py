"""The upload-window task unit: one task run per window of parts, the ledger, the fence and the
progress still per part; a re-run finds sent windows ``Cached``, a retry or a resume sends
exactly the parts the store has no receipt for (counted on moto's server)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.runtime import flow_run as current_flow_run

from flows.chunk_pipeline import send_source
from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.runtime import Runtime
from tasks.chunk_upload import open_upload_session
from tasks.validate import validate_video

CHUNK = 5 * MIB
RECORDED_WAIT_S = 60.0  # task-run states reach the API's database a little after the run
KILL_DEADLINE_S = 300


def window_runs(api: str, flow_run_id: str, expected: int) -> list[dict[str, Any]]:
    """The flow run's upload-window task runs once ``expected`` of them are recorded in a
    final state (bounded wait: the server writes states from its event stream)."""
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    deadline = time.monotonic() + RECORDED_WAIT_S
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        resp = httpx.post(f"{api}/task_runs/filter", json=body, timeout=30)
        resp.raise_for_status()
        runs = [r for r in resp.json() if r["name"].startswith("upload-window-")]
        final = [r for r in runs if r["state"] and r["state"]["type"] in ("COMPLETED", "FAILED")]
        if len(final) >= expected:
            return runs
        time.sleep(0.2)
    return runs


def put_parts(s3_server: Any) -> Counter[int]:
    return Counter(
        r.part_number for r in s3_server.requests() if r.op == "UploadPart" and r.status == 200
    )


def test_a_rerun_shows_every_window_cached_sends_nothing_and_reports_each_part(
    s3_env: str, s3_server: Any, clips: Any, prefect_api: str
) -> None:
    """Run 1 sends all parts window by window; run 2 (a new flow run over the same upload,
    killed before assemble in real life) has every window ``Cached`` and no UploadPart; both
    report progress once per part, in order."""
    clip = clips.medium(40 * MIB)
    rt = Runtime.from_settings(Settings())
    progress: list[tuple[int, int]] = []

    @flow(name="send-windows")
    def run() -> Any:
        checked = validate_video(str(clip), rt)
        state = open_upload_session(checked.source, checked.meta, CHUNK, rt, concurrency=2)
        sent = send_source(
            checked.source,
            state,
            rt,
            concurrency=2,
            on_progress=lambda done, total: progress.append((done, total)),
            window_bytes=3 * CHUNK,
        )
        return str(current_flow_run.id), state, sent

    s3_server.reset_stats()
    first_id, state, first = run()
    parts = state.plan.count
    windows = math.ceil(parts / 3)
    assert parts >= 7 and first.chunks_uploaded == parts
    assert put_parts(s3_server) == Counter(range(1, parts + 1))  # each part once
    assert progress == [(i, parts) for i in range(1, parts + 1)]
    assert len(window_runs(prefect_api, first_id, windows)) == windows

    s3_server.reset_stats()
    progress.clear()
    second_id, _, second = run()
    assert s3_server.stats().get("UploadPart", 0) == 0
    assert second.chunks_uploaded == 0 and second.chunks_already_stored == parts
    assert second.sha256_hex == first.sha256_hex
    assert progress == [(i, parts) for i in range(1, parts + 1)]
    runs = window_runs(prefect_api, second_id, windows)
    assert sorted(r["state"]["name"] for r in runs) == ["Cached"] * windows


def test_a_retried_window_resends_only_the_part_that_failed(
    s3_env: str, s3_server: Any, clips: Any, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 2's PUT fails (500) twice; the window's task retries twice and sends part 2 a
    third time, and never parts 1 or 3 again."""
    from flows.ingest import ingest_video
    from tasks.chunk_upload import upload_window

    clip = clips.medium(12 * MIB)
    monkeypatch.setenv("REELFLOW_S3_MAX_ATTEMPTS", "1")  # each task attempt is one PUT
    monkeypatch.setattr(upload_window, "retry_delay_seconds", 0)
    s3_server.reset_stats()
    s3_server.set_faults([{"op": "UploadPart", "part_numbers": [2], "kind": "500", "times": 2}])
    try:
        state = ingest_video(
            source=str(clip), chunk_size_bytes=CHUNK, concurrency=2, return_state=True
        )
    finally:
        s3_server.set_faults([])
    summary = state.result()
    assert summary["chunks_total"] == 3 and summary["chunks_uploaded_this_run"] == 3
    attempts = Counter(r.part_number for r in s3_server.requests() if r.op == "UploadPart")
    assert attempts == Counter({1: 1, 2: 3, 3: 1})
    runs = window_runs(prefect_api, str(state.state_details.flow_run_id), 1)
    assert [(r["state"]["name"], r["run_count"]) for r in runs] == [("Completed", 3)]


def reelflow_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reelflow"), *args]


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_window_resumes_with_exactly_the_missing_parts(
    prefect_api: str, s3_server: Any, bucket: str, clips: Any, tmp_path: Path
) -> None:
    """SIGKILL the ingest process once ≥ 3 parts of its first 12-part window are stored; the
    ledger holds no part the store lacks, and the re-run sends each part ListParts does not
    show exactly once, and no other."""
    clip = clips.large(100 * MIB)
    parts_total = math.ceil(clip.stat().st_size / CHUNK)
    env = os.environ | {
        "REELFLOW_HOME": str(tmp_path / "home"),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "REELFLOW_TASK_WINDOW_BYTES": str(12 * CHUNK),
        "PREFECT_API_URL": prefect_api,
    }
    cmd = reelflow_cmd(
        "ingest", str(clip), "--chunk-size", str(CHUNK), "--concurrency", "2", "--json"
    )
    s3 = s3_server.client()
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while True:
            uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            if uploads:
                up = uploads[0]
                listed = s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                if len(listed.get("Parts", [])) >= 3:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no 3 parts in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(1.0)  # a PUT whose body had fully arrived finishes on the server
    up = s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
    stored = {
        p["PartNumber"]
        for p in s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])["Parts"]
    }
    assert 3 <= len(stored) < 12  # the kill landed inside the first window
    rt = Runtime.from_settings(
        Settings(
            home=tmp_path / "home",
            store_url=f"s3://{bucket}/media",
            s3_endpoint_url=s3_server.endpoint_url,
        )
    )
    assert set(rt.catalog.ledger_parts(up["UploadId"])) <= stored  # written after the ack

    s3_server.reset_stats()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    missing = set(range(1, parts_total + 1)) - stored
    assert put_parts(s3_server) == Counter(missing)
    assert s3_server.stats().get("UploadPart", 0) == len(missing)
    assert set(rt.catalog.ledger_parts(up["UploadId"])) == set(range(1, parts_total + 1))
