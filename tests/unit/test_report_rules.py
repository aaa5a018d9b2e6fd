"""The report's pure rules (reelflow/report_rules.py), its rendering, and the metrics' fold.

Hypothesis builds stage logs of many runs (gateway and CLI shaped, stored, failed in ingest or
in publish, cancelled, in flight) and checks what must hold whatever the log: quantiles stay
inside the data, the days of the chart add up to the week, the accounts add up to the total,
the fold of ``/metrics`` does not depend on how the rows are batched and agrees with the
report's counts.
"""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.gateway.metrics import CatalogFigures, Hist
from reelflow import report_render
from reelflow.report_rules import (
    DAY,
    NO_ACCOUNT,
    SUCCESS_TARGET,
    Event,
    Log,
    daily_series,
    quantile,
    runs_from,
    summarize,
)

END = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
WEEK_START = END - 7 * DAY
ACCOUNTS = [None, "main", "studio", "brand.b"]
REASONS = ["invalid_codec", "infected", "video_too_long", "privacy_level_not_offered", None]

floats = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


# --- quantiles -------------------------------------------------------------------------------------


@given(st.lists(floats, min_size=1, max_size=60), st.floats(min_value=0, max_value=1))
def test_quantile_lies_within_the_data_and_ignores_order(values: list[float], q: float) -> None:
    """Any quantile is between min and max, and the same for any order of the values."""
    got = quantile(values, q)
    assert got is not None
    assert min(values) <= got <= max(values)
    assert quantile(list(reversed(values)), q) == got


@given(st.lists(floats, min_size=1, max_size=60))
def test_median_is_the_statistics_median_and_below_p95(values: list[float]) -> None:
    """The median is statistics.median's (mean of the middle two for an even count), and
    the p95 is never below it."""
    median = quantile(values, 0.5)
    p95 = quantile(values, 0.95)
    assert median == pytest.approx(statistics.median(values))
    assert median is not None and p95 is not None and median <= p95


def test_quantile_edges() -> None:
    """No values: None; q outside 0..1: ValueError; known p95 of 1..20 by interpolation."""
    assert quantile([], 0.5) is None
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)
    assert quantile([float(i) for i in range(1, 21)], 0.95) == pytest.approx(19.05)


# --- stage logs ------------------------------------------------------------------------------------


@st.composite
def stage_logs(draw: st.DrawFn) -> list[Event]:
    """Rows of up to 25 runs over the week (and a day before it), ids in write order."""
    pending: list[tuple[datetime, str, str, str | None, str | None, int, str]] = []
    for n in range(draw(st.integers(0, 25))):
        key = f"run-{n}"
        account = draw(st.sampled_from(ACCOUNTS))
        gateway = draw(st.booleans())
        origin = "gateway" if gateway else draw(st.sampled_from(["cli", "s3-event", "ui"]))
        start = WEEK_START - DAY + timedelta(seconds=draw(st.integers(0, 8 * 86400)))
        size = draw(st.integers(1, 4 * 2**30))
        t = start
        steps: list[tuple[str, str | None]] = []
        if gateway:
            steps += [("receiving", None), ("received", None)]
        steps.append(("validating", None))
        fate = draw(st.sampled_from(["stored", "ingest_failed", "cancelled", "in_flight"]))
        if fate == "stored":
            steps += [("scanning", None), ("storing", None), ("stored", None)]
            publish = draw(st.sampled_from(["none", "published", "failed"]))
            if publish != "none":
                steps.append(("publishing", None))
                steps.append(
                    ("published", None)
                    if publish == "published"
                    else ("failed", draw(st.sampled_from(REASONS)))
                )
        elif fate == "ingest_failed":
            steps.append(("failed", draw(st.sampled_from(REASONS))))
        elif fate == "cancelled":
            steps.append(("cancelled", None))
        for stage, reason in steps:
            t += timedelta(seconds=draw(st.integers(0, 3 * 3600)))
            pending.append((t, key, stage, account, reason, size, origin))
    pending.sort(key=lambda p: p[0])  # ids grow with time, as the catalog hands them out
    return [
        Event(
            id=i + 1,
            run_key=key,
            stage=stage,
            at=at,
            account=account,
            origin=origin,
            size_bytes=size if stage == "stored" else None,
            reason=reason,
        )
        for i, (at, key, stage, account, reason, size, origin) in enumerate(pending)
    ]


