"""Pure aggregation of the pipeline's stage log: what ``/metrics`` and the daily report say.

Input is any sequence of stage rows (``storage.stages.PipelineStage`` fits :class:`StageRow`;
tests build :class:`Event`). :func:`runs_from` folds them, in id order, into one :class:`Run`
per ``run_key``; :func:`summarize` turns the runs into the figures of one time window;
:func:`daily_series` cuts a window into 24-hour buckets for the week's chart.

The rules, where the stage log leaves a choice:

* A run's ingest outcome is ``stored`` if it ever wrote ``stored`` (a Prefect retry after a
  failure that then stored counts as a success), else ``failed`` on an ingest failure, else
  ``cancelled``; otherwise it is still in flight and counts nowhere. A ``failed`` row after the
  run's ``stored`` or ``publishing`` row is a publish failure, not an ingest failure (a later
  publish of a media stored before the rows read has only its publish rows).
* Time from the last byte: from the run's ``received`` row (a gateway upload); a run of another
  path (CLI, S3 event, UI) has its whole source before it starts, so from its first row.
* A run belongs to a window by the time of its outcome row; publishes by the time of theirs.
* Success rate = stored / (stored + failed): a creator's cancel is not a failure. The target is
  :data:`SUCCESS_TARGET`.
* Quantiles interpolate linearly between order statistics (numpy's default, so the median of
  an even count is the mean of the middle two).

Must not: read a clock, a database or anything else; every time comes in as an argument.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

SUCCESS_TARGET = 0.95
TOP_REASONS = 5
NO_ACCOUNT = "(none)"
UNKNOWN_REASON = "unknown"
DAY = timedelta(days=1)


class StageRow(Protocol):
    """What this module reads of a ``pipeline_stage`` row."""

    @property
    def id(self) -> int | None: ...
    @property
    def run_key(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def account(self) -> str | None: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def size_bytes(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class Event:
    """A stage row as plain data (tests; the report flow's task results)."""

    id: int | None
    run_key: str
    stage: str
    at: datetime
    account: str | None = None
    origin: str | None = None
    size_bytes: int | None = None
    reason: str | None = None


def as_event(row: StageRow) -> Event:
    return Event(
        id=row.id,
        run_key=row.run_key,
        stage=row.stage,
        at=row.at,
        account=row.account,
        origin=row.origin,
        size_bytes=row.size_bytes,
        reason=row.reason,
    )


@dataclass
class Run:
    """One run's story as the stage log tells it (times are the rows' ``at``)."""

    run_key: str
    first_at: datetime
    account: str | None = None
    origin: str | None = None
    size_bytes: int | None = None
    received_at: datetime | None = None
    stored_at: datetime | None = None
    publishing_at: datetime | None = None
    published_at: datetime | None = None
    ingest_failed_at: datetime | None = None
    ingest_reason: str | None = None
    publish_failed_at: datetime | None = None
    publish_reason: str | None = None
    cancelled_at: datetime | None = None

    @property
    def last_byte_at(self) -> datetime:
        return self.received_at or self.first_at

    @property
    def ingest_outcome(self) -> tuple[str, datetime] | None:
        """(``stored`` | ``failed`` | ``cancelled``, when), or None while in flight."""
        if self.stored_at is not None:
            return "stored", self.stored_at
        if self.ingest_failed_at is not None:
            return "failed", self.ingest_failed_at
        if self.cancelled_at is not None:
            return "cancelled", self.cancelled_at
        return None

    @property
    def publish_outcome(self) -> tuple[str, datetime] | None:
        """(``published`` | ``failed``, when), or None (no publish, or still in flight)."""
        if self.published_at is not None:
            return "published", self.published_at
        if self.publish_failed_at is not None:
            return "failed", self.publish_failed_at
        return None

    @property
    def to_stored_s(self) -> float | None:
        if self.stored_at is None:
            return None
        return max(0.0, (self.stored_at - self.last_byte_at).total_seconds())

    @property
    def to_published_s(self) -> float | None:
        # Without its stored row (stored before the rows read) the run's start is not known.
        if self.published_at is None or self.stored_at is None:
            return None
        return max(0.0, (self.published_at - self.last_byte_at).total_seconds())


def _order(row: StageRow) -> tuple[int, datetime]:
    return (row.id if row.id is not None else 0, row.at)


def runs_from(rows: Iterable[StageRow]) -> dict[str, Run]:
    """One :class:`Run` per ``run_key``, folded from ``rows`` in id order."""
    runs: dict[str, Run] = {}
    for row in sorted(rows, key=_order):
        run = runs.get(row.run_key)
        if run is None:
            run = runs[row.run_key] = Run(run_key=row.run_key, first_at=row.at)
        run.account = row.account or run.account
        run.origin = row.origin or run.origin
        if row.size_bytes is not None:
            run.size_bytes = row.size_bytes
        stage = row.stage
        if stage == "received" and run.received_at is None:
            run.received_at = row.at
        elif stage == "stored" and run.stored_at is None:
            run.stored_at = row.at
        elif stage == "publishing" and run.publishing_at is None:
            run.publishing_at = row.at
        elif stage == "published" and run.published_at is None:
            run.published_at = row.at
        elif stage == "cancelled" and run.cancelled_at is None:
            run.cancelled_at = row.at
        elif stage == "failed":
            reason = row.reason or UNKNOWN_REASON
            if run.stored_at is not None or run.publishing_at is not None:
                run.publish_failed_at, run.publish_reason = row.at, reason
            else:
                run.ingest_failed_at, run.ingest_reason = row.at, reason
    return runs


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside 0..1")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


@dataclass(frozen=True)
class Durations:
    count: int
    median_s: float | None
    p95_s: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Durations:
        return cls(len(values), quantile(values, 0.5), quantile(values, 0.95))


def rate(good: int, bad: int) -> float | None:
    return good / (good + bad) if good + bad else None


@dataclass(frozen=True)
class AccountSummary:
    account: str
    stored: int
    failed: int
    success_rate: float | None
    published: int
    publish_failed: int
    median_to_stored_s: float | None
    stored_bytes: int


@dataclass(frozen=True)
class Summary:
    """The figures of one window ``[start, end)``."""

    start: datetime
    end: datetime
    stored: int
    failed: int
    cancelled: int
    success_rate: float | None
    meets_target: bool | None
    to_stored: Durations
    to_published: Durations
    published: int
    publish_failed: int
    publish_success_rate: float | None
    stored_bytes: int
    throughput_bytes_s: float
    top_reasons: tuple[tuple[str, int], ...]
    per_account: tuple[AccountSummary, ...] = field(default_factory=tuple)

    @property
    def finished(self) -> int:
        return self.stored + self.failed


def _within(at: datetime, start: datetime, end: datetime) -> bool:
    return start <= at < end


def _account_summaries(runs: Sequence[Run], start: datetime, end: datetime) -> list[AccountSummary]:
    by_account: dict[str, list[Run]] = {}
    for run in runs:
        by_account.setdefault(run.account or NO_ACCOUNT, []).append(run)
    out = []
    for account in sorted(by_account):
        s = _summarize(by_account[account], start, end, per_account=False)
        out.append(
            AccountSummary(
                account=account,
                stored=s.stored,
                failed=s.failed,
                success_rate=s.success_rate,
                published=s.published,
                publish_failed=s.publish_failed,
                median_to_stored_s=s.to_stored.median_s,
                stored_bytes=s.stored_bytes,
            )
        )
    # Busiest first: an operator reads the top of the table.
    out.sort(key=lambda a: (-(a.stored + a.failed + a.published + a.publish_failed), a.account))
    return [a for a in out if a.stored + a.failed + a.published + a.publish_failed]


def summarize(runs: Iterable[Run], start: datetime, end: datetime) -> Summary:
    """The figures of the runs whose outcome fell in ``[start, end)``."""
    if end <= start:
        raise ValueError("a window must end after it starts")
    return _summarize(list(runs), start, end, per_account=True)


def _summarize(
    runs: Sequence[Run], start: datetime, end: datetime, *, per_account: bool
) -> Summary:
    stored = failed = cancelled = published = publish_failed = stored_bytes = 0
    to_stored: list[float] = []
    to_published: list[float] = []
    reasons: Counter[str] = Counter()
    for run in runs:
        ingest = run.ingest_outcome
        if ingest is not None and _within(ingest[1], start, end):
            if ingest[0] == "stored":
                stored += 1
                stored_bytes += run.size_bytes or 0
                if run.to_stored_s is not None:
                    to_stored.append(run.to_stored_s)
            elif ingest[0] == "failed":
                failed += 1
                reasons[run.ingest_reason or UNKNOWN_REASON] += 1
            else:
                cancelled += 1
        publish = run.publish_outcome
        if publish is not None and _within(publish[1], start, end):
            if publish[0] == "published":
                published += 1
                if run.to_published_s is not None:
                    to_published.append(run.to_published_s)
            else:
                publish_failed += 1
                reasons[run.publish_reason or UNKNOWN_REASON] += 1
    success = rate(stored, failed)
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    return Summary(
        start=start,
        end=end,
        stored=stored,
        failed=failed,
        cancelled=cancelled,
        success_rate=success,
        meets_target=None if success is None else success >= SUCCESS_TARGET,
        to_stored=Durations.of(to_stored),
        to_published=Durations.of(to_published),
        published=published,
        publish_failed=publish_failed,
        publish_success_rate=rate(published, publish_failed),
        stored_bytes=stored_bytes,
        throughput_bytes_s=stored_bytes / (end - start).total_seconds(),
        top_reasons=tuple(top),
        per_account=tuple(_account_summaries(runs, start, end)) if per_account else (),
    )


def daily_series(runs: Iterable[Run], end: datetime, days: int = 7) -> list[Summary]:
    """``days`` consecutive 24-hour windows ending at ``end``, oldest first (their sums are
    the figures of the whole window: a run's outcome falls in exactly one)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    listed = list(runs)
    return [
        _summarize(listed, end - (days - i) * DAY, end - (days - i - 1) * DAY, per_account=False)
        for i in range(days)
    ]
