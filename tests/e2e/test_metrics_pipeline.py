"""``/metrics`` and the daily report over the stage rows the real pipeline writes.

A real ``reelflow gateway`` process (embedded hand-off: it starts the ``reelflow ingest
--upload`` child run) takes a real clip over tus and a clip whose video header is followed by
garbage. Once the status API says stored and failed, a second gateway on the same catalog (an
instance that saw none of it) reports both in ``/metrics``, and the daily report counts them.
Runs once the status branch (stage rows from the gateway and the flows) is merged: before it,
no stage row is written and the module skips.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewaySetup, auth
from tests.support.waiting import wait_for

pytest.importorskip("deployments.gateway.status")  # the stage rows come with it

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

RUN_WAIT_S = 240.0  # the child run starts its own Prefect API (~10-30 s on 2 shared cores)
METRICS_WAIT_S = 60.0


def upload(gw: Any, token: str, data: bytes) -> str:
    h = auth(token)
    with httpx.Client(timeout=120) as c:
        r = c.post(gw.uploads_url, headers=h | {"Upload-Length": str(len(data))})
        assert r.status_code == 201, r.text
        url = r.headers["location"]
        done = c.patch(
            url,
            headers=h | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            content=data,
        )
        assert done.status_code == 204, done.text
    return str(url).rstrip("/").rsplit("/", 1)[1]


def status(gw: Any, token: str, upload_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{gw.base_url}/uploads/{upload_id}/status",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def samples(gw: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_real_runs_reach_the_metrics_of_another_instance(
    tmp_path: Path, clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored and a failed gateway upload, counted by an instance that served neither."""
    setup = GatewaySetup(home=tmp_path / "home")
    good = clips.valid().read_bytes()
    bad = good[:4096] + b"\0garbage" * 20_000
    who = f"creator-{uuid.uuid4().hex[:8]}"
    try:
        with setup.process("a") as a, setup.process("b") as b:
            token = setup.token(who)
            ok_id, bad_id = upload(a, token, good), upload(a, token, bad)
            final = {}
            for upload_id in (ok_id, bad_id):
                final[upload_id] = wait_for(
                    lambda u=upload_id: (
                        (s := status(a, token, u))["stage"] in ("stored", "failed") and s
                    ),
                    f"upload {upload_id} to end",
                    timeout_s=RUN_WAIT_S,
                    poll_s=1.0,
                )
            assert final[ok_id]["stage"] == "stored"
            assert final[bad_id]["stage"] == "failed"
            reason = final[bad_id]["reason"]

            def counted() -> dict[Any, float] | None:
                s = samples(b)
                stored = (
                    "reelflow_ingests_total",
                    frozenset({"outcome": "stored", "reason": "", "origin": "gateway"}.items()),
                )
                failed = (
                    "reelflow_ingests_total",
                    frozenset({"outcome": "failed", "reason": reason, "origin": "gateway"}.items()),
                )
                return s if s.get(stored) == 1 and s.get(failed) == 1 else None

            s = wait_for(counted, "instance b to count both runs", timeout_s=METRICS_WAIT_S)
            assert s[("reelflow_time_to_stored_seconds_count", frozenset())] == 1
            assert s[("reelflow_stored_bytes_total", frozenset())] == len(good)
            for stage in ("receiving", "validating", "storing"):
                key = ("reelflow_stage_duration_seconds_count", frozenset({"stage": stage}.items()))
                assert s.get(key, 0) >= 1, stage
            assert s.get(("reelflow_gateway_uploads_created_total", frozenset()), 0) == 0  # b's own
    finally:
        setup.end_runs()

    from flows.report import daily_report

    monkeypatch.setenv("REELFLOW_HOME", str(setup.home))
    report = daily_report(end=datetime.now(UTC) + timedelta(minutes=1))
    day = report["last_24h"]
    assert (day["stored"], day["failed"]) == (1, 1)
    assert day["to_stored"]["count"] == 1
    assert [tuple(r) for r in day["top_reasons"]] == [(reason, 1)]
