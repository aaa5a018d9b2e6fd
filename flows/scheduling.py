"""Scheduled posting and reconciliation: the `publish-due` and `reconcile-publishes` flows.

* ``publish-due`` (every minute) publishes queued publishes whose time has come, each exactly
  once: a row is claimed with a compare-and-swap before it is published, and the publish ledger
  behind ``publish_stored_media`` never posts a media to an account twice unless the row was
  queued with ``again`` (and then once per set of options, however often it is retried).
* ``reconcile-publishes`` (every 5 minutes) finishes publishes a poll deadline left in
  ``processing``: it only polls TikTok, it never re-inits.

Orchestration only; the queue lives in storage/schedule.py, TikTok I/O in tasks/.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.publish import publish_stored_media, resume_publish
from flows.run_context import run_owner
from reelflow.errors import ReelflowError
from reelflow.logging import configure_logging, get_logger
from reelflow.publish_rules import PROCESSING
from reelflow.settings import Settings
from storage import schedule
from storage.publishing import publishes_in
from storage.runtime import Runtime

STALE_CLAIM_AFTER = timedelta(hours=1)


@flow(name="publish-due", log_prints=True)
def publish_due(limit: int = 50) -> dict[str, Any]:
    """Publish every queued publish whose ``publish_at`` has passed, each exactly once.

    Args:
        limit: The most queued publishes handled in one run (the rest wait for the next one).
    """
    configure_logging()
    rt = Runtime.from_settings(Settings())
    engine = rt.catalog.engine
    owner = run_owner()
    now = datetime.now(UTC)
    schedule.requeue_stale_claims(engine, now - STALE_CLAIM_AFTER)
    batch: list[dict[str, Any]] = []
    for row in schedule.due_rows(engine, now, limit):
        if not schedule.claim(engine, row.id, owner):
            continue  # another publish-due run has it
        entry: dict[str, Any] = {
            "media_id": row.media_id,
            "account": row.account,
            "mode": row.mode,
            "due_at": row.due_at.isoformat(),
        }
        try:
            result = publish_stored_media(rt, row.media_id, schedule.queued_request(row))
        except ReelflowError as exc:
            # Retryable: back in the queue for the next run; terminal: reported, not retried.
            status = schedule.QUEUED if exc.retryable else schedule.FAILED
            schedule.finish(engine, row.id, status=status, error=str(exc)[:500])
            entry |= {"result": status, "publish_id": None, "status": None, "error": str(exc)}
        else:
            schedule.finish(engine, row.id, status=schedule.DONE, result=result)
            entry |= {
                "result": schedule.DONE,
                "publish_id": result.get("publish_id"),
                "status": result.get("status"),
                "error": None,
            }
        batch.append(entry)
    create_table_artifact(
        key="publish-due",
        table=batch or [{"media_id": "-", "result": "nothing due"}],
        description=f"publish-due batch at {now.isoformat(timespec='seconds')}",
    )
    get_logger().info("publish_due_finished", published=len(batch))
    return {"handled": len(batch), "batch": batch}


@flow(name="reconcile-publishes", log_prints=True)
def reconcile_publishes(limit: int = 50) -> dict[str, Any]:
    """Finish publishes left in ``processing`` by a poll deadline (poll only, never re-init).

    Args:
        limit: The most publishes handled in one run.
    """
    configure_logging()
    rt = Runtime.from_settings(Settings())
    rows = publishes_in(rt.catalog.engine, PROCESSING, limit=limit)
    done: list[dict[str, Any]] = []
    for row in rows:
        try:
            result = resume_publish(rt, row.id)  # this row, not whichever publish is latest
            done.append(
                {
                    "media_id": row.media_id,
                    "account": row.account,
                    "status": result.get("status"),
                    "post_id": result.get("post_id"),
                }
            )
        except ReelflowError as exc:
            done.append(
                {
                    "media_id": row.media_id,
                    "account": row.account,
                    "status": "error",
                    "post_id": None,
                    "error": str(exc),
                }
            )
    create_table_artifact(
        key="reconcile-publishes",
        table=done or [{"media_id": "-", "status": "nothing to reconcile"}],
        description="publishes finished by reconciliation",
    )
    return {"reconciled": len(done), "rows": done}
