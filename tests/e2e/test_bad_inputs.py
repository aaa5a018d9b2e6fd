"""Bad inputs: a clear one-line error, exit code 2, nothing stored and nothing pending."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reelflow.cli import app
from tests.support import refusals
from tests.support.clips import BAD_KINDS

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _no_retry_spent(prefect_api: str) -> Any:
    """Every case here is a refusal: none may spend a task retry."""
    since = refusals.now()
    yield
    refusals.assert_no_retry_spent(prefect_api, since)


def assert_nothing_stored(home: Path) -> None:
    objects = home / "objects"
    files = [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []
    assert files == [], files


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["ingest", *args, "--json"])


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_rejected_with_exit_2(
    kind: str, home: Path, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind of bad file is refused by validation before any upload."""
    monkeypatch.setenv("REELFLOW_MAX_DURATION_S", "10")
    result = run_cli(str(clips.bad(kind)))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert_nothing_stored(home)


def test_missing_path_and_directory(home: Path, tmp_path: Path) -> None:
    """A path that does not exist, or is a directory, is exit 2 with the path in the message."""
    missing = run_cli(str(tmp_path / "nope.mp4"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    assert run_cli(str(folder)).exit_code == 2
    assert_nothing_stored(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop capabilities for the check")
def test_unreadable_file(home: Path, clips: Any, tmp_path: Path) -> None:
    """A file the user cannot read is exit 2 (checked without root's power to read anything).

    The child stays uid 0, so it can still import reelflow from a checkout in a private (0700)
    directory, but loses CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so a mode-000 file is unreadable
    to it as to any user."""
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(clips.valid().read_bytes())
    clip.chmod(0)
    code = (
        "from reelflow.sources import SourceReader\n"
        "from reelflow.errors import InputRejectedError\n"
        "import sys\n"
        "reader = SourceReader(lambda: None, allowed_hosts='', read_deadline_s=60)\n"
        "try:\n    reader.resolve(sys.argv[1])\n"
        "except InputRejectedError as e:\n    print(e.reason); sys.exit(2)\n"
    )
    proc = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            code,
            str(clip),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "unreadable"


def test_source_url_that_404s(
    home: Path, s3_server: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http(s) source answering 404 is exit 2 and mentions the status."""
    monkeypatch.setenv("REELFLOW_SOURCE_ALLOWED_HOSTS", s3_server.endpoint_url.split("://")[1])
    url = s3_server.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "missing.mp4"}
    )
    result = run_cli(url)
    assert result.exit_code == 2 and "404" in result.stderr
    assert_nothing_stored(home)


def test_missing_s3_object(s3_env: str, s3_server: Any, bucket: str) -> None:
    """s3://bucket/missing is exit 2 and leaves no multipart upload behind."""
    result = run_cli(f"s3://{bucket}/missing.mp4")
    assert result.exit_code == 2 and "no such object" in result.stderr
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