@settings(max_examples=150)
@given(stage_logs(), st.randoms())
def test_runs_do_not_depend_on_the_order_rows_arrive(log: list[Event], rnd: object) -> None:
    """runs_from folds in id order, whatever order the rows are handed over in."""
    shuffled = list(log)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert runs_from(shuffled) == runs_from(log)


@settings(max_examples=150)
@given(stage_logs())
def test_the_days_add_up_to_the_week(log: list[Event]) -> None:
    """Each run's outcome falls in exactly one day: the 7 daily windows sum to the week's."""
    runs = runs_from(log)
    week = summarize(runs, WEEK_START, END)
    days = daily_series(runs, END, 7)
    assert days[0].start == WEEK_START and days[-1].end == END
    for name in ("stored", "failed", "cancelled", "published", "publish_failed", "stored_bytes"):
        assert sum(getattr(d, name) for d in days) == getattr(week, name), name
    assert sum(d.to_stored.count for d in days) == week.to_stored.count


@settings(max_examples=150)
@given(stage_logs())
def test_summary_is_consistent(log: list[Event]) -> None:
    """Rates in 0..1 and against the target; durations non-negative with median ≤ p95;
    reasons cover at most the failures; the accounts add up to the total."""
    runs = runs_from(log)
    s = summarize(runs, WEEK_START, END)
    if s.finished:
        assert s.success_rate is not None and 0 <= s.success_rate <= 1
        assert s.meets_target == (s.success_rate >= SUCCESS_TARGET)
    else:
        assert s.success_rate is None and s.meets_target is None
    for d in (s.to_stored, s.to_published):
        if d.count:
            assert d.median_s is not None and d.p95_s is not None
            assert 0 <= d.median_s <= d.p95_s
    assert sum(n for _, n in s.top_reasons) <= s.failed + s.publish_failed
    assert s.to_stored.count == s.stored  # every stored run has a start
    for name in ("stored", "failed", "published", "publish_failed", "stored_bytes"):
        assert sum(getattr(a, name) for a in s.per_account) == getattr(s, name), name
    assert s.throughput_bytes_s == pytest.approx(s.stored_bytes / (7 * 86400))


def test_a_known_week() -> None:
    """Figures of a hand-made log: a gateway upload stored in 40 s and published 100 s after
    its last byte, a CLI ingest stored 20 s after its start, one ingest failure, one publish
    failure, a cancel (not a failure), and a run stored before the window (not counted)."""
    t = END - timedelta(hours=2)
    rows = [
        ("g1", "receiving", t - timedelta(minutes=10), "main", None, None),
        ("g1", "received", t, "main", None, None),
        ("g1", "validating", t + timedelta(seconds=5), "main", None, None),
        ("g1", "stored", t + timedelta(seconds=40), "main", None, 1000),
        ("g1", "publishing", t + timedelta(seconds=41), "main", None, None),
        ("g1", "published", t + timedelta(seconds=100), "main", None, None),
        ("c1", "validating", t, None, None, None),
        ("c1", "stored", t + timedelta(seconds=20), None, None, 500),
        ("c1", "publishing", t + timedelta(seconds=21), None, None, None),
        ("c1", "failed", t + timedelta(seconds=30), None, "privacy_level_not_offered", None),
        ("f1", "validating", t, "main", None, None),
        ("f1", "failed", t + timedelta(seconds=3), "main", "invalid_codec", None),
        ("x1", "received", t, "main", None, None),
        ("x1", "cancelled", t + timedelta(seconds=3), "main", None, None),
        ("old", "validating", END - 3 * DAY, "main", None, None),
        ("old", "stored", END - 3 * DAY + timedelta(seconds=60), "main", None, 7),
    ]
    log = [
        Event(i + 1, k, stage, at, account=a, reason=r, size_bytes=size)
        for i, (k, stage, at, a, r, size) in enumerate(rows)
    ]
    runs = runs_from(log)
    day = summarize(runs, END - DAY, END)
    assert (day.stored, day.failed, day.cancelled) == (2, 1, 1)
    assert day.success_rate == pytest.approx(2 / 3) and day.meets_target is False
    assert day.to_stored.median_s == pytest.approx(30.0)  # (40 + 20) / 2
    assert day.to_published.median_s == pytest.approx(100.0)
    assert (day.published, day.publish_failed) == (1, 1)
    assert day.stored_bytes == 1500
    assert day.top_reasons == (("invalid_codec", 1), ("privacy_level_not_offered", 1))
    accounts = {a.account: a for a in day.per_account}
    assert set(accounts) == {"main", NO_ACCOUNT}
    assert (accounts["main"].stored, accounts["main"].failed) == (1, 1)
    week = summarize(runs, WEEK_START, END)
    assert week.stored == 3 and week.to_stored.count == 3


