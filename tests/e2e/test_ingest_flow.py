"""The ingest-video flow end to end on real parts: ffmpeg, local store / moto S3, SQLite /
PostgreSQL, a real Prefect API."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import ffmpeg
import pytest

from flows.ingest import ingest_video
from reelflow.credentials import sealed
from reelflow.planning import MIB
from tests.support import refusals
from tests.support.files import sha256_file

pytestmark = pytest.mark.usefixtures("prefect_api")


def local_files(home: Path) -> list[str]:
    root = home / "objects"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def artifacts_for(api_url: str, flow_run_id: Any) -> list[dict[str, Any]]:
    """Read a run's artifacts straight from the Prefect REST API."""
    import httpx

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 50, "offset": 0}
    resp = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30)
    resp.raise_for_status()
    return list(resp.json())


def stem_of(uri: str) -> str:
    """The stored video's key stem: its upload session's id (uploaded at its final key)."""
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert stem.startswith("u_"), uri
    return stem


def test_ingest_on_local_store_and_sqlite(home: Path, clips: Any, prefect_api: str) -> None:
    """A valid clip ends up at its final key with thumbnail + metadata; staging is cleaned."""
    clip = clips.valid()
    state = ingest_video(source=str(clip), return_state=True)
    summary = state.result()
    sha = sha256_file(clip)
    assert summary["sha256"] == sha
    assert summary["media_id"] == f"m_{sha[:20]}"
    assert (summary["width"], summary["height"], summary["video_codec"]) == (720, 1280, "h264")
    assert summary["has_audio"] is True and summary["content_type"] == "video/mp4"
    assert summary["chunks_uploaded_this_run"] == summary["chunks_total"] >= 1
    assert summary["bytes_uploaded_this_run"] == clip.stat().st_size
    stem = stem_of(summary["video_uri"])
    assert local_files(home) == [f"videos/{stem}.{e}" for e in ("jpg", "json", "mp4")]
    stored = home / "objects" / "videos" / f"{stem}.mp4"
    assert sha256_file(stored) == sha
    thumb = ffmpeg.probe(str(home / "objects" / "videos" / f"{stem}.jpg"))["streams"][0]
    assert thumb["width"] == 640
    meta = json.loads((home / "objects" / "videos" / f"{stem}.json").read_text())
    assert meta["media_id"] == summary["media_id"] and meta["fps"] == 30.0
    kinds = {a["type"]: a for a in artifacts_for(prefect_api, state.state_details.flow_run_id)}
    assert kinds["progress"]["data"] == 100.0
    assert summary["media_id"] in kinds["markdown"]["data"] and sha in kinds["markdown"]["data"]


def test_same_content_twice_is_stored_once(home: Path, clips: Any, tmp_path: Path) -> None:
    """Re-ingesting the same path sends nothing; a copy elsewhere maps to the same media_id."""
    clip = clips.valid()
    first = ingest_video(source=str(clip))
    again = ingest_video(source=str(clip))
    assert again["media_id"] == first["media_id"]
    assert again["chunks_uploaded_this_run"] == 0 and again["bytes_uploaded_this_run"] == 0
    copy = tmp_path / "renamed copy.mp4"
    shutil.copyfile(clip, copy)
    third = ingest_video(source=str(copy))
    assert third["media_id"] == first["media_id"]
    assert len([f for f in local_files(home) if f.endswith(".mp4")]) == 1
    assert not any(f.startswith(("staging/", ".uploads/")) for f in local_files(home))


