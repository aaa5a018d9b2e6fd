"""The `cleanup` flow (hourly): removes what killed or abandoned runs left behind.

Orchestration only; the sweep itself lives in storage/janitor.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

from reelflow.logging import configure_logging, get_logger
from reelflow.settings import Settings
from storage.gateway_sweep import expire_uploads
from storage.janitor import sweep
from storage.runtime import Runtime
from tasks.chunk_upload import CHUNK_RESULTS_PREFIX


def chunk_results_dir() -> Any:
    return PREFECT_RESULTS_LOCAL_STORAGE_PATH.value() / CHUNK_RESULTS_PREFIX


# NO_CACHE on purpose: a sweep must look at the world as it is now.
@task(name="sweep-leftovers", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30)
def sweep_leftovers(upload_ttl_hours: float, dry_run: bool) -> list[dict[str, object]]:
    rt = Runtime.from_settings(Settings())
    findings = sweep(
        rt,
        upload_ttl=timedelta(hours=upload_ttl_hours),
        results_dir=chunk_results_dir(),
        dry_run=dry_run,
    )
    # Gateway uploads past Upload-Expires (and orphan multipart uploads under incoming/).
    expired = expire_uploads(rt, upload_ttl=timedelta(hours=upload_ttl_hours), dry_run=dry_run)
    return [f.as_row() for f in findings] + expired


@flow(name="cleanup", log_prints=True)
def cleanup(dry_run: bool = False, upload_ttl_hours: float = 24.0) -> dict[str, Any]:
    """Abort stale multipart uploads, delete stale staging objects and sessions, drop the cached
    chunk results of finished sessions.

    Args:
        dry_run: Report what would be removed, and remove nothing.
        upload_ttl_hours: How old an unfinished upload must be before it counts as abandoned.
    """
    configure_logging()
    rows = sweep_leftovers(upload_ttl_hours, dry_run)
    create_table_artifact(
        key="cleanup-report",
        table=rows or [{"kind": "-", "what": "nothing to clean", "age_h": 0, "action": "-"}],
        description=f"cleanup (dry_run={dry_run}, ttl={upload_ttl_hours} h)",
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["kind"])] = counts.get(str(row["kind"]), 0) + 1
    get_logger().info("cleanup_finished", dry_run=dry_run, **counts)
    return {"dry_run": dry_run, "findings": rows, "counts": counts}
