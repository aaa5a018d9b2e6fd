"""What the S3 benchmarks share: moto's S3 server on 127.0.0.1, its client, the cached clips.

The clips (valid H.264, generated once) are cached under bench/.data for every benchmark.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from reelflow.samples import make_clip, make_large_clip

DATA = Path(__file__).resolve().parent / ".data"
REPO = Path(__file__).resolve().parents[1]
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_moto_credentials() -> None:
    """Credentials for this process's boto3 clients, unless set: moto accepts any."""
    for var, value in MOTO_CREDENTIALS.items():
        os.environ.setdefault(var, value)


def cached_clip(name: str, min_bytes: int) -> Path:
    """A valid clip of at least ``min_bytes`` under :data:`DATA`, made on first use."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / name
    if not path.exists() or path.stat().st_size < min_bytes:
        make_large_clip(path, min_bytes)
    return path


def warmup_clip() -> Path:
    """A tiny clip, for the warm-up run a benchmark does not measure."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / "warmup.mp4"
    if not path.exists():
        make_clip(path, duration_s=2.0, width=360, height=640, audio=False)
    return path


def start_s3() -> tuple[subprocess.Popen[str], str]:
    """moto's S3 server in its own process on a free port: (process, endpoint URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.s3server", "--port", "0", "--no-verify-checksums"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    for _ in range(200):
        line = proc.stdout.readline()
        if "http://" in line:
            endpoint = line[line.index("http://") :].split()[0]
            return proc, endpoint
    proc.kill()
    raise RuntimeError("the S3 test server did not start")


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client of ``endpoint`` with path-style addressing (moto on 127.0.0.1)."""
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def boto3_upload_s(s3: Any, path: Path | str, bucket: str, part: int, concurrency: int) -> float:
    """Seconds boto3's ``upload_file`` takes to store ``path`` at ``baseline/<name>`` (the
    baseline every S3 benchmark measures against), in parts of ``part`` bytes."""
    cfg = TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=concurrency
    )
    t0 = time.perf_counter()
    # The same integrity as reelflow's parts: a SHA-256 checksum per part, verified by S3.
    s3.upload_file(
        str(path), bucket, f"baseline/{Path(path).name}", Config=cfg,
        ExtraArgs={"ChecksumAlgorithm": "SHA256"},
    )  # fmt: skip
    return time.perf_counter() - t0
