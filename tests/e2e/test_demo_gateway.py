"""`make demo`'s gateway step: a real clip through a real ``reelflow gateway`` child process.

The step (:func:`reelflow.demo.send_through_gateway`) runs as the demo runs it, on the embedded
defaults under a fresh REELFLOW_HOME (local store, SQLite catalog, no Prefect server: the
gateway's own hand-off stores the upload), with tuspy as the client. Only the catalog and the
process table are read afterwards.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import psutil
import pytest

from reelflow.demo import DemoGatewayError, send_through_gateway
from reelflow.settings import Settings
from storage import gateway_uploads as uploads
from storage.catalog import Catalog, make_engine
from tests.support.files import sha256_file
from tests.support.gateway import GatewaySetup

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_gateway_step_stores_the_clip_and_stops_the_gateway(
    home: Path, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clip sent by the demo's gateway step is a media row with the file's SHA-256, and the
    gateway process it started is gone when the step returns."""
    monkeypatch.delenv("REELFLOW_GATEWAY_SECRET", raising=False)  # the step makes one
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    clip: Path = clips.valid()
    settings = Settings()
    try:
        report = send_through_gateway(clip, settings)
    finally:
        # The hand-off's `reelflow ingest --upload` run lives in a session of its own.
        GatewaySetup(home=home).end_runs()

    expected = sha256_file(clip)
    catalog = Catalog(make_engine(settings.resolved_database_url))
    media = catalog.get_media(report.media_id)
    assert media is not None
    assert media.sha256 == expected == report.sha256 == report.file_sha256
    assert media.size_bytes == clip.stat().st_size == report.size_bytes
    row = uploads.get(catalog.engine, report.upload_id)
    assert row is not None
    assert (row.state, row.media_id, row.sha256) == (uploads.STORED, media.media_id, expected)
    assert report.patches >= 1
    assert not psutil.pid_exists(report.gateway_pid)


def test_demo_gateway_step_refused_upload_still_stops_the_gateway(
    home: Path, clips: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the gateway refuses (415 on its first bytes) ends the step with a one-line
    DemoGatewayError, the gateway stopped all the same, and the secret in neither the output
    nor the gateway's log."""
    secret = secrets.token_urlsafe(48)
    monkeypatch.setenv("REELFLOW_GATEWAY_SECRET", secret)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        with pytest.raises(DemoGatewayError, match="upload failed"):
            send_through_gateway(clips.bad("text"), Settings())
    finally:
        GatewaySetup(home=home).end_runs()

    out = capsys.readouterr().out
    started = re.search(r"\(pid (\d+),", out)
    assert started, out
    assert not psutil.pid_exists(int(started.group(1)))
    assert secret not in out
    assert secret not in (home / "demo-gateway.log").read_text()
