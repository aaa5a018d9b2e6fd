"""Virus scanning end to end: `reelflow ingest` with a real clamd between assemble and store.

The "virus" is the marker of tests/support/clamd.py, carried inside a valid MP4 (a top-level
``free`` box at the end, which every MP4 reader skips), so the video passes validation and only
the scan can refuse it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reelflow.cli import app
from tests.support.clamd import MARKER, SIGNATURE, ClamdDaemon
from tests.support.clips import probe

pytestmark = pytest.mark.usefixtures("prefect_api")


def with_marker(clip: Path, dst: Path) -> Path:
    """``clip`` plus a ``free`` box holding the marker: still a valid MP4."""
    dst.write_bytes(clip.read_bytes() + struct.pack(">I4s", 8 + len(MARKER), b"free") + MARKER)
    return dst


def ingest(source: Path) -> Any:
    return CliRunner().invoke(app, ["ingest", str(source), "--json"])


def task_runs_of(run_name: str) -> list[Any]:
    """The task runs of the one flow run called ``run_name`` (read back from the Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
        )
        assert len(runs) == 1, runs
        return list(
            client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
            )
        )


def stored_objects(store: str, home: Path, s3_server: Any, bucket: str) -> list[str]:
    if store == "local":
        root = home / "objects"
        return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, home: Path) -> str:
    if request.param == "s3":
        request.getfixturevalue("s3_env")
    return str(request.param)


@pytest.fixture
def scanning(clamd: ClamdDaemon, monkeypatch: pytest.MonkeyPatch) -> ClamdDaemon:
    monkeypatch.setenv("REELFLOW_CLAMD_URL", clamd.url)
    return clamd


def test_marker_clip_is_still_a_valid_video(clips: Any, tmp_path: Path) -> None:
    """The marked clip probes as the same H.264 video (so only the scan can refuse it)."""
    marked = with_marker(clips.valid(), tmp_path / "marked.mp4")
    streams = {s["codec_type"]: s["codec_name"] for s in probe(marked)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}
    assert MARKER in marked.read_bytes()


def test_infected_video_is_refused(
    store: str,
    scanning: ClamdDaemon,
    clips: Any,
    home: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A valid video carrying the marker: exit 2, reason infected, signature named, nothing
    stored, no multipart upload left, and no retry spent."""
    name = f"infected-{uuid.uuid4().hex[:8]}.mp4"
    result = ingest(with_marker(clips.valid(), tmp_path / name))
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: infected:"), result.stderr
    assert SIGNATURE in errors[0]
    s3_server = request.getfixturevalue("s3_server") if store == "s3" else None
    bucket = request.getfixturevalue("bucket") if store == "s3" else ""
    assert stored_objects(store, home, s3_server, bucket) == []
    if s3_server is not None:
        assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    status = CliRunner().invoke(app, ["status", "--json"])
    assert json.loads(status.stdout.strip().splitlines()[-1])["media"] == []
    runs = task_runs_of(f"ingest-{name}")
    scans = [r for r in runs if r.name.startswith("scan-video")]
    assert len(scans) == 1 and scans[0].state.is_failed() and scans[0].run_count == 1
    assert all(r.run_count <= 1 for r in runs), [(r.name, r.run_count) for r in runs]
    assert not any(r.name.startswith(("make-thumbnail", "store")) for r in runs)


def test_same_video_without_marker_is_stored(
    store: str,
    scanning: ClamdDaemon,
    clips: Any,
    home: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The same video without the marker is scanned clean and stored byte for byte."""
    src = tmp_path / f"clean-{uuid.uuid4().hex[:8]}.mp4"
    shutil.copyfile(clips.valid(), src)
    result = ingest(src)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scan"] == "clean" and summary["scan_engine"].startswith("ClamAV")
    assert "scan" in summary["timings_s"]
    assert summary["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    s3_server = request.getfixturevalue("s3_server") if store == "s3" else None
    bucket = request.getfixturevalue("bucket") if store == "s3" else ""
    stored = stored_objects(store, home, s3_server, bucket)
    name = summary["video_uri"].rsplit("/", 1)[-1]  # videos/<session>.mp4, its final key
    assert any(k.endswith(f"videos/{name}") for k in stored), stored


def test_scanning_off_says_so(
    clamd: ClamdDaemon, clips: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without REELFLOW_CLAMD_URL the marked video is stored and the summary says scan: off."""
    monkeypatch.delenv("REELFLOW_CLAMD_URL", raising=False)
    name = f"unscanned-{uuid.uuid4().hex[:8]}.mp4"
    result = ingest(with_marker(clips.valid(), tmp_path / name))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scan"] == "off" and summary["scan_engine"] is None
    assert not any(r.name.startswith("scan-video") for r in task_runs_of(f"ingest-{name}"))