def test_ingest_to_s3_with_postgres_catalog(
    s3_env: str,
    s3_server: Any,
    bucket: str,
    pg_url: str,
    clips: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Multipart upload to moto's S3 server, ledger in PostgreSQL, nothing left pending."""
    monkeypatch.setenv("REELFLOW_DATABASE_URL", pg_url)
    clip = clips.medium(12 * MIB)
    s3_server.reset_stats()
    summary = ingest_video(source=str(clip), chunk_size_bytes=5 * MIB, concurrency=3)
    sha = sha256_file(clip)
    assert summary["chunks_total"] == 3 and summary["chunks_uploaded_this_run"] == 3
    stem = stem_of(summary["video_uri"])
    assert summary["video_uri"] == f"s3://{bucket}/media/videos/{stem}.mp4"
    s3 = s3_server.client()
    body = s3.get_object(Bucket=bucket, Key=f"media/videos/{stem}.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"media/videos/{stem}.{e}" for e in ("mp4", "jpg", "json")}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_server.stats().get("UploadPart") == 3

    from storage.catalog import Catalog, make_engine

    media = Catalog(make_engine(pg_url)).get_media(summary["media_id"])
    assert media is not None and media.video_key == f"videos/{stem}.mp4"


def test_s3_and_http_sources_are_read_without_download(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """s3://bucket/key and a presigned http URL both ingest to the same media."""
    clip = clips.valid()
    s3 = s3_server.client()
    s3.upload_file(str(clip), bucket, "inbox/clip.mp4")
    from_s3 = ingest_video(source=f"s3://{bucket}/inbox/clip.mp4")
    assert from_s3["sha256"] == sha256_file(clip)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "inbox/clip.mp4"}
    )
    # A presigned URL carries credentials: the caller seals them, so the flow parameter holds
    # only the public form (reelflow.credentials), as the CLI does.
    with sealed(url) as src:
        from_http = ingest_video(source=src.public, source_secret=src.ref)
    assert from_http["media_id"] == from_s3["media_id"]


def test_transient_s3_faults_are_retried(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, prefect_api: str
) -> None:
    """5xx and connection resets on some parts, one outlasting botocore's own retries: still done."""
    clip = clips.medium(12 * MIB)
    s3_server.reset_stats()
    since = refusals.now()
    s3_server.set_faults(
        [
            {"op": "UploadPart", "part_numbers": [1], "kind": "500", "times": 2},
            {"op": "UploadPart", "part_numbers": [2], "kind": "reset", "times": 1},
            # more failures than botocore's 5 attempts: the Prefect task retry takes over
            {"op": "UploadPart", "part_numbers": [3], "kind": "503", "times": 6},
        ]
    )
    try:
        summary = ingest_video(source=str(clip), chunk_size_bytes=5 * MIB, concurrency=2)
    finally:
        s3_server.set_faults([])
    assert summary["sha256"] == sha256_file(clip)
    assert s3_server.stats()["UploadPart"] >= 3 + 2 + 1 + 6
    # The detector the refusal tests rely on sees this retry (so theirs can fail).
    with pytest.raises(AssertionError):
        refusals.assert_no_retry_spent(prefect_api, since)
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_exhausted_retries_keep_the_upload_for_the_next_run(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that keeps failing fails the run but keeps the multipart upload; the next run
    sends only the parts ListParts does not show and completes."""
    from reelflow.errors import TransientStorageError
    from tasks.chunk_upload import upload_window

    clip = clips.medium(12 * MIB)
    # One botocore attempt per task attempt, five task attempts: six failures outlast both.
    monkeypatch.setenv("REELFLOW_S3_MAX_ATTEMPTS", "1")
    # What counts here is that the task's retries run out, not how long it waits between them
    # (1 + 2 + 4 + 8 s of backoff, all of this test's time): the same five attempts, no waits.
    monkeypatch.setattr(upload_window, "retry_delay_seconds", 0)
    s3_server.set_faults([{"op": "UploadPart", "part_numbers": [2], "kind": "500", "times": 6}])
    try:
        with pytest.raises(TransientStorageError):
            ingest_video(source=str(clip), chunk_size_bytes=5 * MIB, concurrency=1)
    finally:
        s3_server.set_faults([])
    s3 = s3_server.client()
    pending = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert len(pending) == 1
    kept = s3.list_parts(Bucket=bucket, Key=pending[0]["Key"], UploadId=pending[0]["UploadId"])
    # Part 1 is in; part 2 never got in; part 3 may have (its task starts while 2 retries:
    # concurrency 1 means one UploadPart on the wire at a time, not one task).
    stored = [p["PartNumber"] for p in kept["Parts"]]
    assert stored in ([1], [1, 3]), stored
    s3_server.reset_stats()
    summary = ingest_video(source=str(clip), chunk_size_bytes=5 * MIB, concurrency=1)
    missing = 3 - len(stored)
    assert s3_server.stats()["UploadPart"] == missing  # what the store held is not sent again
    assert summary["chunks_uploaded_this_run"] == missing and summary["chunks_total"] == 3
    assert summary["sha256"] == sha256_file(clip)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_structlog_events_reach_the_prefect_run_logs(
    home: Path, clips: Any, prefect_api: str
) -> None:
    """Step events (with upload_id / media_id bound) are in the flow run's logs on the API."""
    import httpx

    state = ingest_video(source=str(clips.valid()), return_state=True)
    run_id = str(state.state_details.flow_run_id)
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "offset": 0}
    messages = ""
    for _ in range(50):  # logs are shipped in batches; bounded wait for the batch to land
        resp = httpx.post(f"{prefect_api}/logs/filter", json=body, timeout=30)
        resp.raise_for_status()
        messages = "\n".join(log["message"] for log in resp.json())
        if "ingest_completed" in messages:
            break
        import time

        time.sleep(0.2)
    assert "upload_assembled" in messages and "upload_id=" in messages
    assert "ingest_completed" in messages and "media_id=m_" in messages


def test_public_base_url_and_presigned_links(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without REELFLOW_PUBLIC_BASE_URL links are the store URIs (never presigned URLs, whose
    credentials would be persisted); with it, they are CDN URLs built from the stored key."""
    clip = clips.valid()
    summary = ingest_video(source=str(clip))
    assert summary["video_url"] == summary["video_uri"] and "X-Amz" not in str(summary)
    assert summary["video_uri"].startswith(f"s3://{bucket}/")
    monkeypatch.setenv("REELFLOW_PUBLIC_BASE_URL", "https://cdn.example.com/reels/")
    again = ingest_video(source=str(clip))
    stem = stem_of(summary["video_uri"])
    assert again["video_url"] == f"https://cdn.example.com/reels/videos/{stem}.mp4"
    assert again["thumbnail_url"] == f"https://cdn.example.com/reels/videos/{stem}.jpg"
