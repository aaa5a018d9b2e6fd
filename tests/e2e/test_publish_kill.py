"""Kill tests: SIGKILL a real ``reelflow publish`` process group mid-publish, then run it again.

The sandbox runs in this test process (real HTTP on 127.0.0.1); the publish runs in a child
process pointed at it with ``REELFLOW_TIKTOK_API_BASE``. To kill at an exact protocol moment
without sleeps, the sandbox holds one request (after it has *applied* it) until the test has
killed the child: the child dies with TikTok ahead of its ledger, the hardest case for a resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.ingest import ingest_video
from reelflow.samples import make_clip
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from storage.accounts import save_account
from storage.crypto import secret_box
from storage.publishing import list_publishes
from storage.runtime import Runtime
from tests.support.files import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

SIX_CHUNKS = 64_000_001  # 10,000,000-byte chunks, the last 14,000,001
CHUNK = 10_000_000
HOLD_TIMEOUT_S = 300.0  # the child must reach the held request within this
RUN_TIMEOUT_S = 600


def publish_cmd(*args: str) -> list[str]:
    """``reelflow publish ...`` once the main CLI mounts it; the sub-app module until then."""
    import typer.main

    from reelflow.cli import app

    if "publish" in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        return [str(Path(sys.executable).parent / "reelflow"), "publish", *args]
    return [sys.executable, "-m", "reelflow.cli_tiktok", "publish", *args]


class Hold:
    """Make a sandbox state method block, right after it ran, on its ``n``-th call."""

    def __init__(self, sb: RunningSandbox, method: str, n: int, mp: pytest.MonkeyPatch) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        original, seen = getattr(sb.state, method), [0]

        def held(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            seen[0] += 1
            if seen[0] == n:
                self.reached.set()
                self.release.wait(HOLD_TIMEOUT_S)
            return result

        mp.setattr(sb.state, method, held)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningSandbox]:
    config = SandboxConfig(processing_delay_s=0.0, seed=99)
    with start_sandbox(config, data_dir=tmp_path / "sandbox") as sb:
        monkeypatch.setenv("REELFLOW_TIKTOK_API_BASE", sb.base_url)
        yield sb


@pytest.fixture
def published_setup(home: Path, sandbox: RunningSandbox, tmp_path: Path) -> tuple[str, Path]:
    """A 6-chunk clip ingested in-process (same REELFLOW_HOME) and an account for it."""
    base = make_clip(tmp_path / "base.mp4", duration_s=3, pattern="color", preset="fast")
    clip = tmp_path / "clip.mp4"
    data = base.read_bytes()
    pad = SIX_CHUNKS - len(data)
    with clip.open("wb") as fh:
        fh.write(data + pad.to_bytes(4, "big") + b"free")
        fh.truncate(SIX_CHUNKS)
    media_id: str = ingest_video(source=str(clip))["media_id"]
    created = sandbox.state.create_account("creator")
    rt = Runtime.from_settings(Settings())
    save_account(
        rt.catalog.engine,
        secret_box(rt.settings),
        "creator",
        access_token=created["access_token"],
        refresh_token=created["refresh_token"],
        expires_in=created["expires_in"],
        refresh_expires_in=created["refresh_expires_in"],
        open_id=created["open_id"],
        scopes=created["scope"],
    )
    return media_id, clip


def kill_when_held(cmd: list[str], env: dict[str, str], hold: Hold) -> None:
    """Start the child, wait until the sandbox holds the chosen request, SIGKILL its group."""
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        if not hold.reached.wait(HOLD_TIMEOUT_S):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the publish never reached the held request: {err.decode()[-2000:]}")
        assert proc.poll() is None, "the child finished before it was killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started, like a dead box
        proc.wait(timeout=30)
        hold.release.set()  # only now may the sandbox answer (into a closed socket)
    assert proc.returncode == -signal.SIGKILL


def rerun(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_sigkill_during_chunk_upload_resumes_from_next_unacknowledged_chunk(
    prefect_api: str,
    sandbox: RunningSandbox,
    published_setup: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed while TikTok holds 3 chunks (the child saw 2): the re-run sends chunks 4-6 only."""
    media_id, clip = published_setup
    env = os.environ | {"PREFECT_API_URL": prefect_api}
    cmd = publish_cmd(media_id, "--account", "creator", "--json")
    with pytest.MonkeyPatch.context() as mp:  # the sandbox's own methods again afterwards
        kill_when_held(cmd, env, Hold(sandbox, "commit_put", 3, mp))
    stats = sandbox.state.stats()
    [(publish_id, before)] = stats["publishes"].items()
    assert before["uploaded_bytes"] == 3 * CHUNK and before["status"] == "PROCESSING_UPLOAD"
    rt = Runtime.from_settings(Settings())
    [row] = list_publishes(rt.catalog.engine, media_id)
    assert (row.publish_id, row.status, row.bytes_acknowledged) == (
        publish_id,
        "uploading",
        2 * CHUNK,
    )

    ranges: list[str] = []
    original = sandbox.state.begin_put

    def spy(upload_id: str, upload_token: str, headers: Any) -> Any:
        ranges.append(headers.get("content-range", ""))
        return original(upload_id, upload_token, headers)

    monkeypatch.setattr(sandbox.state, "begin_put", spy)
    summary = rerun(cmd, env)
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["publish_id"] == publish_id
    assert summary["chunks_sent_this_run"] == 3 and summary["chunks_total"] == 6
    assert ranges == [
        f"bytes {3 * CHUNK}-{4 * CHUNK - 1}/{SIX_CHUNKS}",
        f"bytes {4 * CHUNK}-{5 * CHUNK - 1}/{SIX_CHUNKS}",
        f"bytes {5 * CHUNK}-{SIX_CHUNKS - 1}/{SIX_CHUNKS}",
    ]
    after = sandbox.state.stats()
    assert (after["inits"], after["posts"]) == (1, 1)
    assert after["publishes"][publish_id]["sha256"] == sha256_file(clip)


@pytest.mark.parametrize(
    ("method", "nth"),
    [
        pytest.param("commit_put", 6, id="before-the-201-reached-the-client"),
        pytest.param("fetch_status", 1, id="after-the-201-during-the-first-poll"),
    ],
)
def test_sigkill_after_last_chunk_rerun_only_polls(
    method: str,
    nth: int,
    prefect_api: str,
    sandbox: RunningSandbox,
    published_setup: tuple[str, Path],
) -> None:
    """TikTok has every byte, the ledger does not know the outcome: the re-run only polls."""
    media_id, clip = published_setup
    env = os.environ | {"PREFECT_API_URL": prefect_api}
    cmd = publish_cmd(media_id, "--account", "creator", "--json")
    with pytest.MonkeyPatch.context() as mp:
        kill_when_held(cmd, env, Hold(sandbox, method, nth, mp))
    rt = Runtime.from_settings(Settings())
    [row] = list_publishes(rt.catalog.engine, media_id)
    assert row.status in ("uploading", "uploaded") and row.tiktok_status == "PROCESSING_UPLOAD"
    puts = sandbox.state.stats()["calls"]["PUT /upload/video/"]
    assert puts == 6

    summary = rerun(cmd, env)
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 0
    after = sandbox.state.stats()
    assert (after["inits"], after["posts"], after["calls"]["PUT /upload/video/"]) == (1, 1, 6)
    assert after["publishes"][summary["publish_id"]]["sha256"] == sha256_file(clip)
