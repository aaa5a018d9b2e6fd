"""Request values are checked before anything starts, and a publish TikTok would refuse is
refused before the first byte is uploaded.

Real parts: the CLI (typer's CliRunner, in process), the Prefect test API, the TikTok sandbox on
127.0.0.1, moto's S3 server, real ffmpeg clips. "Nothing started" is read back from the Prefect
API (no flow run of the source's name), the store (no object, no multipart upload) and the
sandbox (no init).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.ingest import ingest_video
from reelflow.cli import app
from reelflow.errors import InputRejectedError
from reelflow.settings import Settings
from storage.runtime import Runtime
from tests.support.tiktok import add_account

pytestmark = pytest.mark.usefixtures("prefect_api")

MIB = 1024 * 1024
GIB = 1024 * MIB


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def one_error_line(result: Any) -> str:
    """The run's stderr is exactly one `error: <reason>: <message>` line."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line: str = lines[0]
    return line


def flow_runs_named(name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return len(runs)


def stored_files(home: Path) -> list[Path]:
    objects = home / "objects"
    return [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []


@pytest.fixture
def own_clip(clips: Any, tmp_path: Path) -> Path:
    """A valid clip under a name no other test uses (its flow runs are named after it)."""
    dest = tmp_path / f"checks-{uuid.uuid4().hex[:10]}.mp4"
    shutil.copyfile(clips.valid(), dest)
    return dest


BAD_INGEST_OPTIONS = [
    (["--chunk-size", "0"], "invalid_chunk_size"),
    (["--chunk-size", "-1"], "invalid_chunk_size"),
    (["--chunk-size", str(6 * GIB)], "invalid_chunk_size"),
    (["--concurrency", "0"], "invalid_concurrency"),
    (["--concurrency", "-1"], "invalid_concurrency"),
    (["--concurrency", "65"], "invalid_concurrency"),
    (["--chunk-size", str(512 * MIB), "--concurrency", "8"], "over_memory_budget"),
    (["--account", "creator", "--privacy", "EVERYONE"], "invalid_privacy"),
    (["--account", "creator", "--mode", "later"], "invalid_mode"),
    (["--mode", "direct"], "no_account"),
    (["--account", "bad name"], "invalid_account_name"),
    (["--account", "../x"], "invalid_account_name"),
    (["--account", "creator", "--publish-at", "2026-12-01T18:00:00"], "naive_publish_at"),
    (["--account", "creator", "--publish-at", "2020-01-01T00:00:00+00:00"], "publish_at_in_past"),
    (["--account", "creator", "--caption", "x" * 2201], "caption_too_long"),
    (["--chunk-size", "abc"], "bad_parameter"),
    (["--concurrency", "1.5"], "bad_parameter"),
    (["--no-such-flag"], "no_such_option"),
]


@pytest.mark.parametrize(("extra", "reason"), BAD_INGEST_OPTIONS)
def test_bad_ingest_options_exit_2_before_anything_starts(
    extra: list[str], reason: str, home: Path, own_clip: Path
) -> None:
    """Each bad value: exit 2, one `error: <reason>: ...` line, no flow run, nothing stored."""
    result = cli("ingest", str(own_clip), *extra, "--json")
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith(f"error: {reason}: "), result.stderr
    assert result.stdout == ""
    assert flow_runs_named(f"ingest-{own_clip.name}") == 0
    assert stored_files(home) == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["publish", "m_x", "--account", "creator", "--privacy", "NOPE"], "invalid_privacy"),
        (["publish", "m_x", "--account", "creator", "--mode", "none"], "invalid_mode"),
        (["publish", "m_x", "--account", "a/b"], "invalid_account_name"),
        (["publish", "m_x", "--account", "creator", "--poll-deadline", "-1"], "invalid_poll_deadline"),
        (["publish", "m_x"], "missing_parameter"),
        (["accounts", "add", "bad name", "--access-token", "a", "--refresh-token", "b"],
         "invalid_account_name"),
        (["status", "--bogus"], "no_such_option"),
    ],
)  # fmt: skip
def test_other_commands_refuse_bad_values_on_one_line(
    args: list[str], reason: str, home: Path
) -> None:
    """publish / accounts add / status: bad values and usage errors are one line, exit 2."""
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith(f"error: {reason}: "), result.stderr
    assert not (home / "catalog.db").exists()  # nothing opened the catalog, let alone TikTok


def test_flow_callers_get_the_same_rules(
    home: Path, own_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest_video from Python (the UI form's path): the same refusals, nothing stored."""
    with pytest.raises(InputRejectedError) as refused:
        ingest_video(source=str(own_clip), concurrency=-1)
    assert refused.value.reason == "invalid_concurrency"
    with pytest.raises(InputRejectedError) as absurd:
        ingest_video(source=str(own_clip), chunk_size_bytes=6 * GIB)
    assert absurd.value.reason == "invalid_chunk_size"
    monkeypatch.setenv("REELFLOW_MEMORY_BUDGET_BYTES", str(16 * MIB))
    with pytest.raises(InputRejectedError, match="over the memory budget") as over:
        ingest_video(source=str(own_clip))  # the defaults: 8 MiB x (4 + 1) = 40 MiB
    assert over.value.reason == "over_memory_budget" and "16.0 MiB" in str(over.value)
    assert stored_files(home) == []
    rt = Runtime.from_settings(Settings())
    assert rt.catalog.list_media() == []
    monkeypatch.setenv("REELFLOW_MEMORY_BUDGET_BYTES", str(40 * MIB))  # exactly the buffers
    assert ingest_video(source=str(own_clip))["media_id"]


def test_privacy_not_offered_is_refused_before_the_first_byte(
    s3_env: str, s3_server: Any, bucket: str, sandbox: Any, own_clip: Path
) -> None:
    """A privacy the creator lacks: exit 2, no object and no multipart upload in S3, no init."""
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, privacy="private")
    result = cli("ingest", str(own_clip), "--account", "creator", "--privacy", "PUBLIC_TO_EVERYONE")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert line.startswith("error: privacy_level_not_offered: "), line
    assert "FOLLOWER_OF_CREATOR" in line  # what the creator does offer
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert rt.catalog.list_media() == []
    stats = sandbox.state.stats()
    assert (
        stats["inits"] == 0
        and stats["calls"].get("POST /v2/post/publish/creator_info/query/", 0) == 1
    )


def test_too_long_for_the_creator_is_refused_before_the_first_byte(
    home: Path, sandbox: Any, own_clip: Path
) -> None:
    """A video longer than the creator's max duration is refused once validated, unstored."""
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, max_video_post_duration_sec=2)  # the clip is 3 s
    result = cli("ingest", str(own_clip), "--account", "creator")
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith("error: video_too_long: ")
    assert stored_files(home) == [] and rt.catalog.list_media() == []
    assert sandbox.state.stats()["inits"] == 0
    stored_only = cli("ingest", str(own_clip), "--json")  # without a publish it is fine
    assert stored_only.exit_code == 0, stored_only.output
