"""``reelflow ingest`` with many sources: expansion, bounded parallelism, the table / JSON
document, exit codes, and a re-run that sends nothing twice (real Prefect API, real ffmpeg,
moto's S3 server on 127.0.0.1 for the S3 store and the ``s3://bucket/prefix/`` source)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from reelflow.batch import Found
from reelflow.cli import app
from reelflow.cli_batch import LiveBoard, run_batch
from reelflow.settings import Settings
from storage.runtime import Runtime

pytestmark = pytest.mark.usefixtures("prefect_api")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["ingest", *args])


def document(result: Any) -> dict[str, Any]:
    """The batch's one JSON document: the last stdout line."""
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return doc


def three_clips(clips: Any, root: Path) -> tuple[Path, Path, Path]:
    """Three distinct valid videos: two in ``root/dir`` (plus a sidecar and a hidden file the
    walk must skip), one in ``root/loose`` for a glob."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "loose").mkdir()
    a = root / "dir" / "a.mp4"
    b = root / "dir" / "sub" / "b.WEBM"  # suffixes match in any case
    c = root / "loose" / "c.mp4"
    shutil.copy(clips.valid(duration_s=3.0), a)
    shutil.copy(clips.webm(), b)
    shutil.copy(clips.valid(duration_s=2.0), c)
    (root / "dir" / "a.json").write_text("{}")
    (root / "dir" / ".hidden.mp4").write_bytes(b"not a video")
    return a, b, c


def test_paths_directories_globs_one_bad_then_a_rerun_sends_nothing(
    home: Path, clips: Any, tmp_path: Path
) -> None:
    """A directory, a glob, a bad file and a duplicate: every good video stored once, the bad
    one rejected (exit 2, one error line naming it), the table's rows in order; the same batch
    again sends 0 bytes and answers the same media ids; without the bad file it exits 0."""
    a, b, c = three_clips(clips, tmp_path)
    bad = tmp_path / "bad.mp4"
    shutil.copy(clips.bad("text"), bad)
    args = [str(tmp_path / "dir"), str(tmp_path / "loose" / "*.mp4"), str(bad), str(a)]
    first = cli(*args, "--parallel", "2")  # not a terminal: one JSON document
    assert first.exit_code == 2, first.output
    doc = document(first)
    rows = {r["source"]: r for r in doc["results"]}
    assert list(rows) == [str(a), str(b), str(c), str(bad)]  # walk order, duplicate dropped
    assert doc["counts"] == {"total": 4, "succeeded": 3, "rejected": 1, "failed": 0}
    assert [rows[str(p)]["outcome"] for p in (a, b, c)] == ["stored"] * 3
    assert rows[str(bad)]["outcome"] == "rejected" and rows[str(bad)]["media_id"] is None
    assert len({r["flow_run_id"] for r in doc["results"]}) == 4  # one ingest-video run each
    errors = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0], first.stderr
    sent = {p: rows[str(p)]["bytes_sent"] for p in (a, b, c)}
    assert all(n == p.stat().st_size for p, n in sent.items()), sent
    media = {rows[str(p)]["media_id"] for p in (a, b, c)}
    assert len(media) == 3
    assert {m.media_id for m in Runtime.from_settings(Settings()).catalog.list_media()} == media

    again = cli(*args, "--json")
    assert again.exit_code == 2, again.output
    redo = document(again)
    assert redo["bytes_sent"] == 0
    assert {r["media_id"] for r in redo["results"] if r["media_id"]} == media

    good = cli(str(tmp_path / "dir"), str(c), "--json")
    assert good.exit_code == 0, good.output
    assert document(good)["ok"] is True and document(good)["bytes_sent"] == 0


def test_s3_prefix_on_an_s3_store_and_the_rerun_sends_no_byte(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """``s3://bucket/inbox/`` lists the videos under it (not the sidecar, not another prefix);
    both stored; the re-run sends no UploadPart/PutObject byte to the store at all."""
    client = s3_server.client()
    client.upload_file(str(clips.valid(duration_s=3.0)), bucket, "inbox/one.mp4")
    client.upload_file(str(clips.webm()), bucket, "inbox/deep/two.webm")
    client.put_object(Bucket=bucket, Key="inbox/one.json", Body=b"{}")
    client.upload_file(str(clips.valid(duration_s=2.0)), bucket, "elsewhere/three.mp4")
    first = cli(f"s3://{bucket}/inbox/", "--json", "--parallel", "2")
    assert first.exit_code == 0, first.output
    doc = document(first)
    assert [r["source"] for r in doc["results"]] == [
        f"s3://{bucket}/inbox/deep/two.webm",
        f"s3://{bucket}/inbox/one.mp4",
    ]
    assert all(r["outcome"] == "stored" and r["media_id"] for r in doc["results"])
    s3_server.reset_stats()
    again = cli(f"s3://{bucket}/inbox/", "--json")
    assert again.exit_code == 0, again.output
    assert document(again)["bytes_sent"] == 0
    sent = s3_server.bytes_in(bucket)
    assert sent.get("UploadPart", 0) == 0 and sent.get("PutObject", 0) == 0, sent


def test_nothing_matched_is_rejected_and_nothing_runs(home: Path, tmp_path: Path) -> None:
    """A glob that matches nothing, an empty directory and an empty prefix-less bucket are
    rejected rows (exit 2); no run starts, nothing is stored."""
    (tmp_path / "empty").mkdir()
    result = cli(str(tmp_path / "*.mov"), str(tmp_path / "empty"))
    assert result.exit_code == 2, result.output
    doc = document(result)
    assert [(r["outcome"], r["reason"]) for r in doc["results"]] == [
        ("rejected", "no_match"),
        ("rejected", "no_videos"),
    ]
    assert not (home / "objects").exists() or not any((home / "objects").rglob("*.mp4"))


def test_bad_option_refused_once_before_any_source(home: Path, clips: Any, tmp_path: Path) -> None:
    """An option every run would refuse is one error line for the whole batch, exit 2."""
    result = cli(str(clips.valid()), str(clips.webm()), "--concurrency", "0", "--json")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [
        ln for ln in result.stderr.splitlines() if ln.startswith("error: invalid_concurrency: ")
    ]
    parallel = cli(str(clips.valid()), str(clips.webm()), "--parallel", "0")
    assert parallel.exit_code == 2 and "bad_parameter" in parallel.stderr


def test_live_board_shows_bytes_then_the_outcome(home: Path, clips: Any, tmp_path: Path) -> None:
    """The terminal display of a real batch: each file's bytes as its parts are sent, then its
    outcome (rendered into a forced terminal)."""
    a, b, _ = three_clips(clips, tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    settings = Settings()
    found = [Found(str(a), a.stat().st_size), Found(str(b), b.stat().st_size)]
    with LiveBoard(settings, console=console) as board:
        results = run_batch(found, {"chunk_size_bytes": None}, parallel=2, board=board)
    assert [r.outcome for r in results] == ["stored", "stored"]
    assert all(r.flow_run_id for r in results)  # the on_running hook saw each run start
    screen = buf.getvalue()
    assert "a.mp4" in screen and "b.WEBM" in screen
    last = screen.rsplit("a.mp4", 1)[-1].splitlines()[0]
    assert "stored" in last and "100%" not in last  # bytes shown (size known), not a percentage
    assert f"{a.stat().st_size / 1000:.1f}" in screen or "kB" in screen


INTERRUPT_DEADLINE_S = 300


@pytest.mark.slow
def test_ctrl_c_starts_nothing_more_and_the_rerun_finishes_the_batch(
    prefect_api: str, clips: Any, tmp_path: Path
) -> None:
    """SIGINT to a real ``reelflow ingest DIR --parallel 1`` once the first video is stored: the
    running ingest ends, the rest are reported ``interrupted`` (exit 1) and were never started;
    the same command again stores them and sends nothing already sent."""
    folder = tmp_path / "four"
    folder.mkdir()
    for i, clip in enumerate(
        [clips.valid(duration_s=3.0), clips.valid(duration_s=2.0), clips.webm(), clips.valid()]
    ):
        shutil.copy(clip, folder / f"{i}{clip.suffix}")
    home = tmp_path / "home"
    env = os.environ | {"REELFLOW_HOME": str(home), "PREFECT_API_URL": prefect_api}
    cmd = [str(Path(sys.executable).parent / "reelflow"), "ingest", str(folder), "--parallel", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    videos = home / "objects" / "videos"
    deadline = time.monotonic() + INTERRUPT_DEADLINE_S
    try:
        while not (videos.exists() and any(videos.glob("*.mp4"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no video stored in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=INTERRUPT_DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 1, err[-3000:]
    assert "interrupted:" in err
    doc = json.loads(out.strip().splitlines()[-1])
    outcomes = [r["outcome"] for r in doc["results"]]
    reasons = [r["reason"] for r in doc["results"]]
    assert outcomes[0] == "stored" and "interrupted" in reasons, doc
    assert all(o in ("stored", "failed") for o in outcomes), doc
    sent_first = {r["source"]: r["bytes_sent"] for r in doc["results"] if r["outcome"] == "stored"}

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads(again.stdout.strip().splitlines()[-1])
    assert [r["outcome"] for r in redo["results"]] == ["stored"] * 4
    assert all(r["bytes_sent"] == 0 for r in redo["results"] if r["source"] in sent_first)


def test_a_missing_bucket_and_an_empty_prefix_are_rejected(
    s3_env: str, s3_server: Any, bucket: str
) -> None:
    """No such bucket: source_not_found; a prefix with no video under it (a sidecar only):
    no_videos; exit 2, nothing started."""
    s3_server.client().put_object(Bucket=bucket, Key="empty/clip.mp4.json", Body=b"{}")
    missing = f"s3://rf-missing-{bucket[3:]}/in/"
    result = cli(missing, f"s3://{bucket}/empty/", "--json")
    assert result.exit_code == 2, result.output
    doc = document(result)
    assert [(r["source"], r["outcome"], r["reason"]) for r in doc["results"]] == [
        (missing, "rejected", "source_not_found"),
        (f"s3://{bucket}/empty/", "rejected", "no_videos"),
    ]
