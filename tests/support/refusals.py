"""What every refused input must leave behind: one typed line, exit 2, nothing stored, and no
retry spent (a refusal that a retry cannot fix must not be retried)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx


def now() -> datetime:
    return datetime.now(UTC)


def task_runs_since(api_url: str, since: datetime) -> list[dict[str, Any]]:
    """Task runs the Prefect API holds that started at or after ``since``."""
    reply = httpx.post(
        f"{api_url}/task_runs/filter",
        json={"task_runs": {"expected_start_time": {"after_": since.isoformat()}}, "limit": 200},
        timeout=30,
    )
    reply.raise_for_status()
    runs: list[dict[str, Any]] = reply.json()
    return runs


def assert_no_retry_spent(api_url: str, since: datetime) -> None:
    """No task run since ``since`` ran more than once or was ever scheduled for a retry."""
    retried = [
        (r["name"], r["run_count"], r.get("state_name"))
        for r in task_runs_since(api_url, since)
        if r["run_count"] > 1 or r.get("state_name") in ("AwaitingRetry", "Retrying")
    ]
    assert retried == [], retried


def assert_refused(result: Any, home: Path, reason: str | None = None) -> str:
    """Exit 2, exactly one ``error: <reason>: <message>`` line, nothing in the local store."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    if reason is not None:
        assert lines[0].startswith(f"error: {reason}:"), lines[0]
    objects = home / "objects"
    stored = [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []
    assert stored == [], stored
    return lines[0]
