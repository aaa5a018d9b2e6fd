"""ProgressReporter against a real Prefect API: coalesced posts, the final value, failures."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prefect import flow
from prefect.artifacts import create_progress_artifact
from structlog.testing import capture_logs

from reelflow.progress import ProgressReporter


def read_artifact(api_url: str, artifact_id: Any) -> dict[str, Any]:
    resp = httpx.get(f"{api_url}/artifacts/{artifact_id}", timeout=30)
    resp.raise_for_status()
    return dict(resp.json())


def test_reports_coalesce_and_close_posts_the_last(prefect_api: str) -> None:
    @flow
    def reporting() -> tuple[Any, list[float]]:
        artifact_id = create_progress_artifact(progress=0.0)
        # An interval no test run reaches: after the first post, only close() posts again.
        with ProgressReporter(artifact_id, every_s=3600) as progress:
            progress.report(1, 10)
            for done in range(2, 11):
                progress.report(done, 10)
        return artifact_id, progress.posted

    artifact_id, posted = reporting()
    # Ten reports, at most two posts: whatever was newest when the thread woke, then the last.
    assert posted[-1] == 100.0 and len(posted) <= 2
    assert read_artifact(prefect_api, artifact_id)["data"] == 100.0


def test_a_failed_post_is_logged_not_raised(prefect_api: str) -> None:
    @flow
    def reporting() -> list[float]:
        with ProgressReporter(uuid.uuid4(), every_s=0) as progress:  # no such artifact: 404
            progress.report(5, 10)
        return progress.posted

    with capture_logs() as logs:
        assert reporting() == []
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["progress_update_failed"]


def test_close_without_reports_posts_nothing(prefect_api: str) -> None:
    @flow
    def reporting() -> tuple[Any, list[float]]:
        artifact_id = create_progress_artifact(progress=42.0)
        with ProgressReporter(artifact_id, every_s=0) as progress:
            pass
        return artifact_id, progress.posted

    artifact_id, posted = reporting()
    assert posted == []
    assert read_artifact(prefect_api, artifact_id)["data"] == 42.0
