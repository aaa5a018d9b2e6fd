"""Fault suite: 20 ingest + publish runs with ~10 % transient faults at S3 and at TikTok at once.

S3 (moto behind tests/support/s3server.py): 500 InternalError, 503 SlowDown (S3's throttle),
a connection reset before the request took effect, and a lost reply (applied, then reset), on
any operation, seeded per run. TikTok (the sandbox's own dice): 5xx, 429 with Retry-After,
lost replies (processed, answered 5xx) and chunk PUTs cut off mid-body. Every run must finish:
one post, the source's bytes stored, no multipart upload left after ``cleanup``. The table of
faults each hop absorbed (each one a retry spent) is printed at the end.

Runs in-process under the session's Prefect API; ``REELFLOW_FAULT_RUNS`` sets the count (6 in
``make test``, 20 in ``make chaos``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.runtime import Runtime
from tests.support.chaos import env_vars, print_past_capture
from tests.support.files import sha256_file
from tests.support.tiktok import SANDBOX_CONFIG, add_account

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

RUNS = int(os.environ.get("REELFLOW_FAULT_RUNS", "6"))  # `make chaos`: 20
SEED = int(os.environ.get("REELFLOW_CHAOS_SEED", "8"))
CHUNK = 5 * MIB
CONCURRENCY = 2
CLIP_BYTES = 20 * MIB
ACCOUNT = "creator"
# 4 x 2.5 %: about 10 % of all S3 requests fail (one die per rule, in order).
S3_KINDS = ("500", "503", "reset", "reset-after")
S3_RATE_EACH = 0.025
TIKTOK_FAULTS = {
    "error_rate": 0.03,
    "rate_limit_rate": 0.025,
    "retry_after_s": 1,
    "lost_response_rate": 0.025,
    "drop_rate": 0.02,  # chunk PUTs only, rolled after the others
}
UNLIMITED = 1_000_000


class HopTally:
    """Requests seen and faults injected per hop, summed over the runs."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.faults: dict[str, Counter[str]] = {"S3": Counter(), "TikTok": Counter()}
        self.runs = 0
        self.survived = 0

    def table(self) -> str:
        lines = [
            f"fault runs: {self.survived}/{self.runs} survived (seed {SEED})",
            f"{'hop':<8}{'requests':>10}{'faults = retries':>18}  by kind",
        ]
        for hop, kinds in self.faults.items():
            shown = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if n) or "-"
            lines.append(f"{hop:<8}{self.requests[hop]:>10}{sum(kinds.values()):>18}  {shown}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def hops(request: pytest.FixtureRequest) -> Iterator[HopTally]:
    tally = HopTally()
    yield tally
    print_past_capture(request, tally.table())


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from reelflow.tiktok.sandbox import start_sandbox

    with start_sandbox(SANDBOX_CONFIG, data_dir=tmp_path_factory.mktemp("sandbox")) as sb:
        yield sb


@pytest.mark.parametrize("run", range(RUNS), ids=lambda i: f"run{i}")
def test_run_survives_transient_faults_at_both_hops(
    run: int,
    s3_server: Any,
    sandbox_server: Any,
    clips: Any,
    tmp_path: Path,
    hops: HopTally,
) -> None:
    """~10 % faults at S3 and TikTok together: the run completes, one post, the right bytes."""
    from flows.ingest import ingest_video
    from flows.maintenance import cleanup

    hops.runs += 1
    seed = SEED * 1000 + run
    bucket = f"rf-fault-{uuid.uuid4().hex[:10]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    clip = Path(clips.medium(CLIP_BYTES))
    sb = sandbox_server
    sb.state.reset()
    env = {
        "REELFLOW_HOME": str(tmp_path / "home"),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "REELFLOW_TIKTOK_API_BASE": sb.base_url,
        "REELFLOW_LEASE_WAIT_S": "60",
    }
    with env_vars(env):
        os.environ.pop("REELFLOW_CLAMD_URL", None)
        add_account(Runtime.from_settings(Settings()), sb, ACCOUNT)
        before = sum(s3_server.stats().values())
        s3_server.set_faults(
            [
                {"op": "*", "kind": kind, "rate": S3_RATE_EACH, "times": UNLIMITED}
                for kind in S3_KINDS
            ],
            seed=seed,
        )
        sb.state.set_faults({**TIKTOK_FAULTS, "seed": seed})
        try:
            summary = ingest_video(
                source=str(clip),
                account=ACCOUNT,
                chunk_size_bytes=CHUNK,
                concurrency=CONCURRENCY,
            )
        finally:
            fired = {rule["kind"]: rule["fired"] for rule in s3_server.faults()}
            s3_server.set_faults([])
            stats = sb.state.stats()
            sb.state.set_faults({k: 0 for k in TIKTOK_FAULTS if k != "retry_after_s"})
            hops.requests["S3"] += sum(s3_server.stats().values()) - before
            hops.requests["TikTok"] += sum(stats["calls"].values())
            hops.faults["S3"].update(fired)
            hops.faults["TikTok"].update(stats["faults"])
        cleanup(upload_ttl_hours=0)

    assert summary["publish"]["status"] == "PUBLISH_COMPLETE", summary["publish"]
    assert stats["posts"] == 1, stats["publishes"]
    [posted] = [p for p in stats["publishes"].values() if p["status"] == "PUBLISH_COMPLETE"]
    source_sha = sha256_file(clip)
    assert posted["sha256"] == source_sha
    key = summary["video_uri"].removeprefix(f"s3://{bucket}/")
    h = hashlib.sha256()
    for block in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MIB):
        h.update(block)
    assert h.hexdigest() == summary["sha256"] == source_sha
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    hops.survived += 1
