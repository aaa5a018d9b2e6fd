"""Pure aggregation of the pipeline's stage log: what ``/metrics`` and the daily report say.

Input is a sequence of :class:`Event` (:func:`as_event` of a ``storage.stages.PipelineStage``).
:func:`runs_from` folds them, in id order, into a :class:`Log`: one :class:`Run` per
``run_key`` and one :class:`Publish` per publish; :func:`summarize` turns it into the figures of
one time window; :func:`daily_series` cuts a window into 24-hour buckets for the week's chart.

The rules, where the stage log leaves a choice:

* A run's ingest outcome is ``stored`` if it ever wrote ``stored`` (a Prefect retry after a
  failure that then stored counts as a success), else ``failed`` on an ingest failure, else
  ``cancelled``; otherwise it is still in flight and counts nowhere. A ``failed`` row after the
  run's ``stored`` or ``publishing`` row is a publish failure, not an ingest failure (a later
  publish of a media stored before the rows read has only its publish rows).
* Time from the last byte: from the run's ``received`` row (a gateway upload's last PATCH, a
  source's assembled upload), else from its first row. Time to published: the run's first
  post, from the same start.
* A publish is counted once, by its ledger row (``publish_row`` in the detail), under the first
  run that reports it (a publish on its own reports to every run that stored the media); a
  media published to two accounts is two publishes. Its account is the publish's.
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
from typing import Any, Protocol

SUCCESS_TARGET = 0.95
TOP_REASONS = 5
NO_ACCOUNT = "(none)"
UNKNOWN_REASON = "unknown"
DAY = timedelta(days=1)


class StageRow(Protocol):
    """What this module reads of a ``pipeline_stage`` row (``detail`` is its JSON, parsed)."""

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
    @property
    def detail(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Event:
    """A stage row as plain data: what the fold reads (``publish_row``: the publish ledger
    row a publish's rows name, so a publish reported to several runs counts once)."""

    id: int | None
    run_key: str
    stage: str
    at: datetime
    account: str | None = None
    origin: str | None = None
    size_bytes: int | None = None
    reason: str | None = None
    publish_row: str | None = None


def as_event(row: StageRow) -> Event:
    publish_row = row.detail.get("publish_row")
    return Event(
        id=row.id,
        run_key=row.run_key,
        stage=row.stage,
        at=row.at,
        account=row.account,
        origin=row.origin,
        size_bytes=row.size_bytes,
        reason=row.reason,
        publish_row=None if publish_row is None else str(publish_row),
    )


@dataclass
class Run:
    """One ingest run's story as the stage log tells it (times are the rows' ``at``)."""

    run_key: str
    first_at: datetime
    account: str | None = None
    origin: str | None = None
    size_bytes: int | None = None
    received_at: datetime | None = None
    stored_at: datetime | None = None
    ingest_failed_at: datetime | None = None
    ingest_reason: str | None = None
    cancelled_at: datetime | None = None
    publishes: list[str] = field(default_factory=list)  # keys into Log.publishes, in order

    @property
    def last_byte_at(self) -> datetime:
        return self.received_at or self.first_at

    @property
    def ingest_outcome(self) -> tuple[str, datetime] | None:
        """(``stored`` | ``failed`` | ``cancelled``, when), or None while in flight (or when
        only its publish rows were read)."""
        if self.stored_at is not None:
            return "stored", self.stored_at
        if self.ingest_failed_at is not None:
            return "failed", self.ingest_failed_at
        if self.cancelled_at is not None:
            return "cancelled", self.cancelled_at
        return None

    @property
    def to_stored_s(self) -> float | None:
        if self.stored_at is None:
            return None
        return max(0.0, (self.stored_at - self.last_byte_at).total_seconds())


@dataclass
class Publish:
    """One publish (a publish ledger row), reported under the first run that named it."""

    key: str
    run_key: str
    account: str | None
    published_at: datetime | None = None
    failed_at: datetime | None = None
    reason: str | None = None
    since_s: float | None = None  # the run's first post: from its last byte to published

    @property
    def outcome(self) -> tuple[str, datetime] | None:
        """(``published`` | ``failed``, when), or None while in flight."""
        if self.published_at is not None:
            return "published", self.published_at
        if self.failed_at is not None:
            return "failed", self.failed_at
        return None


@dataclass
class Log:
    """The fold of a stage log: runs by run key, publishes by key."""

    runs: dict[str, Run] = field(default_factory=dict)
    publishes: dict[str, Publish] = field(default_factory=dict)


def _order(row: StageRow | Event) -> tuple[int, datetime]:
    return (row.id if row.id is not None else 0, row.at)


def _new_publish(log: Log, run: Run, row: Event, key: str) -> Publish:
    publish = log.publishes[key] = Publish(
        key=key, run_key=run.run_key, account=row.account or run.account
    )
    run.publishes.append(key)
    return publish


def _publish_for(log: Log, run: Run, row: Event, *, starts: bool) -> Publish | None:
    """The publish ``row`` reports on; None when another run owns it (a publish on its own
    reports to every run that stored the media: the first one counts it)."""
    if row.publish_row is not None:
        key = f"p:{row.publish_row}"
        found = log.publishes.get(key)
        if found is not None:
            return found if found.run_key == run.run_key else None
        return _new_publish(log, run, row, key)
    # Rows without a ledger id: ``publishing`` starts one unless the latest is still open;
    # ``published`` and ``failed`` go to the latest (or one whose start was not read).
    if run.publishes:
        latest = log.publishes[run.publishes[-1]]
        if not starts or latest.outcome is None:
            return latest
    return _new_publish(log, run, row, f"{run.run_key}#{len(run.publishes) + 1}")


def runs_from(rows: Iterable[Event]) -> Log:
    """The runs and publishes of ``rows``, folded in id order."""
    log = Log()
    for row in sorted(rows, key=_order):
        run = log.runs.get(row.run_key)
        if run is None:
            run = log.runs[row.run_key] = Run(run_key=row.run_key, first_at=row.at)
        stage = row.stage
        if stage not in ("publishing", "published") and not (
            stage == "failed" and _is_publish_failure(run, row)
        ):
            run.account = row.account or run.account
            run.origin = row.origin or run.origin
        if stage == "received" and run.received_at is None:
            run.received_at = row.at
        elif stage == "stored" and run.stored_at is None:
            run.stored_at = row.at
            run.size_bytes = row.size_bytes if row.size_bytes is not None else run.size_bytes
        elif stage == "cancelled" and run.cancelled_at is None:
            run.cancelled_at = row.at
        elif stage == "publishing":
            _publish_for(log, run, row, starts=True)
        elif stage == "published":
            publish = _publish_for(log, run, row, starts=False)
            if publish is not None and publish.published_at is None:
                first = not any(log.publishes[k].published_at for k in run.publishes)
                publish.published_at = row.at
                if first and run.stored_at is not None:
                    publish.since_s = max(0.0, (row.at - run.last_byte_at).total_seconds())
        elif stage == "failed":
            if _is_publish_failure(run, row):
                publish = _publish_for(log, run, row, starts=False)
                if publish is not None and publish.failed_at is None:
                    publish.failed_at, publish.reason = row.at, row.reason or UNKNOWN_REASON
            elif run.ingest_failed_at is None:
                run.ingest_failed_at, run.ingest_reason = row.at, row.reason or UNKNOWN_REASON
    return log


def _is_publish_failure(run: Run, row: Event) -> bool:
    """A ``failed`` row naming a publish, or after the run's ``stored`` or ``publishing``."""
    return row.publish_row is not None or run.stored_at is not None or bool(run.publishes)


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


def _account_summaries(log: Log, start: datetime, end: datetime) -> list[AccountSummary]:
    by_account: dict[str, Log] = {}
    for run in log.runs.values():
        by_account.setdefault(run.account or NO_ACCOUNT, Log()).runs[run.run_key] = run
    for publish in log.publishes.values():
        by_account.setdefault(publish.account or NO_ACCOUNT, Log()).publishes[publish.key] = publish
    out = []
    for account, part in by_account.items():
        s = _summarize(part, start, end, per_account=False)
        if s.stored + s.failed + s.published + s.publish_failed:
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
    return out


def summarize(log: Log, start: datetime, end: datetime) -> Summary:
    """The figures of the runs and publishes whose outcome fell in ``[start, end)``."""
    if end <= start:
        raise ValueError("a window must end after it starts")
    return _summarize(log, start, end, per_account=True)


def _summarize(log: Log, start: datetime, end: datetime, *, per_account: bool) -> Summary:
    stored = failed = cancelled = published = publish_failed = stored_bytes = 0
    to_stored: list[float] = []
    to_published: list[float] = []
    reasons: Counter[str] = Counter()
    for run in log.runs.values():
        ingest = run.ingest_outcome
        if ingest is None or not _within(ingest[1], start, end):
            continue
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
    for publish in log.publishes.values():
        outcome = publish.outcome
        if outcome is None or not _within(outcome[1], start, end):
            continue
        if outcome[0] == "published":
            published += 1
            if publish.since_s is not None:
                to_published.append(publish.since_s)
        else:
            publish_failed += 1
            reasons[publish.reason or UNKNOWN_REASON] += 1
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
        per_account=tuple(_account_summaries(log, start, end)) if per_account else (),
    )


def daily_series(log: Log, end: datetime, days: int = 7) -> list[Summary]:
    """``days`` consecutive 24-hour windows ending at ``end``, oldest first (their sums are
    the figures of the whole window: an outcome falls in exactly one)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    return [
        _summarize(log, end - (days - i) * DAY, end - (days - i - 1) * DAY, per_account=False)
        for i in range(days)
    ]
