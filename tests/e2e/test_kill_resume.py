"""Kill test: SIGKILL a real `reelflow ingest` mid-upload, run it again, and it resumes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reelflow.planning import MIB

CHUNK = 5 * MIB
CONCURRENCY = 2
KILL_DEADLINE_S = 300


def reelflow_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reelflow"), *args]


@pytest.mark.slow
def test_sigkill_mid_upload_resumes_without_resending(
    prefect_api: str, s3_server: Any, bucket: str, clips: Any, tmp_path: Path
) -> None:
    """≥ 3 parts in the store → SIGKILL → re-run sends only what is missing (+ in-flight)."""
    clip = clips.large(100 * MIB)
    size = clip.stat().st_size
    parts_total = math.ceil(size / CHUNK)
    env = os.environ | {
        "REELFLOW_HOME": str(tmp_path / "home"),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "PREFECT_API_URL": prefect_api,
    }
    cmd = reelflow_cmd(
        "ingest", str(clip), "--chunk-size", str(CHUNK), "--concurrency", str(CONCURRENCY), "--json"
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
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its ephemeral helpers, like a dead box
        proc.wait(timeout=30)
    # A part the server had fully received may still land after this count; that only makes
    # the second run send fewer parts than the bound below allows, never more.
    up = s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
    done_before = len(s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])["Parts"])
    assert 3 <= done_before < parts_total

    s3_server.reset_stats()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    sent = s3_server.stats().get("UploadPart", 0)
    assert sent <= (parts_total - done_before) + CONCURRENCY, (sent, parts_total, done_before)
    assert summary["chunks_uploaded_this_run"] <= parts_total - done_before + CONCURRENCY
    assert summary["chunks_total"] == parts_total

    h = hashlib.sha256()
    stored_key = summary["video_uri"].removeprefix(f"s3://{bucket}/")  # its final key
    body = s3.get_object(Bucket=bucket, Key=stored_key)["Body"]
    for block in body.iter_chunks(4 * MIB):
        h.update(block)
    with clip.open("rb") as fh:
        assert h.hexdigest() == hashlib.file_digest(fh, "sha256").hexdigest() == summary["sha256"]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
