"""``GET /metrics`` of a real gateway (issue 11, operators): Prometheus text over HTTP.

A real uvicorn on 127.0.0.1 serves ``build_app``; tus requests go over TCP with httpx and the
scrape is parsed with prometheus_client's own parser. Two backends: the local store on SQLite,
moto's S3 on a PostgreSQL database of this module's own. Stage rows are seeded with
``storage.stages.record`` (the flows write them on another branch), with times in the past so
they are settled. The catalog's figures refresh every few seconds, so every check waits
(bounded) for the expected value; each test compares against a scrape taken before it acted.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from deployments.gateway.app import build_app
from deployments.gateway.metrics import CatalogCollector, GatewayMetrics
from reelflow.gateway_tokens import mint
from reelflow.settings import Settings
from storage import stages
from storage.catalog import Catalog, make_engine
from storage.runtime import Runtime
from tests.support.waiting import wait_for

SECRET = "test-gateway-secret-" + "m" * 32
PART_BYTES = 5 * 1024 * 1024
STARTUP_S = 30.0
# The collector refreshes every 5 s and waits 2 s for rows to settle: well inside this.
METRICS_WAIT_S = 40.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Clock:
    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Handoff:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def received(self, row: Any) -> None:
        self.ids.append(row.id)


@dataclass
class Gw:
    base_url: str
    clock: Clock
    catalog: Catalog
    handoff: Handoff

    def token(self, subject: str) -> str:
        return mint(SECRET, subject, ttl_s=3600, now=datetime.now(UTC))

    def scrape(self) -> Samples:
        r = httpx.get(f"{self.base_url}/metrics", timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture(scope="module")
def own_pg_url() -> Iterator[str]:
    """A PostgreSQL database only this module writes (the counts of other tests stay out)."""
    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = f"reelflow_metrics_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["local-sqlite", "s3-postgres"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    values: dict[str, Any] = {
        "home": tmp_path_factory.mktemp("gwm") / "home",
        "gateway_secret": SECRET,
        "gateway_part_size_bytes": PART_BYTES,
    }
    if request.param == "s3-postgres":
        s3 = request.getfixturevalue("s3_server")
        bucket = f"rf-gwm-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=bucket)
        values |= {
            "store_url": f"s3://{bucket}/media",
            "s3_endpoint_url": s3.endpoint_url,
            "database_url": request.getfixturevalue("own_pg_url"),
        }
    settings = Settings(**values)
    runtime = Runtime.from_settings(settings)
    clock = Clock()
    handoff = Handoff()
    app = build_app(settings, runtime=runtime, handoff=handoff, now=clock)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the gateway to start", timeout_s=STARTUP_S, poll_s=0.05)
    try:
        yield Gw(f"http://127.0.0.1:{port}", clock, runtime.catalog, handoff)
    finally:
        clock.offset = timedelta()
        server.should_exit = True
        thread.join(timeout=15)


CATALOG_FAMILIES = (
    "reelflow_ingests",
    "reelflow_publishes",
    "reelflow_stored",
    "reelflow_time_to",
    "reelflow_stage_duration",
)


def settled(gw: Gw, *, apart_s: float = 7.0, timeout_s: float = 90.0) -> Samples:
    """A scrape equal to one taken ``apart_s`` earlier (longer than the collector's 2 s settle
    wait plus its 5 s refresh), so rows written before it have all been counted."""

    def catalog_figures(samples: Samples) -> Samples:
        return {k: v for k, v in samples.items() if k[0].startswith(CATALOG_FAMILIES)}

    deadline = time.monotonic() + timeout_s
    last = gw.scrape()
    while time.monotonic() < deadline:
        time.sleep(apart_s)
        now = gw.scrape()
        if catalog_figures(now) == catalog_figures(last):
            return now
        last = now
    raise AssertionError(f"the metrics kept moving for {timeout_s:.0f}s")


def wait_delta(
    gw: Gw, before: Samples, expected: dict[tuple[str, frozenset[Any]], float]
) -> Samples:
    """Scrape until every (name, labels) moved by exactly its expected delta since ``before``."""

    def moved() -> Samples | None:
        now = gw.scrape()
        ok = all(
            now.get(k, 0.0) - before.get(k, 0.0) == pytest.approx(d) for k, d in expected.items()
        )
        return now if ok else None

    def diff() -> str:
        now = gw.scrape()
        return str({k: now.get(k, 0.0) - before.get(k, 0.0) for k in expected})

    return wait_for(moved, "the metrics to move", timeout_s=METRICS_WAIT_S, poll_s=0.5, detail=diff)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


# --- this process -----------------------------------------------------------------------------


def test_a_tus_upload_moves_the_gateway_counters(gw: Gw, clips: Any) -> None:
    """Creation-with-upload then PATCH of a real clip: one upload created, every body byte
    counted under its method, one PATCH in the latency histogram, one more upload received;
    an unfinished second upload is active until it is complete."""
    data = clips.valid().read_bytes()[:300_000]
    token = gw.token(f"creator-{uuid.uuid4().hex[:8]}")
    h = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    before = gw.scrape()
    first = 120_000
    with httpx.Client(timeout=60) as c:
        created = c.post(
            f"{gw.base_url}/uploads/",
            headers=h
            | {"Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream"},
            content=data[:first],
        )
        assert created.status_code == 201, created.text
        assert created.headers["upload-offset"] == str(first)
        url = created.headers["location"]
        done = c.patch(
            url,
            headers=h
            | {"Upload-Offset": str(first), "Content-Type": "application/offset+octet-stream"},
            content=data[first:],
        )
        assert done.status_code == 204, done.text
        refused = c.post(f"{gw.base_url}/uploads/", headers=h)  # no Upload-Length: 400
        assert refused.status_code == 400
        open_one = c.post(f"{gw.base_url}/uploads/", headers=h | {"Upload-Length": "1000"})
        assert open_one.status_code == 201
    assert gw.handoff.ids.count(url.rstrip("/").rsplit("/", 1)[1]) == 1
    after = wait_delta(
        gw,
        before,
        {
            key("reelflow_gateway_uploads_created_total"): 2,
            key("reelflow_gateway_received_bytes_total", method="POST"): first,
            key("reelflow_gateway_received_bytes_total", method="PATCH"): len(data) - first,
            key("reelflow_gateway_patch_duration_seconds_count", status="204"): 1,
            key("reelflow_gateway_requests_total", method="POST", status="400"): 1,
            key("reelflow_gateway_uploads", state="received"): 1,
            key("reelflow_gateway_uploads", state="receiving"): 1,
            key("reelflow_gateway_active_uploads"): 1,
        },
    )
    assert value(after, "reelflow_catalog_up") == 1
    # The bucket a PATCH fell into is under +Inf and every bound above it.
    assert (
        value(after, "reelflow_gateway_patch_duration_seconds_bucket", status="204", le="+Inf") >= 1
    )


# --- the catalog ------------------------------------------------------------------------------


def test_stage_rows_of_every_worker_become_outcomes_and_durations(gw: Gw) -> None:
    """Seeded stage rows (as the flows of any worker write them): ingests and publishes by
    outcome, reason and origin, bytes stored, time in each stage, time from the last byte to
    stored and to published."""
    engine = gw.catalog.engine
    t0 = datetime.now(UTC) - timedelta(hours=1)
    u = uuid.uuid4().hex[:8]

    def rec(run: str, stage: str, s: float, **kw: Any) -> None:
        stages.record(engine, f"{run}-{u}", stage, at=t0 + timedelta(seconds=s), **kw)

    # Earlier tests' real uploads wrote stage rows too (the gateway writes receiving/received):
    # start from figures that no longer move, or their late rows would count here.
    before = settled(gw)
    g = {"origin": "gateway", "account": "main"}
    rec("g", "receiving", 0, **g)
    rec("g", "received", 100, **g)
    rec("g", "validating", 110, **g)
    rec("g", "scanning", 130, **g)
    rec("g", "storing", 160, **g)
    rec("g", "stored", 200, size_bytes=1234, **g)
    rec("g", "publishing", 210, **g)
    rec("g", "published", 400, **g)
    rec("c", "validating", 0, origin="cli")
    rec("c", "failed", 7, origin="cli", reason="invalid_codec", message="not H.264")
    rec("p", "validating", 0, origin="s3-event")
    rec("p", "stored", 30, origin="s3-event", size_bytes=10)
    rec("p", "publishing", 31, origin="s3-event")
    rec("p", "failed", 35, origin="s3-event", reason="privacy_level_not_offered")
    rec("x", "receiving", 0, origin="gateway")
    rec("x", "cancelled", 50, origin="gateway")
    after = wait_delta(
        gw,
        before,
        {
            key("reelflow_ingests_total", outcome="stored", reason="", origin="gateway"): 1,
            key("reelflow_ingests_total", outcome="stored", reason="", origin="s3-event"): 1,
            key(
                "reelflow_ingests_total", outcome="failed", reason="invalid_codec", origin="cli"
            ): 1,
            key("reelflow_ingests_total", outcome="cancelled", reason="", origin="gateway"): 1,
            key("reelflow_publishes_total", outcome="published", reason=""): 1,
            key(
                "reelflow_publishes_total", outcome="failed", reason="privacy_level_not_offered"
            ): 1,
            key("reelflow_stored_bytes_total"): 1244,
            # g: last byte (received) → stored 100 s; p (no received row): start → stored 30 s
            key("reelflow_time_to_stored_seconds_count"): 2,
            key("reelflow_time_to_stored_seconds_sum"): 130,
            key("reelflow_time_to_published_seconds_count"): 1,
            key("reelflow_time_to_published_seconds_sum"): 300,
            # receiving: g 100 s + x 50 s; validating: g 20, c 7, p 30; publishing: g 190, p 4
            key("reelflow_stage_duration_seconds_count", stage="receiving"): 2,
            key("reelflow_stage_duration_seconds_sum", stage="receiving"): 150,
            key("reelflow_stage_duration_seconds_count", stage="validating"): 3,
            key("reelflow_stage_duration_seconds_sum", stage="validating"): 57,
            key("reelflow_stage_duration_seconds_sum", stage="scanning"): 30,
            key("reelflow_stage_duration_seconds_sum", stage="storing"): 40,
            key("reelflow_stage_duration_seconds_sum", stage="publishing"): 194,
            key("reelflow_stage_duration_seconds_count", stage="stored"): 0,  # a wait, not work
        },
    )
    # 100 s to stored falls in the 120 s bucket, not the 60 s one; 30 s in both.
    assert (
        value(after, "reelflow_time_to_stored_seconds_bucket", le="120.0")
        - value(before, "reelflow_time_to_stored_seconds_bucket", le="120.0")
        == 2
    )
    assert (
        value(after, "reelflow_time_to_stored_seconds_bucket", le="60.0")
        - value(before, "reelflow_time_to_stored_seconds_bucket", le="60.0")
        == 1
    )
    text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    assert "not H.264" not in text and "main" not in text  # no message, no account label


def test_openmetrics_when_asked(gw: Gw) -> None:
    """Accept: application/openmetrics-text gets OpenMetrics (ending in # EOF); the default
    is the Prometheus text format."""
    r = httpx.get(
        f"{gw.base_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "reelflow_gateway_uploads_created_total" in r.text
    plain = httpx.get(f"{gw.base_url}/metrics", timeout=30)
    assert "# EOF" not in plain.text


# --- the collector on its own -----------------------------------------------------------------


def test_an_unreachable_catalog_is_a_gauge_not_a_failed_scrape() -> None:
    """A catalog that refuses connections: the scrape still renders, catalog_up is 0."""
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    metrics = GatewayMetrics(engine, now=lambda: datetime.now(UTC), cache_s=0)
    text = generate_latest(metrics.registry).decode()
    samples = parse(text)
    assert value(samples, "reelflow_catalog_up") == 0
    assert "reelflow_gateway_uploads_created_total 0.0" in text


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_catalog(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Catalog]:
    """An empty catalog: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield Catalog(make_engine(f"sqlite:///{tmp_path / 'c.db'}"))
        return
    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = f"reelflow_metrics_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    catalog = Catalog(make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"))
    try:
        yield catalog
    finally:
        catalog.engine.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Ticks:
    """The collector's monotonic clock, moved by the test."""

    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rows_wait_until_the_table_top_has_settled(fresh_catalog: Catalog) -> None:
    """The cursor passes only ids that were the table's top ``settle_s`` earlier (a smaller
    id may commit after a larger one on PostgreSQL), whatever the rows' own times say."""
    engine = fresh_catalog.engine
    ticks = Ticks()
    collector = CatalogCollector(
        engine, now=lambda: datetime.now(UTC), cache_s=0, settle_s=2.0, monotonic=ticks
    )
    old = datetime.now(UTC) - timedelta(days=1)
    stages.record(engine, "a", "validating", at=old, origin="cli")
    stages.record(engine, "a", "failed", at=old, origin="cli", reason="probe")
    collector.refresh()  # sees ids 1-2 for the first time
    assert collector.figures.cursor == 0
    stages.record(engine, "b", "validating", at=old, origin="cli")
    stages.record(engine, "b", "failed", at=old, origin="cli", reason="probe")
    ticks.t += 1.9
    collector.refresh()
    assert collector.figures.cursor == 0
    ticks.t += 0.2  # 2.1 s after the first look: ids up to 2, not the 3-4 seen at 1.9 s
    collector.refresh()
    assert collector.figures.cursor == 2
    assert collector.figures.ingests["failed", "probe", "cli"] == 1
    ticks.t += 2.0
    collector.refresh()
    assert collector.figures.ingests["failed", "probe", "cli"] == 2
    assert collector.refreshes == 4 and collector.up