# --- rendering -------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(stage_logs())
def test_markdown_and_chart_render_any_log(log: list[Event]) -> None:
    """The Markdown names both windows; the SVG is well-formed XML with one pair of bars per
    day and no script or external reference."""
    runs = runs_from(log)
    day = summarize(runs, END - DAY, END)
    week = summarize(runs, WEEK_START, END)
    series = daily_series(runs, END, 7)
    text = report_render.markdown(
        day, week, series, chart_link="s3://b/reports/x.svg", chart_is_public=False
    )
    assert "| last 24 h | last 7 days |" in text
    assert f"| uploads finished (stored + failed) | {day.finished} | {week.finished} |" in text
    assert "![" not in text  # a store URI is a link, not an image
    svg = report_render.svg_chart(series, title="a <week> & more")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}rect")) == 1 + 2 * 7 + 3  # background, bars, legend
    assert "<script" not in svg and "href" not in svg
    assert root.find(f"{ns}text").text == "a <week> & more"  # type: ignore[union-attr]


def test_public_chart_is_shown_inline() -> None:
    """With a public link the chart is an image in the Markdown."""
    s = summarize(Log(), END - DAY, END)
    text = report_render.markdown(
        s, s, [s], chart_link="https://cdn.example/reports/x.svg", chart_is_public=True
    )
    assert "![videos stored and failed per day, success rate](https://cdn.example/" in text
    assert "– (nothing finished)" in text


# --- the metrics' fold -----------------------------------------------------------------------------


def fold_in_batches(log: list[Event], cuts: list[int]) -> CatalogFigures:
    figures = CatalogFigures()
    bounds = sorted({0, len(log), *(c for c in cuts if 0 < c < len(log))})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        new = log[lo:hi]
        keys = {r.run_key for r in new}
        context = [r for r in log[:hi] if r.run_key in keys]
        figures.fold(new, context)
    return figures


@settings(max_examples=150)
@given(stage_logs(), st.lists(st.integers(0, 200), max_size=8))
def test_metrics_fold_does_not_depend_on_batching(log: list[Event], cuts: list[int]) -> None:
    """Folding the log in any batches gives the same counters and histograms as one batch."""
    one = fold_in_batches(log, [])
    many = fold_in_batches(log, cuts)
    assert many == one
    assert one.cursor == (log[-1].id if log else 0)


@settings(max_examples=150)
@given(stage_logs())
def test_metrics_counts_agree_with_the_report(log: list[Event]) -> None:
    """Over a window holding every row, the metrics' ingest and publish counters and the
    report's run counts are the same numbers (each run here ends at most once)."""
    figures = fold_in_batches(log, [])
    runs = runs_from(log)
    s = summarize(runs, WEEK_START - 2 * DAY, END + 3 * DAY)

    def ingests(outcome: str) -> int:
        return sum(n for (o, _, _), n in figures.ingests.items() if o == outcome)

    assert (ingests("stored"), ingests("failed"), ingests("cancelled")) == (
        s.stored,
        s.failed,
        s.cancelled,
    )
    published = sum(n for (o, _), n in figures.publishes.items() if o == "published")
    failed = sum(n for (o, _), n in figures.publishes.items() if o == "failed")
    assert (published, failed) == (s.published, s.publish_failed)
    assert figures.to_stored_s.n == s.to_stored.count
    assert figures.to_published_s.n == s.to_published.count
    assert figures.to_stored_s.total == pytest.approx(
        sum(r.to_stored_s or 0 for r in runs.runs.values() if r.stored_at), rel=1e-9, abs=1e-6
    )
    assert figures.stored_bytes == s.stored_bytes


