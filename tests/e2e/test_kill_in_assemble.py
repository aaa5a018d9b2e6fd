"""A run SIGKILLed right after the store completed the upload, before the catalog heard of it.

The chaos suite found it (seed 9, a kill in ``assemble``): the re-run listed the parts of an
upload that no longer existed, took that for "aborted behind our back" and sent the whole file
again. ``assemble`` now records its intent (the source's SHA-256) before completing, and the
re-run adopts the completed object after reading it back once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.ingest import ingest_video
from reelflow.planning import MIB

pytestmark = pytest.mark.usefixtures("prefect_api")
REPO = Path(__file__).resolve().parents[2]

_KILL_AFTER_COMPLETE = """
import os, signal, sys
import storage.s3 as s3
real = s3.S3Store.complete_upload
def complete_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the store has the object; the catalog does not know
s3.S3Store.complete_upload = complete_then_die
from flows.ingest import ingest_video
ingest_video(source=sys.argv[1], chunk_size_bytes=5 * 1024 * 1024, concurrency=2)
"""


def test_kill_after_complete_multipart_upload_sends_no_part_again(
    s3_env: str, s3_server: Any, bucket: str, clips: Any, prefect_api: str
) -> None:
    """Killed after CompleteMultipartUpload: the re-run adopts the object, sends 0 parts."""
    clip = clips.medium(12 * MIB)
    env = os.environ | {"PREFECT_API_URL": prefect_api}
    done = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_COMPLETE, str(clip)],
        cwd=REPO,
        env=env,
        timeout=300,
        capture_output=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    s3 = s3_server.client()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # it did complete
    s3_server.reset_stats()
    summary = ingest_video(source=str(clip), chunk_size_bytes=5 * MIB, concurrency=2)
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert summary["sha256"] == sha
    assert summary["chunks_uploaded_this_run"] == 0
    assert s3_server.stats().get("UploadPart", 0) == 0
    assert s3_server.stats().get("CreateMultipartUpload", 0) == 0
