"""structlog events inside a real Prefect run: a readable message, fields kept structured."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run

from reelflow.logging import redact_secrets, to_prefect_run_logger
from tests.support.waiting import wait_for


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _routed_logger() -> Any:
    # The production chain up to the routing step, on its own logger: no global configure.
    return structlog.wrap_logger(
        structlog.testing.CapturingLogger(),
        processors=[structlog.processors.add_log_level, redact_secrets, to_prefect_run_logger],
    )


def test_event_fields_reach_the_run_log_record_as_values(prefect_api: str) -> None:
    """Each field is a record attribute with its own type; the message stays one readable line;
    a field named like the run logger's own extra (flow_run_id) does not re-route the record."""
    handler = _Records()
    run_logger = logging.getLogger("prefect.flow_runs")
    run_logger.addHandler(handler)

    @flow(name="log-routing-probe")
    def probe() -> str:
        _routed_logger().info(
            "chunk_uploaded",
            media_id="m-routing",
            part_number=3,
            sizes={"bytes": 10},
            flow_run_id="not-the-run",
            access_token="act.canary-routing-1",
        )
        return str(flow_run.get_id())

    try:
        run_id = probe()
    finally:
        run_logger.removeHandler(handler)
    [record] = [r for r in handler.records if getattr(r, "event", None) == "chunk_uploaded"]
    fields: Any = record.__dict__
    assert fields["media_id"] == "m-routing" and fields["part_number"] == 3
    assert fields["sizes"] == {"bytes": 10}
    assert str(fields["flow_run_id"]) == run_id  # Prefect's, not the event's
    assert fields["event_fields"]["flow_run_id"] == "not-the-run"
    assert fields["access_token"] == "***" and "canary" not in record.getMessage()
    assert record.getMessage().startswith("chunk_uploaded media_id=m-routing part_number=3")

    APILogHandler().flush()

    def shipped() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=0,
            )
        return [log.message for log in logs if log.message.startswith("chunk_uploaded")]

    [message] = wait_for(shipped, "the event in the run's API logs", timeout_s=20)
    assert "part_number=3" in message and "canary" not in message