@given(st.lists(floats, max_size=50))
def test_histogram_buckets_are_cumulative(values: list[float]) -> None:
    """Bucket counts never decrease and +Inf holds every observation."""
    h = Hist()
    for v in values:
        h.observe(v)
    counts = [c for _, c in h.buckets()]
    assert counts == sorted(counts)
    assert h.buckets()[-1] == ("+Inf", float(len(values)))
    assert h.total == pytest.approx(sum(values))


def test_only_the_busiest_accounts_are_listed() -> None:
    """Past 25 accounts the table stops, saying how many more there are."""
    t = END - timedelta(hours=1)
    log = [Event(i + 1, f"r{i}", "stored", t, account=f"acct{i:02d}") for i in range(30)]
    s = summarize(runs_from(log), END - DAY, END)
    assert len(s.per_account) == 30
    text = report_render.markdown(s, s, [s], chart_link=None, chart_is_public=False)
    assert text.count("| acct") == 2 * 25
    assert text.count("… and 5 more accounts") == 2


def test_a_late_publish_of_an_old_media_is_a_publish() -> None:
    """Rows read from the window only: a publish of a media stored before it (only its
    publishing/failed or publishing/published rows) is a publish outcome, never an ingest
    failure, and has no time from the last byte."""
    t = END - timedelta(hours=1)
    log = [
        Event(1, "old1", "publishing", t),
        Event(2, "old1", "failed", t + timedelta(seconds=5), reason="spam_risk_too_many_posts"),
        Event(3, "old2", "publishing", t),
        Event(4, "old2", "published", t + timedelta(seconds=50)),
    ]
    s = summarize(runs_from(log), END - DAY, END)
    assert (s.stored, s.failed, s.published, s.publish_failed) == (0, 0, 1, 1)
    assert s.to_published.count == 0
    figures = fold_in_batches(log, [])
    assert dict(figures.publishes) == {
        ("failed", "spam_risk_too_many_posts"): 1,
        ("published", ""): 1,
    }
    assert not figures.ingests
    assert figures.to_published_s.n == 0


def test_a_publish_counts_once_and_each_account_is_a_publish() -> None:
    """A publish on its own reports to both runs that stored the media (same ledger row):
    one publish, in the report and the metrics. The same media published to a second account
    is a second publish, counted under that account; the time to published is the first
    post's."""
    t = END - timedelta(hours=5)
    rows = [
        ("a", "received", t, "main", None),
        ("a", "stored", t + timedelta(seconds=10), "main", None),
        ("a", "publishing", t + timedelta(seconds=11), "main", "7"),
        ("a", "published", t + timedelta(seconds=60), "main", "7"),
        ("b", "received", t + timedelta(minutes=5), None, None),
        ("b", "stored", t + timedelta(minutes=5, seconds=10), None, None),
        # publish-media of the same media to `brand`: reported to a and b
        ("a", "publishing", t + timedelta(hours=1), "brand", "9"),
        ("b", "publishing", t + timedelta(hours=1), "brand", "9"),
        ("a", "published", t + timedelta(hours=1, seconds=30), "brand", "9"),
        ("b", "published", t + timedelta(hours=1, seconds=30), "brand", "9"),
    ]
    log = [
        Event(i + 1, k, stage, at, account=acct, publish_row=pr)
        for i, (k, stage, at, acct, pr) in enumerate(rows)
    ]
    s = summarize(runs_from(log), END - DAY, END)
    assert (s.stored, s.published) == (2, 2)
    assert s.to_published.count == 1 and s.to_published.median_s == pytest.approx(60.0)
    accounts = {a.account: a for a in s.per_account}
    assert (accounts["main"].stored, accounts["main"].published) == (1, 1)
    assert (accounts["brand"].stored, accounts["brand"].published) == (0, 1)
    assert (accounts[NO_ACCOUNT].stored, accounts[NO_ACCOUNT].published) == (1, 0)
    for cuts in ([], [7], [8], [3, 9]):
        figures = fold_in_batches(log, cuts)
        assert figures.publishes == {("published", ""): 2}, cuts
        assert figures.to_published_s.n == 1 and figures.to_published_s.total == 60.0
