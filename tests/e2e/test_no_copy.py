"""Ingest without a second copy of the video: uploaded at its final key, checked by S3's
full-object CRC64NVME, tagged stored once recorded (moto's S3 server, a real Prefect API).

A part corrupted after the client read it is caught by the whole-object CRC; a run killed
between assembly and the store step resumes without sending a byte again; what such a run
leaves behind and nobody comes back for is swept by the janitor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.ingest import _ingest, ingest_video, summarize
from reelflow.errors import IntegrityCheckError
from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.janitor import sweep
from storage.runtime import Runtime

pytestmark = pytest.mark.usefixtures("prefect_api")
REPO = Path(__file__).resolve().parents[2]
CHUNK = 5 * MIB


def _tags(s3: Any, bucket: str, key: str) -> dict[str, str]:
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tags}


def _keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_s3_ingest_copies_nothing_and_tags_the_video_stored(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """No CopyObject: the video is where it was uploaded, its CRC checked, its SHA-256 on it."""
    clip = clips.medium(12 * MIB)
    s3_server.reset_stats()
    summary = ingest_video(source=str(clip), chunk_size_bytes=CHUNK, concurrency=2)
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    key = summary["video_uri"].removeprefix(f"s3://{bucket}/")
    stats = s3_server.stats()
    assert "CopyObject" not in stats and "UploadPartCopy" not in stats, stats
    assert stats["CompleteMultipartUpload"] == 1 and stats["PutObjectTagging"] == 1, stats
    assert _tags(s3_server.client(), bucket, key) == {"reelflow-state": "stored", "sha256": sha}
    stem = key.rsplit(".", 1)[0]
    assert _keys(s3_server.client(), bucket) == {f"{stem}.mp4", f"{stem}.jpg", f"{stem}.json"}


def test_same_content_from_another_source_keeps_the_first_copy(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, tmp_path: Path
) -> None:
    """A copy of a stored video under another name: its upload is deleted, one media, one mp4."""
    clip = clips.medium(6 * MIB)
    first = ingest_video(source=str(clip), chunk_size_bytes=CHUNK)
    copy = tmp_path / "the same bytes.mp4"
    copy.write_bytes(clip.read_bytes())
    second = ingest_video(source=str(copy), chunk_size_bytes=CHUNK)
    assert second["media_id"] == first["media_id"]
    assert second["video_uri"] == first["video_uri"]
    videos = [k for k in _keys(s3_server.client(), bucket) if k.endswith(".mp4")]
    assert videos == [first["video_uri"].removeprefix(f"s3://{bucket}/")]
    assert len([k for k in _keys(s3_server.client(), bucket) if k.endswith(".jpg")]) == 1


class CorruptingStore:
    """The real S3 store; part 2's bytes are changed after the client read (and hashed) them,
    before the store computes the part's checksum: a fault of memory or of a proxy that the
    per-part check cannot see, and only the whole-object CRC can."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upload_part(self, key: str, upload_id: str, chunk: Any, data: Any, sha: str) -> Any:
        if chunk.part_number == 2:
            data = bytearray(data)  # a copy: the pipeline's buffer is still being hashed
            data[100] ^= 0xFF
        return self.inner.upload_part(key, upload_id, chunk, data, sha)


def test_part_corrupted_after_hashing_is_refused_by_the_whole_object_crc(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """IntegrityCheckError (terminal: one Complete, no retry), no object, no upload, no media,
    the session aborted."""
    clip = clips.medium(12 * MIB)
    base = Runtime.from_settings(Settings())
    rt = dataclasses.replace(base, store=CorruptingStore(base.store))  # type: ignore[arg-type]

    @flow(name="corrupted-part-ingest")
    def run() -> dict[str, Any]:
        return summarize(_ingest(str(clip), rt, CHUNK, 2), rt)

    s3_server.reset_stats()
    with pytest.raises(IntegrityCheckError, match="CRC64NVME"):
        run()
    s3 = s3_server.client()
    assert s3_server.stats()["CompleteMultipartUpload"] == 1
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert _keys(s3, bucket) == set()
    assert base.catalog.list_media() == []
    [session] = [s for s in base.catalog.list_sessions() if s.store_url == s3_env]
    assert session.status == "aborted" and "CRC64NVME" in (session.error or "")


_KILL_BEFORE_STORE = """
import os, signal, sys
import flows.ingest as ingest
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # assembled and verified; the store step never ran
ingest.store_media = die
ingest.ingest_video(source=sys.argv[1], chunk_size_bytes=5 * 1024 * 1024, concurrency=2)
"""


def _kill_before_store(clip: Path, prefect_api: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILL_BEFORE_STORE, str(clip)],
        cwd=REPO,
        env=os.environ | {"PREFECT_API_URL": prefect_api},
        timeout=300,
        capture_output=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def test_kill_between_assembly_and_store_resumes_without_sending(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, prefect_api: str
) -> None:
    """The completed object waits at its final key, pending; the re-run sends nothing, copies
    nothing, and tags that same object stored."""
    clip = clips.medium(12 * MIB)
    _kill_before_store(clip, prefect_api)
    s3 = s3_server.client()
    [pending] = [k for k in _keys(s3, bucket) if k.endswith(".mp4")]
    assert _tags(s3, bucket, pending) == {"reelflow-state": "pending"}
    s3_server.reset_stats()
    summary = ingest_video(source=str(clip), chunk_size_bytes=CHUNK, concurrency=2)
    stats = s3_server.stats()
    assert summary["chunks_uploaded_this_run"] == 0
    for op in ("UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload", "CopyObject"):
        assert stats.get(op, 0) == 0, (op, stats)
    assert summary["video_uri"] == f"s3://{bucket}/{pending}"
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert _tags(s3, bucket, pending) == {"reelflow-state": "stored", "sha256": sha}


def test_janitor_sweeps_a_completed_video_nobody_recorded(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, prefect_api: str
) -> None:
    """Killed before the store step and never resumed: past the TTL (and the dead run's lease)
    the pending object and its session go; a stored video and its sidecars stay."""
    kept = ingest_video(source=str(clips.medium(6 * MIB)), chunk_size_bytes=CHUNK)
    _kill_before_store(clips.medium(12 * MIB), prefect_api)
    s3 = s3_server.client()
    stem = kept["video_uri"].removeprefix(f"s3://{bucket}/").rsplit(".", 1)[0]
    stored = {k for k in _keys(s3, bucket) if k.startswith(stem)}
    [orphan] = [k for k in _keys(s3, bucket) - stored if k.endswith(".mp4")]
    rt = Runtime.from_settings(Settings())
    ttl = timedelta(hours=1)
    assert not [f for f in sweep(rt, upload_ttl=ttl, results_dir=None, dry_run=True)
                if f.kind == "unreferenced_object"]  # fmt: skip
    later = datetime.now(UTC) + 2 * ttl  # the TTL passed and the dead run's lease expired
    found = sweep(rt, upload_ttl=ttl, results_dir=None, dry_run=False, now=later)
    swept = {f.what for f in found if f.kind == "unreferenced_object"}
    thumb = orphan.rsplit(".", 1)[0] + ".jpg"
    assert swept == {orphan.removeprefix("media/"), thumb.removeprefix("media/")}
    assert "session" in {f.kind for f in found}
    assert _keys(s3, bucket) == stored and len(stored) == 3
