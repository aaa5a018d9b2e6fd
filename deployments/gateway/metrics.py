"""``GET /metrics`` on the gateway: Prometheus text (or OpenMetrics, by ``Accept``).

Two kinds of figures, in one registry of the app's own (never prometheus_client's global one,
which would also carry Prefect's):

* **This process** (:class:`MetricsMiddleware`, an ASGI middleware around the routes, so the tus
  handlers stay unaware of it): ``reelflow_gateway_uploads_created_total`` (POST answered 201),
  ``reelflow_gateway_received_bytes_total`` (request bodies read by PATCH and POST, as they
  arrive), ``reelflow_gateway_patch_duration_seconds`` (PATCH, by status) and
  ``reelflow_gateway_requests_total``. They start at 0 with the process; Prometheus' ``rate()``
  and ``sum by`` over instances are the way to read them.
* **The catalog** (:class:`CatalogCollector`, every worker's work, the same on every instance:
  aggregate it with ``max``, not ``sum``): ingests and publishes by outcome and reason, bytes
  stored, the time spent in each stage, the time from the last byte to stored and to
  published, from ``pipeline_stage``; uploads by state and active uploads from
  ``gateway_upload``. ``pipeline_stage`` is insert-only, so the collector follows it with an id
  cursor and folds each new row into cumulative counts and histograms: a scrape reads only the
  rows written since the previous refresh (at most :data:`MAX_ROWS_PER_REFRESH`, so a first
  scrape of a long history catches up over several), and refreshes at most every ``cache_s``.
  The counts cover the whole table once caught up, so they are monotonic and agree across
  instances and restarts. The cursor only passes ids that were already the table's largest
  ``settle_s`` before (by this process's monotonic clock, not the rows' times, so a worker with
  a skewed clock changes nothing): PostgreSQL hands out ids before commit, so a row with a
  smaller id can become visible a moment after a larger one, and must not be skipped. The
  catalog unreachable: ``reelflow_catalog_up 0`` and the last figures, never a failed scrape.
  A run's ``failed`` row after its ``stored`` (or ``publishing``) row is a publish failure (the rule of
  :mod:`reelflow.report_rules`, whose counts these agree with).

No label carries an account, an owner, an upload id or a message: reasons are the typed
errors' fixed words, origins the ingest paths. ``/metrics`` asks for no token (like tusd's);
put it behind the proxy's allow list where the gateway faces the internet.

Must not: write to the catalog; hold the event loop for a database query (scrapes render in a
worker thread).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import anyio.to_thread
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.gateway.base import gateway_log
from reelflow.report_rules import UNKNOWN_REASON, Event, as_event
from storage import metrics_reads

CACHE_S = 5.0
SETTLE_S = 2.0
BATCH_ROWS = 500  # run keys in one IN (...) list: well under SQLite's variable limit
MAX_ROWS_PER_REFRESH = 50_000
# Uploads take seconds to hours; a stage of the pipeline seconds to minutes (a scan of 4 GiB,
# a scheduled post waits longer and is not a stage).
DURATION_BUCKETS_S = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
)
PATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Time "in" these is not work of the pipeline: a final state, or waiting for a publish.
UNTIMED_STAGES = frozenset({"stored", "published", "failed", "cancelled"})
UPLOAD_PATHS = ("/uploads",)
SEEN_PUBLISHES = 100_000


# --- the catalog's figures ------------------------------------------------------------------------


@dataclass
class Hist:
    """A cumulative histogram being folded (bucket counts, not yet cumulative)."""

    bounds: tuple[float, ...] = DURATION_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class CatalogFigures:
    """Everything folded from ``pipeline_stage`` up to ``cursor`` (its last id)."""

    cursor: int = 0
    ingests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    publishes: Counter[tuple[str, str]] = field(default_factory=Counter)
    stored_bytes: int = 0
    stage_s: dict[str, Hist] = field(default_factory=dict)
    to_stored_s: Hist = field(default_factory=Hist)
    to_published_s: Hist = field(default_factory=Hist)
    # A publish on its own reports to every run that stored the media, all at once: its
    # ledger row counts it once (rows of one publish are adjacent, so a bounded memory does).
    seen_publishes: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    def _first_report(self, row: Event) -> bool:
        if row.publish_row is None:
            return True
        key = (row.publish_row, row.stage)
        if key in self.seen_publishes:
            return False
        self.seen_publishes[key] = None
        if len(self.seen_publishes) > SEEN_PUBLISHES:
            self.seen_publishes.popitem(last=False)
        return True

    def fold(self, new: Sequence[Event], context: Sequence[Event]) -> None:
        """Fold ``new`` rows (id order, ids above the cursor) given ``context``: every row of
        their runs up to the last new id (the new ones included)."""
        by_run: dict[str, list[Event]] = {}
        for row in context:
            by_run.setdefault(row.run_key, []).append(row)
        for row in new:
            rid = row.id or 0
            earlier = [e for e in by_run.get(row.run_key, []) if (e.id or 0) < rid]
            if earlier and earlier[-1].stage not in UNTIMED_STAGES:
                prev = earlier[-1]
                hist = self.stage_s.setdefault(prev.stage, Hist())
                hist.observe((row.at - prev.at).total_seconds())
            stages = {e.stage for e in earlier}
            origin = row.origin or "unknown"
            received = [e.at for e in earlier if e.stage == "received"]
            start = received[0] if received else (earlier[0].at if earlier else row.at)
            if row.stage == "stored":
                self.ingests["stored", "", origin] += 1
                if "stored" not in stages:  # a re-run that found it stored adds no bytes
                    self.stored_bytes += row.size_bytes or 0
                    self.to_stored_s.observe((row.at - start).total_seconds())
            elif row.stage == "cancelled":
                self.ingests["cancelled", "", origin] += 1
            elif row.stage == "published":
                if self._first_report(row):
                    self.publishes["published", ""] += 1
                    if "stored" in stages and "published" not in stages:
                        self.to_published_s.observe((row.at - start).total_seconds())
            elif row.stage == "failed":
                reason = row.reason or UNKNOWN_REASON
                if row.publish_row is not None or stages & {"stored", "publishing"}:
                    if self._first_report(row):
                        self.publishes["failed", reason] += 1
                else:
                    self.ingests["failed", reason, origin] += 1
            self.cursor = max(self.cursor, rid)

    def families(self) -> Iterator[Metric]:
        ingests = CounterMetricFamily(
            "reelflow_ingests",
            "Ingest runs that ended, by outcome (stored, failed, cancelled), failure reason "
            "and origin (every worker, from the catalog)",
            labels=["outcome", "reason", "origin"],
        )
        for (outcome, reason, origin), n in sorted(self.ingests.items()):
            ingests.add_metric([outcome, reason, origin], n)
        yield ingests
        publishes = CounterMetricFamily(
            "reelflow_publishes",
            "TikTok publishes that ended, by outcome (published, failed) and failure reason",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), n in sorted(self.publishes.items()):
            publishes.add_metric([outcome, reason], n)
        yield publishes
        yield CounterMetricFamily(
            "reelflow_stored_bytes", "Bytes of the videos stored", value=self.stored_bytes
        )
        stage = HistogramMetricFamily(
            "reelflow_stage_duration_seconds",
            "Time a run spent in a stage (until its next stage row)",
            labels=["stage"],
        )
        for name in sorted(self.stage_s):
            hist = self.stage_s[name]
            stage.add_metric([name], hist.buckets(), hist.total)
        yield stage
        for name, hist, doc in (
            ("reelflow_time_to_stored_seconds", self.to_stored_s, "stored"),
            ("reelflow_time_to_published_seconds", self.to_published_s, "published"),
        ):
            family = HistogramMetricFamily(
                name,
                f"Time from the last byte (or the run's start) to {doc}",
            )
            family.add_metric([], hist.buckets(), hist.total)
            yield family


class CatalogCollector:
    """The catalog's figures for one registry, refreshed at most every ``cache_s``."""

    def __init__(
        self,
        engine: Engine,
        *,
        now: Callable[[], datetime],
        cache_s: float = CACHE_S,
        settle_s: float = SETTLE_S,
        max_rows: int = MAX_ROWS_PER_REFRESH,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.monotonic = monotonic
        self.now = now
        self.cache_s = cache_s
        self.settle_s = settle_s
        self.max_rows = max_rows
        self.figures = CatalogFigures()
        self.uploads_by_state: dict[str, int] = {}
        self.active_uploads = 0
        self.up = False
        self.refreshes = 0
        self._refreshed_at: float | None = None
        self._tops: list[tuple[float, int]] = []  # (when, the largest id then), not settled yet
        self._settled_top = 0
        self._lock = threading.Lock()  # two scrapes at once fold each row once

    def describe(self) -> list[Metric]:
        return []  # no query when the collector is registered

    def refresh(self) -> None:
        with self._lock:
            mono = self.monotonic()
            if self._refreshed_at is not None and mono - self._refreshed_at < self.cache_s:
                return
            try:
                self._catch_up(self._horizon(mono))
                self.uploads_by_state, self.active_uploads = metrics_reads.gateway_upload_counts(
                    self.engine, self.now()
                )
            except SQLAlchemyError as exc:
                self.up = False
                gateway_log().warning("metrics_catalog_unreachable", error=type(exc).__name__)
            else:
                self.up = True
                self.refreshes += 1
            self._refreshed_at = mono

    def _horizon(self, mono: float) -> int:
        """The largest id the cursor may pass: the table's top ``settle_s`` ago or earlier."""
        self._tops.append((mono, metrics_reads.max_stage_id(self.engine)))
        while self._tops and mono - self._tops[0][0] >= self.settle_s:
            self._settled_top = max(self._settled_top, self._tops.pop(0)[1])
        return self._settled_top

    def _catch_up(self, horizon: int) -> None:
        done = 0
        while done < self.max_rows and self.figures.cursor < horizon:
            rows = metrics_reads.stage_rows_after(
                self.engine,
                self.figures.cursor,
                up_to_id=horizon,
                limit=min(BATCH_ROWS, self.max_rows - done),
            )
            if not rows:
                return
            batch = [as_event(r) for r in rows]
            context = [
                as_event(r)
                for r in metrics_reads.stage_rows_of_runs(
                    self.engine, {r.run_key for r in batch}, up_to_id=int(batch[-1].id or 0)
                )
            ]
            self.figures.fold(batch, context)  # in memory: nothing half-folded on an error
            done += len(batch)

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        yield GaugeMetricFamily(
            "reelflow_catalog_up",
            "1 when the last refresh of the catalog's figures succeeded",
            value=1 if self.up else 0,
        )
        yield CounterMetricFamily(
            "reelflow_catalog_refreshes",
            "Successful refreshes of the catalog's figures by this process",
            value=self.refreshes,
        )
        yield from self.figures.families()
        by_state = GaugeMetricFamily(
            "reelflow_gateway_uploads", "Gateway uploads in the catalog by state", labels=["state"]
        )
        for state, n in sorted(self.uploads_by_state.items()):
            by_state.add_metric([state], n)
        yield by_state
        yield GaugeMetricFamily(
            "reelflow_gateway_active_uploads",
            "Gateway uploads receiving bytes and not expired (every instance's)",
            value=self.active_uploads,
        )


# --- this process ---------------------------------------------------------------------------------


class GatewayMetrics:
    """The registry of one app: the middleware's instruments, the catalog collector, and the
    route that renders them."""

    def __init__(
        self,
        engine: Engine,
        *,
        now: Callable[[], datetime],
        cache_s: float = CACHE_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.created = PromCounter(
            "reelflow_gateway_uploads_created",
            "Uploads this process created (POST /uploads/ answered 201)",
            registry=self.registry,
        )
        self.received_bytes = PromCounter(
            "reelflow_gateway_received_bytes",
            "Request body bytes this process read for uploads (PATCH and POST)",
            ["method"],
            registry=self.registry,
        )
        self.patch_seconds = Histogram(
            "reelflow_gateway_patch_duration_seconds",
            "PATCH requests of this process, from the first byte in to the last byte out",
            ["status"],
            buckets=PATCH_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = PromCounter(
            "reelflow_gateway_requests",
            "Requests this process answered, by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.catalog = CatalogCollector(engine, now=now, cache_s=cache_s, settle_s=settle_s)
        self.registry.register(self.catalog)
        ProcessCollector(registry=self.registry)

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.endpoint, methods=["GET"], name="metrics")]

    def middleware(self) -> Middleware:
        return Middleware(MetricsMiddleware, metrics=self)

    async def endpoint(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await anyio.to_thread.run_sync(encoder, self.registry)
        return Response(body, media_type=content_type)


class MetricsMiddleware:
    """Counts uploads created, body bytes read and PATCH latency around every route."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope.get("path", "")
        uploads = path.startswith(UPLOAD_PATHS)
        started = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 further out
        counted = self.metrics.received_bytes.labels(method=method)
        count_body = uploads and method in ("PATCH", "POST")

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if size:
                    counted.inc(size)
            return message

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_counted if count_body else receive, send_seen)
        finally:
            self.metrics.requests.labels(method=method, status=str(status)).inc()
            if uploads and method == "POST" and status == 201:
                self.metrics.created.inc()
            if uploads and method == "PATCH":
                self.metrics.patch_seconds.labels(status=str(status)).observe(
                    time.perf_counter() - started
                )
