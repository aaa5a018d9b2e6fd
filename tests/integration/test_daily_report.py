"""The `daily-report` flow on a real Prefect API over seeded stage rows (issue 11, operators).

The stage log is seeded with ``storage.stages.record`` at fixed times before a fixed ``end``
(the flow's parameter, so no clock is mocked): a day of gateway uploads exactly at the 95 %
target, an earlier day of CLI ingests with scanner hits, and runs older than the week. The
numbers are checked in the flow's result, in the Markdown artifact read back from Prefect's
REST API, and in the chart written to the store. Two backends: the local store on SQLite, and
moto's S3 on a new PostgreSQL database with REELFLOW_PUBLIC_BASE_URL (the chart inline).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.report import daily_report
from reelflow.errors import InputRejectedError
from reelflow.settings import Settings
from storage import stages
from storage.runtime import Runtime

pytestmark = pytest.mark.usefixtures("prefect_api")

END = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
MIB = 1024 * 1024
CDN = "https://cdn.example.test/media"


@pytest.fixture(params=["local-sqlite", "s3-postgres"])
def backend(
    request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "local-sqlite":
        yield request.param
        return
    import psycopg

    from tests.conftest import PG_ADMIN_URL

    request.getfixturevalue("s3_env")
    monkeypatch.setenv("REELFLOW_PUBLIC_BASE_URL", CDN)
    name = f"reelflow_report_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv(
        "REELFLOW_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    )
    try:
        yield request.param
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(rt: Runtime) -> None:
    engine = rt.catalog.engine

    def rec(run: str, stage: str, at: datetime, **kw: Any) -> None:
        stages.record(engine, run, stage, at=at, **kw)

    # The last 24 h: 19 gateway uploads of `main` stored 10, 20, ... 190 s after their last
    # byte; the first 10 published 50 s after stored; the 11th's publish failed. One upload of
    # `studio` failed validation: 19 / 20 = 95 %, the target exactly.
    for i in range(19):
        run, received = f"g{i}", END - timedelta(hours=20) + timedelta(minutes=10 * i)
        g = {"origin": "gateway", "account": "main", "upload_id": run}
        rec(run, "receiving", received - timedelta(minutes=3), **g)
        rec(run, "received", received, **g)
        rec(run, "validating", received + timedelta(seconds=2), **g)
        stored = received + timedelta(seconds=10 * (i + 1))
        rec(run, "stored", stored, size_bytes=MIB, media_id=f"m{i}", **g)
        if i < 10:
            rec(run, "publishing", stored + timedelta(seconds=1), **g)
            rec(run, "published", stored + timedelta(seconds=50), **g)
        elif i == 10:
            rec(run, "publishing", stored + timedelta(seconds=1), **g)
            rec(
                run, "failed", stored + timedelta(seconds=9), reason="spam_risk_too_many_posts", **g
            )
    bad = END - timedelta(hours=3)
    rec("f0", "received", bad, origin="gateway", account="studio")
    rec("f0", "validating", bad + timedelta(seconds=1), origin="gateway", account="studio")
    rec(
        "f0",
        "failed",
        bad + timedelta(seconds=4),
        reason="invalid_codec",
        origin="gateway",
        account="studio",
    )
    rec("x0", "received", bad, origin="gateway", account="main")
    rec("x0", "cancelled", bad + timedelta(seconds=4), origin="gateway", account="main")
    # Three days back: 5 CLI ingests of `studio` stored 30 s after their start, 5 infected.
    day3 = END - timedelta(days=3)
    for i in range(5):
        rec(f"c{i}", "validating", day3 + timedelta(minutes=i), origin="cli", account="studio")
        rec(
            f"c{i}",
            "stored",
            day3 + timedelta(minutes=i, seconds=30),
            size_bytes=2 * MIB,
            origin="cli",
            account="studio",
        )
        rec(f"v{i}", "validating", day3 + timedelta(minutes=i), origin="cli", account="studio")
        rec(
            f"v{i}",
            "failed",
            day3 + timedelta(minutes=i, seconds=5),
            reason="infected",
            origin="cli",
            account="studio",
        )
    # Before the week: counted nowhere.
    for i in range(3):
        old = END - timedelta(days=8, hours=i)
        rec(f"o{i}", "validating", old, origin="cli", account="old")
        rec(
            f"o{i}",
            "stored",
            old + timedelta(seconds=5),
            size_bytes=MIB,
            origin="cli",
            account="old",
        )


def latest_artifact(api_url: str, key: str) -> dict[str, Any]:
    r = httpx.get(f"{api_url}/artifacts/{key}/latest", timeout=30)
    r.raise_for_status()
    return dict(r.json())


def test_daily_report_numbers(backend: str, prefect_api: str) -> None:
    """Both windows' figures in the result and the artifact; the chart in the store."""
    rt = Runtime.from_settings(Settings())
    seed(rt)
    result = daily_report(end=END)
    day, week = result["last_24h"], result["last_days"]

    assert (day["stored"], day["failed"], day["cancelled"]) == (19, 1, 1)
    assert day["success_rate"] == pytest.approx(0.95) and day["meets_target"] is True
    assert day["to_stored"] == {"count": 19, "median_s": 100.0, "p95_s": pytest.approx(181.0)}
    # published 60, 70, ... 150 s after the last byte
    assert day["to_published"] == {"count": 10, "median_s": 105.0, "p95_s": pytest.approx(145.5)}
    assert (day["published"], day["publish_failed"]) == (10, 1)
    assert day["stored_bytes"] == 19 * MIB
    assert day["throughput_bytes_s"] == pytest.approx(19 * MIB / 86400)
    assert [tuple(r) for r in day["top_reasons"]] == [
        ("invalid_codec", 1),
        ("spam_risk_too_many_posts", 1),
    ]
    accounts = {a["account"]: a for a in day["per_account"]}
    assert set(accounts) == {"main", "studio"}
    assert (accounts["main"]["stored"], accounts["main"]["success_rate"]) == (19, 1.0)
    assert (accounts["studio"]["failed"], accounts["studio"]["success_rate"]) == (1, 0.0)

    assert (week["stored"], week["failed"]) == (24, 6)
    assert week["success_rate"] == pytest.approx(0.8) and week["meets_target"] is False
    assert week["to_stored"]["count"] == 24
    assert week["stored_bytes"] == 29 * MIB
    assert [tuple(r) for r in week["top_reasons"]][0] == ("infected", 5)
    assert {a["account"] for a in week["per_account"]} == {"main", "studio"}  # not `old`
    series = result["series"]
    assert [d["stored"] for d in series] == [0, 0, 0, 0, 5, 0, 19]
    assert [d["failed"] for d in series] == [0, 0, 0, 0, 5, 0, 1]

    artifact = latest_artifact(prefect_api, "daily-report")
    text = artifact["data"]
    assert artifact["type"] == "markdown"
    assert "| uploads finished (stored + failed) | 20 | 30 |" in text
    assert "| success rate (target ≥ 95 %) | 95.0 % ✅ | 80.0 % ⚠️ below target |" in text
    assert "| last byte → stored, median / p95 | 1.7 min / 3.0 min |" in text
    assert "| `infected` | 5 | 71.4 % |" in text  # 5 of the week's 7 failures (6 + 1 publish)
    assert "| main | 19 | 0 | 100.0 % | 10 | 1 |" in text
    assert "X-Amz-" not in text and "Signature" not in text  # never a presigned link

    key = "reports/2026-11-30.svg"
    assert result["chart_key"] == key
    svg = rt.store.read_range(key, 0, rt.store.size(key) or 0)
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert b"reelflow, 7 days to 2026-11-30 06:00 UTC" in svg
    if backend == "s3-postgres":
        assert result["chart_link"] == f"{CDN}/{key}"
        assert f"![videos stored and failed per day, success rate]({CDN}/{key})" in text
        head = rt.store.client.head_object(Bucket=rt.store.bucket, Key=rt.store._key(key))  # type: ignore[attr-defined]
        assert head["ContentType"] == "image/svg+xml"
    else:
        assert result["chart_link"] == rt.store.uri(key)
        assert "![" not in text and f"]({rt.store.uri(key)})" in text

    again = daily_report(end=END)  # same day: same chart key, a new artifact version
    assert again["last_days"] == week
    assert rt.store.list_objects("reports/") and len(rt.store.list_objects("reports/")) == 1


def test_bad_parameters_are_refused_before_reading(home: Path) -> None:
    """days outside 1-31 and an end without a time zone: typed refusals, no chart written."""
    with pytest.raises(InputRejectedError) as exc:
        daily_report(end=END, days=0)
    assert exc.value.reason == "invalid_days"
    with pytest.raises(InputRejectedError) as exc:
        daily_report(end=END.replace(tzinfo=None))
    assert exc.value.reason == "naive_end"
    rt = Runtime.from_settings(Settings())
    assert rt.store.list_objects("reports/") == []