def test_a_long_history_is_caught_up_in_bounded_steps(fresh_catalog: Catalog) -> None:
    """With at most 4 rows a refresh, 10 rows take 3 refreshes; then two collectors (two
    gateway instances) show the same figures."""
    engine = fresh_catalog.engine
    t0 = datetime.now(UTC) - timedelta(hours=2)
    u = uuid.uuid4().hex[:8]
    for i in range(5):
        stages.record(engine, f"r{i}-{u}", "validating", at=t0, origin="cli")
        stages.record(
            engine, f"r{i}-{u}", "stored", at=t0 + timedelta(seconds=i), origin="cli", size_bytes=1
        )
    now = lambda: datetime.now(UTC)  # noqa: E731
    first = CatalogCollector(engine, now=now, cache_s=0, settle_s=0, max_rows=4)
    stored = []
    for _ in range(4):
        first.refresh()
        stored.append(first.figures.ingests["stored", "", "cli"])
    assert stored == [2, 4, 5, 5]  # ids in write order: validating, stored, validating, ...
    assert first.figures.cursor == 10
    second = CatalogCollector(engine, now=now, cache_s=0, settle_s=0)
    second.refresh()
    assert second.figures == first.figures
    assert first.figures.to_stored_s.total == pytest.approx(0 + 1 + 2 + 3 + 4)
