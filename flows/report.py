"""The `daily-report` flow (scheduled daily): how the pipeline did in the last 24 h and 7 days.

Reads the stage log (every worker writes it, so the report covers every path: gateway, CLI, S3
events, UI), folds it with the pure rules of :mod:`reelflow.report_rules`, writes the week's
chart to the store (``reports/<date>.svg``) and publishes one Markdown artifact (key
``daily-report``, versioned: the Artifacts page keeps every day's). The chart is linked by
REELFLOW_PUBLIC_BASE_URL (then shown inline) or by its store URI; never by a presigned URL, whose
signature and access key id the Prefect database would keep.

Orchestration only: the figures are reelflow/report_rules.py, the text and the chart
reelflow/report_render.py, the reads storage/stages.py.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from reelflow import report_render, report_rules
from reelflow.errors import InputRejectedError, retry_if_retryable
from reelflow.logging import configure_logging, get_logger
from reelflow.report_rules import DAY, Event, Summary
from reelflow.settings import Settings
from storage import stages
from storage.runtime import Runtime

ARTIFACT_KEY = "daily-report"
CHART_PREFIX = "reports/"
MAX_DAYS = 31
# A run whose last byte came up to this long before the window still has its start in the
# rows read (its time to stored is then right); older starts count from the first row read.
LOOKBACK = timedelta(days=1)
# The rows the figures need: the start of a run, its last byte, its outcomes, and the start of
# a publish (a failure after it is a publish failure even when the media was stored long ago);
# not the intermediate stages.
REPORT_STAGES = (
    stages.RECEIVING,
    stages.RECEIVED,
    stages.VALIDATING,
    stages.STORED,
    stages.PUBLISHING,
    stages.PUBLISHED,
    stages.FAILED,
    stages.CANCELLED,
)


def chart_key(end: datetime) -> str:
    return f"{CHART_PREFIX}{end.astimezone(UTC):%Y-%m-%d}.svg"


# NO_CACHE on purpose: a report must read the log as it is now.
@task(
    name="load-stage-rows",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_if_retryable,
)
def load_stage_rows(start: datetime) -> list[Event]:
    rt = Runtime.from_settings(Settings())
    try:
        rows = stages.since(rt.catalog.engine, start, stages=REPORT_STAGES)
        return [report_rules.as_event(r) for r in rows]
    finally:
        rt.catalog.engine.dispose()


@task(
    name="store-report-chart",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_if_retryable,
)
def store_report_chart(key: str, svg: str) -> tuple[str, bool]:
    """Writes the chart (same day, same key: a re-run replaces it); returns (link, public)."""
    rt = Runtime.from_settings(Settings())
    try:
        rt.store.put_bytes(key, svg.encode(), "image/svg+xml")
        base = rt.settings.public_base_url
        if base:
            return f"{base.rstrip('/')}/{key}", True
        return rt.store.uri(key), False
    finally:
        rt.catalog.engine.dispose()


def _figures(s: Summary) -> dict[str, Any]:
    out = asdict(s)
    out["start"], out["end"] = s.start.isoformat(), s.end.isoformat()
    out["finished"] = s.finished
    return out


@flow(name="daily-report", log_prints=True)
def daily_report(end: datetime | None = None, days: int = 7) -> dict[str, Any]:
    """Publish the pipeline's report: success rate against the 95 % target, median and p95 time
    from the last byte to stored and to published, throughput, top failure reasons and per
    account, for the last 24 h and the last ``days``; with a chart of each day.

    Args:
        end: When the windows end (UTC; with a time zone). Empty = now.
        days: Length of the long window and of the chart, in days (1-31).
    """
    configure_logging()
    if end is None:
        end = datetime.now(UTC)
    if end.tzinfo is None:
        raise InputRejectedError("end needs a time zone (e.g. +00:00)", reason="naive_end")
    if not 1 <= days <= MAX_DAYS:
        raise InputRejectedError(f"days must be 1-{MAX_DAYS}, not {days}", reason="invalid_days")
    end = end.astimezone(UTC)
    week_start = end - days * DAY
    events = load_stage_rows(week_start - LOOKBACK)
    log = report_rules.runs_from(events)
    day = report_rules.summarize(log, end - DAY, end)
    week = report_rules.summarize(log, week_start, end)
    series = report_rules.daily_series(log, end, days)
    svg = report_render.svg_chart(
        series, title=f"reelflow, {days} days to {end:%Y-%m-%d %H:%M} UTC: videos per day"
    )
    link, public = store_report_chart(chart_key(end), svg)
    text = report_render.markdown(day, week, series, chart_link=link, chart_is_public=public)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=text,
        description=f"last 24 h and {days} days to {end:%Y-%m-%d %H:%M} UTC",
    )
    get_logger().info(
        "daily_report_published",
        stored_24h=day.stored,
        failed_24h=day.failed,
        success_rate_24h=day.success_rate,
        stored_week=week.stored,
        failed_week=week.failed,
        success_rate_week=week.success_rate,
    )
    return {
        "end": end.isoformat(),
        "chart_key": chart_key(end),
        "chart_link": link,
        "last_24h": _figures(day),
        "last_days": _figures(week),
        "series": [_figures(d) for d in series],
    }
