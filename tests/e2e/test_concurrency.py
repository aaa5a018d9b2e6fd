"""Two runs for the same content at the same moment upload it once (catalog lease)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from reelflow.planning import MIB
from storage.catalog import make_engine
from storage.leases import Leases

CHUNK = 5 * MIB


def test_two_simultaneous_runs_upload_once(
    prefect_api: str, s3_server: Any, bucket: str, pg_url: str, clips: Any, tmp_path: Path
) -> None:
    """A duplicate event / double click: both runs succeed with one media_id, parts sent once."""
    clip = clips.large(40 * MIB)
    parts = math.ceil(clip.stat().st_size / CHUNK)
    env = os.environ | {
        "REELFLOW_HOME": str(tmp_path / "home"),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "REELFLOW_DATABASE_URL": pg_url,
        "PREFECT_API_URL": prefect_api,
    }
    cmd = [
        str(Path(sys.executable).parent / "reelflow"),
        "ingest",
        str(clip),
        "--chunk-size",
        str(CHUNK),
        "--concurrency",
        "2",
        "--json",
    ]
    s3_server.reset_stats()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summaries = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert summaries[0]["media_id"] == summaries[1]["media_id"]
    assert sorted(s["chunks_uploaded_this_run"] for s in summaries) == [0, parts]
    assert s3_server.stats()["UploadPart"] == parts
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_lease_is_exclusive_and_freed_by_a_dead_owner(tmp_path: Path) -> None:
    """Only one owner at a time; a lease held by a process that no longer exists is free."""
    leases = Leases(make_engine(f"sqlite:///{tmp_path / 'c.db'}"), ttl_s=600)
    assert leases.try_acquire("src_x", "run-a")
    assert not leases.try_acquire("src_x", "run-b")
    assert leases.try_acquire("src_x", "run-a")  # re-entrant for the owner
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    from sqlalchemy import update
    from sqlmodel import Session

    from storage.leases import Lease

    with Session(leases.engine) as s:
        s.execute(update(Lease).where(Lease.name == "src_x").values(pid=int(dead.stdout)))  # type: ignore[arg-type]
        s.commit()
    assert leases.try_acquire("src_x", "run-b")
    leases.release("src_x", "run-b")
    assert leases.try_acquire("src_x", "run-c")
