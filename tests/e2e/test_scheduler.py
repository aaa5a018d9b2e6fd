"""The server's own scheduler creates runs of the served ``publish-due`` deployment, and the
runner executes them to Completed.

This is the test that was missing when SQLAlchemy 2.1 broke Prefect 3.8.8's scheduler
(``schedule_deployments`` failed on every loop and created 0 runs): a real ``prefect server
start`` with its services, ``reelflow serve`` serving every deployment of prefect.yaml, and no
run created by the test itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.prefect_server import (
    BIN,
    REPO,
    PrefectServer,
    prefect_api,
    start_process,
    stop_process,
    wait_until_served,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

# publish-due runs every 60 s from an anchor at serve time; the runner polls every 10 s.
FIRST_RUN_WAIT_S = 240


def _publish_due_runs(api: str, *states: str) -> list[dict[str, Any]]:
    """Runs of the publish-due deployment (in ``states``, if given), asked of the API itself:
    the scheduler keeps an hour of future runs, so an unfiltered page would hold only those."""
    deployments = prefect_api(
        "POST",
        f"{api}/deployments/filter",
        json={"deployments": {"name": {"any_": ["publish-due"]}}},
    ).json()
    if not deployments:
        return []
    body: dict[str, Any] = {
        "deployments": {"id": {"any_": [d["id"] for d in deployments]}},
        "limit": 200,
    }
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": list(states)}}}
    reply = prefect_api("POST", f"{api}/flow_runs/filter", json=body)
    reply.raise_for_status()
    runs: list[dict[str, Any]] = reply.json()
    return runs


def test_scheduler_creates_publish_due_runs_that_complete(tmp_path: Path) -> None:
    """Scheduled runs of publish-due appear without any client creating them, and complete."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with PrefectServer(
        log_dir=logs,
        # The scheduler's loop is 60 s by default; 2 s keeps the test to the schedule's own pace.
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
    ) as server:
        env = server.env(
            REELFLOW_HOME=str(tmp_path / "home"),
            PREFECT_RUNNER_POLL_FREQUENCY="2",
        )
        serve = start_process([str(BIN / "reelflow"), "serve"], env, logs / "serve.log", REPO)
        try:
            wait_until_served(serve, logs / "serve.log", 120)
            scheduled = wait_for(
                lambda: [r for r in _publish_due_runs(server.api_url) if r["auto_scheduled"]],
                "the scheduler to create publish-due runs",
                60,
                poll_s=1,
            )
            assert all(r["auto_scheduled"] for r in scheduled)

            def completed() -> list[dict[str, Any]]:
                assert serve.poll() is None, (logs / "serve.log").read_text()[-4000:]
                ended = _publish_due_runs(server.api_url, "FAILED", "CRASHED", "CANCELLED")
                assert ended == [], [(r["name"], r["state_name"]) for r in ended]
                return [
                    r for r in _publish_due_runs(server.api_url, "COMPLETED") if r["auto_scheduled"]
                ]

            done = wait_for(
                completed, "a scheduled publish-due run to complete", FIRST_RUN_WAIT_S, 1
            )
            assert done[0]["state_name"] == "Completed"
        finally:
            stop_process(serve)
        scheduler_errors = [
            ln
            for ln in server.log_path.read_text(errors="replace").splitlines()
            if "InvalidRequestError" in ln or "bulk DML" in ln
        ]
        assert scheduler_errors == []
