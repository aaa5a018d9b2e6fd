"""The pure rules of the status API: the rate of an upload's bytes, the stage a creator sees,
the status object, and the SSE framing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from deployments.gateway.events import frame
from deployments.gateway.status import decode_cursor, encode_cursor
from deployments.gateway.status_view import View, is_final, shown_stage, status_json
from storage import gateway_uploads as uploads
from storage import stages
from storage.gateway_progress import MIN_SPAN_S, WINDOW_S, rate_from
from storage.gateway_uploads import GatewayUpload
from storage.stages import PipelineStage

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def row(**kw: Any) -> GatewayUpload:
    base: dict[str, Any] = {
        "id": "up1",
        "owner": "alice",
        "length": 1000,
        "offset": 0,
        "expires_at": NOW + timedelta(days=1),
        "created_at": NOW,
        "updated_at": NOW,
    }
    return GatewayUpload(**(base | kw))


def stage(i: int, name: str, **kw: Any) -> PipelineStage:
    return PipelineStage(id=i, run_key="up1", stage=name, at=NOW + timedelta(seconds=i), **kw)


points = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30), st.integers(min_value=0, max_value=10**9)),
    max_size=12,
)


@given(points)
def test_rate_is_bytes_over_the_window_span(raw: list[tuple[float, int]]) -> None:
    """The rate is never negative; it is 0 when nothing is in the window, None when the window's
    points span too little, else (last - first) / span of the points in the window."""
    pts = [(NOW - timedelta(seconds=ago), offset) for ago, offset in raw]
    got = rate_from(pts, now=NOW)
    recent = sorted(p for p in pts if NOW - timedelta(seconds=WINDOW_S) <= p[0] <= NOW)
    if not pts:
        assert got is None
    elif not recent:
        assert got == 0.0
    else:
        span = (recent[-1][0] - recent[0][0]).total_seconds()
        if span < MIN_SPAN_S:
            assert got is None
        else:
            assert got is not None and got >= 0
            assert got == max(0.0, (recent[-1][1] - recent[0][1]) / span)


def test_rate_of_a_steady_upload_and_of_a_paused_one() -> None:
    """1 MB/s for 10 s is 1 MB/s; the same upload paused for a minute is 0."""
    pts = [(NOW - timedelta(seconds=10 - i), i * 1_000_000) for i in range(11)]
    assert rate_from(pts, now=NOW) == 1_000_000
    assert rate_from(pts, now=NOW + timedelta(minutes=1)) == 0.0


@given(
    st.sampled_from(uploads.STATES),
    st.one_of(st.none(), st.sampled_from(stages.STAGES)),
)
def test_the_shown_stage_is_one_of_the_contract(state: str, last: str | None) -> None:
    """Whatever the row and the newest stage row say, a creator sees one of the nine stages
    (never `received`); the row's state wins where it is the truth."""
    shown = shown_stage(state, last)
    assert shown in {
        "receiving",
        "validating",
        "scanning",
        "storing",
        "publishing",
        "published",
        "stored",
        "failed",
        "cancelled",
    }
    if state == uploads.RECEIVING:
        assert shown == "receiving"
    if state == uploads.EXPIRED:
        assert shown == "failed"
    if state == uploads.CANCELLED:
        assert shown in ("cancelled", "failed")


def test_status_of_an_upload_receiving_bytes() -> None:
    """Bytes, percent, rate and ETA while receiving; the event id is the newest row's."""
    view = View(row(offset=250), [stage(7, "receiving")], rate_bytes_s=50.0)
    s = status_json(view)
    assert (s["stage"], s["bytes_received"], s["percent"]) == ("receiving", 250, 25.0)
    assert (s["rate_bytes_s"], s["eta_s"], s["event_id"]) == (50.0, 15, 7)
    assert s["thumbnail_url"] is None and s["reason"] is None


def test_status_of_a_stored_and_a_failed_upload() -> None:
    """Stored: media, run and a thumbnail link (carrying an events token when one was used);
    failed: its reason and message; an expired upload is failed as upload_expired."""
    rows = [stage(1, "received"), stage(2, "storing", flow_run_id="run-1")]
    rows.append(stage(3, "stored", media_id="m_1"))
    s = status_json(View(row(offset=1000, state="stored"), rows), access="tok")
    assert (s["stage"], s["media_id"], s["flow_run_id"]) == ("stored", "m_1", "run-1")
    assert s["thumbnail_url"] == "/uploads/up1/thumbnail?access=tok"
    assert s["rate_bytes_s"] is None and s["eta_s"] is None
    bad = [stage(1, "received"), stage(2, "failed", reason="infected", message="EICAR")]
    s = status_json(View(row(offset=1000, state="failed"), bad))
    assert (s["stage"], s["reason"], s["message"]) == ("failed", "infected", "EICAR")
    s = status_json(View(row(offset=10, state="expired"), [stage(1, "receiving")]))
    assert (s["stage"], s["reason"]) == ("failed", "upload_expired")


def test_stored_is_final_only_when_no_publish_follows() -> None:
    """Stored ends the stream with no account (or a publish scheduled later), not with one."""
    plain = View(row(state="stored"), [stage(1, "stored")])
    assert is_final("stored", plain)
    meta = json.dumps({"account": "main", "mode": "direct"})
    publishing = View(row(state="stored", account="main", metadata_json=meta), [])
    assert not is_final("stored", publishing)
    queued = View(publishing.row, [], publish={"status": "SCHEDULED"})
    assert is_final("stored", queued)
    assert is_final("published", publishing) and not is_final("validating", plain)


def test_an_sse_frame_is_one_message() -> None:
    """id (when given), event, one data line, a blank line."""
    assert frame("status", {"a": 1}, event_id=5) == b'id: 5\nevent: status\ndata: {"a":1}\n\n'
    assert frame("progress", {"t": "x\ny"}) == b'event: progress\ndata: {"t":"x\\ny"}\n\n'


@given(st.text(min_size=1, max_size=30))
def test_cursors_round_trip(upload_id: str) -> None:
    r = row(id=upload_id, created_at=NOW)
    assert decode_cursor(encode_cursor(r)) == (NOW, upload_id)
