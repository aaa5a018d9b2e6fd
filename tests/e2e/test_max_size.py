"""REELFLOW_MAX_SIZE_BYTES on the paths a video comes in by a run: the CLI (a local file, one
and in a batch), a URL and an S3-event run. Each is refused as ``too_large`` before a byte is
sent, and the same clip under the limit goes through (the gateway's side: the integration test
tests/integration/test_max_size_gateway.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.ingest import ingest_video
from reelflow.cli import app
from reelflow.errors import InputRejectedError
from tests.support import refusals
from tests.support.range_server import Obj, range_server

pytestmark = pytest.mark.usefixtures("prefect_api")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["ingest", *args, "--json"])


def test_cli_file_over_the_limit_is_too_large(
    home: Path, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file one byte over the limit: exit 2 too_large naming the limit, nothing stored;
    at exactly the limit it is stored."""
    clip = clips.valid()
    size = clip.stat().st_size
    monkeypatch.setenv("REELFLOW_MAX_SIZE_BYTES", str(size - 1))
    line = refusals.assert_refused(cli(str(clip)), home, "too_large")
    assert f"the limit is {size - 1}" in line
    batch = cli(str(clip), str(clips.webm()))
    assert batch.exit_code == 2, batch.output  # in a batch: that row rejected, the other stored
    monkeypatch.setenv("REELFLOW_MAX_SIZE_BYTES", str(size))
    assert cli(str(clip)).exit_code == 0


def test_url_source_over_the_limit_is_refused_before_any_body_read(
    home: Path, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL whose size (from its range answer) is over the limit: too_large, no full GET."""
    body = clips.valid().read_bytes()
    with range_server() as srv:
        monkeypatch.setenv("REELFLOW_SOURCE_ALLOWED_HOSTS", srv.hostport)
        monkeypatch.setenv("REELFLOW_MAX_SIZE_BYTES", str(len(body) - 1))
        srv.objects["/big.mp4"] = Obj(body)
        refusals.assert_refused(cli(f"{srv.base}/big.mp4"), home, "too_large")
        assert srv.objects["/big.mp4"].full_gets == 0


def test_s3_event_run_over_the_limit_is_too_large(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run the bucket-event trigger starts (origin s3-event) refuses an object over the
    limit before any upload: no multipart upload, nothing under the store's prefix."""
    clip = clips.valid()
    client = s3_server.client()
    client.upload_file(str(clip), bucket, "in/big.mp4")
    monkeypatch.setenv("REELFLOW_EVENT_BUCKETS", f"{bucket}/in")
    monkeypatch.setenv("REELFLOW_MAX_SIZE_BYTES", str(clip.stat().st_size - 1))
    with pytest.raises(InputRejectedError) as info:
        ingest_video(source=f"s3://{bucket}/in/big.mp4", origin="s3-event")
    assert info.value.reason == "too_large" and info.value.exit_code == 2
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    listed = client.list_objects_v2(Bucket=bucket, Prefix="media/").get("Contents", [])
    assert listed == []
