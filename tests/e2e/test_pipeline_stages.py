"""The stage log the flows write (issue 11), and a cancellation racing a gateway upload's run.

Real parts: the session's Prefect API, the local store + SQLite or moto S3 + PostgreSQL, real
ffmpeg, the TikTok sandbox over HTTP. Uploads are received by the gateway's own writer
(tests/e2e/test_gateway_handoff.py's helpers); a DELETE goes through the gateway's handler
(``Gateway._cancel``, what ``DELETE /uploads/{id}`` runs in its worker thread).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deployments.gateway.app import build_app
from flows.gateway_ingest import UploadCancelledError, _commit_to_store
from reelflow.errors import InputRejectedError, ReelflowError
from reelflow.settings import Settings
from reelflow.tus import TusError
from storage import gateway_uploads as uploads
from storage import stages
from storage.gateway_uploads import GatewayUpload
from storage.leases import Leases
from storage.runtime import Runtime
from tests.e2e.test_gateway_handoff import OWNER, _runtime, ingest, leftovers, receive, row_of
from tests.support.files import sha256_file
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

SECRET = "stage-test-secret-" + "s" * 32
RUN_WAIT_S = 120.0


def kinds(rt: Runtime, run_key: str) -> list[str]:
    return [r.stage for r in stages.for_run(rt.catalog.engine, run_key)]


@pytest.fixture
def s3_pg(s3_env: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REELFLOW_DATABASE_URL", pg_url)
    return s3_env


def media_in_store(rt: Runtime) -> list[Any]:
    """This test's media: the session's PostgreSQL catalog also holds earlier tests' rows (each
    test has its own bucket, so its own store URL)."""
    return [m for m in rt.catalog.list_media() if m.store_url == rt.store.url]


def test_a_gateway_run_writes_its_stages_and_the_publish(
    prefect_api: str, home: Path, sandbox: Any, clips: Any
) -> None:
    """validating → storing → stored (media id, size) → publishing → published (publish row,
    post status), all under the upload's id, each with the run's flow run id; a re-run of the
    stored upload adds none."""
    from tests.support.tiktok import add_account

    rt = _runtime()
    add_account(rt, sandbox, "studio")
    row = receive(rt, clips.valid(), account="studio", privacy_level="SELF_ONLY")
    row = uploads.cas_update(rt.catalog.engine, row.id, row.version, account="studio") or row

    summary = ingest(row.id)

    rows = stages.for_run(rt.catalog.engine, row.id)
    assert [r.stage for r in rows] == ["validating", "storing", "stored", "publishing", "published"]
    stored = rows[2]
    assert stored.media_id == summary["media_id"] and stored.size_bytes == summary["size_bytes"]
    assert all(r.upload_id == row.id and r.origin == "gateway" and r.owner == OWNER for r in rows)
    assert len({r.flow_run_id for r in rows}) == 1 and rows[0].flow_run_id
    published = rows[-1]
    assert published.detail["publish_row"] and published.detail["status"] == "PUBLISH_COMPLETE"
    assert published.detail["publish_id"] == summary["publish"]["publish_id"]
    assert published.account == "studio"
    ingest(row.id)  # stored and published already: the re-run reports no stage again
    assert kinds(rt, row.id) == [r.stage for r in rows]


def test_a_failed_gateway_run_records_the_typed_reason(
    prefect_api: str, s3_pg: str, clips: Any
) -> None:
    """A truncated MP4: `failed` with the validation's reason and a one-line message."""
    rt = _runtime()
    row = receive(rt, clips.bad("truncated"))
    with pytest.raises(InputRejectedError):
        ingest(row.id)
    last = stages.latest(rt.catalog.engine, row.id)
    assert last is not None and last.stage == "failed"
    assert last.reason == "unreadable_media" and last.message and "\n" not in last.message
    assert kinds(rt, row.id) == ["validating", "failed"]


def test_the_cli_path_writes_the_same_stages(prefect_api: str, home: Path, clips: Any) -> None:
    """A local file through ingest-video: receiving → received → validating → storing → stored
    under its upload session; the same file again: one `stored` (deduplicated) row, no bytes;
    a file that is no video: `failed` with its reason."""
    from flows.ingest import ingest_video

    rt = _runtime()
    clip = clips.valid()
    first = ingest_video(source=str(clip))
    sessions = rt.catalog.list_sessions()
    assert len(sessions) == 1
    key = sessions[0].id
    rows = stages.for_run(rt.catalog.engine, key)
    assert [r.stage for r in rows] == ["receiving", "received", "validating", "storing", "stored"]
    assert rows[-1].media_id == first["media_id"] and rows[-1].size_bytes == clip.stat().st_size
    assert rows[0].origin == "cli" and rows[0].size_bytes == clip.stat().st_size

    ingest_video(source=str(clip))
    again = [
        r
        for r in stages.since(rt.catalog.engine, rows[0].at)
        if r.stage == "stored" and r.detail.get("deduplicated")
    ]
    assert len(again) == 1 and again[0].media_id == first["media_id"]
    assert again[0].size_bytes is None  # nothing stored by that run: no throughput

    bad = home / "notes.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputRejectedError):
        ingest_video(source=str(bad))
    failed = [r for r in stages.since(rt.catalog.engine, rows[0].at) if r.stage == "failed"]
    assert len(failed) == 1 and failed[0].run_key.startswith("run:") and failed[0].reason


# --- cancellation ----------------------------------------------------------------------------


def _gateway(rt: Runtime) -> Any:
    settings = Settings(gateway_secret=SECRET)
    return build_app(settings, runtime=rt).state.gateway


def test_a_cancelled_upload_is_refused_by_its_run_and_nothing_is_left(
    prefect_api: str, s3_pg: str, clips: Any
) -> None:
    """DELETE after the last byte, before any run: cancelled, staged bytes gone; the run that
    comes later refuses it, stores nothing."""
    rt = _runtime()
    row = receive(rt, clips.valid())
    gw = _gateway(rt)
    assert gw._cancel(row.id, OWNER) == "cancelled"
    assert row_of(rt, row.id).state == uploads.CANCELLED
    assert leftovers(rt, row) == ([], [])
    with pytest.raises(InputRejectedError, match="cancelled"):
        ingest(row.id)
    assert media_in_store(rt) == []
    assert kinds(rt, row.id) == ["cancelled"]


def test_the_commit_point_loses_to_an_earlier_cancel(prefect_api: str, home: Path) -> None:
    """The run's commit CAS on a row a DELETE cancelled first raises UploadCancelledError; on
    its own processing row it records the hash (and a DELETE is then 409)."""
    rt = _runtime()
    engine = rt.catalog.engine
    row = uploads.create(
        engine,
        GatewayUpload(
            id="commit-race",
            owner=OWNER,
            length=10,
            state=uploads.PROCESSING,
            flow_run_id="run-a",
            expires_at=time_later(),
        ),
    )
    fence = Leases(engine).acquire("commit-race-lease", "run-a")
    assert fence is not None
    committed = _commit_to_store(rt, row.id, fence, "ab" * 32)
    assert committed.sha256 == "ab" * 32
    with pytest.raises(TusError) as info:
        _gateway(rt)._cancel(row.id, OWNER)
    assert info.value.status == 409 and "reelflow media delete" in str(info.value)
    other = uploads.create(
        engine,
        GatewayUpload(
            id="commit-race-2",
            owner=OWNER,
            length=10,
            state=uploads.CANCELLED,
            flow_run_id="run-a",
            expires_at=time_later(),
        ),
    )
    with pytest.raises(UploadCancelledError):
        _commit_to_store(rt, other.id, fence, "cd" * 32)
    assert uploads.get(engine, other.id).sha256 is None  # type: ignore[union-attr]


def time_later() -> Any:
    from datetime import timedelta

    from storage.clock import utcnow

    return utcnow() + timedelta(days=1)


@pytest.mark.parametrize("wait_for_stage", ["validating", "storing"])
def test_a_cancel_racing_the_run_leaves_stored_media_or_nothing(
    prefect_api: str, s3_pg: str, clips: Any, wait_for_stage: str
) -> None:
    """The run works in a thread; once it reached ``wait_for_stage``, DELETE. Either the cancel
    won (204: the run stops, no media, nothing staged, the row cancelled) or the run had
    committed (409: the media is stored whole, the row stored). Never a half."""
    rt = _runtime()
    clip = clips.medium()
    row = receive(rt, clip)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = ingest(row.id)
        except ReelflowError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(
            lambda: wait_for_stage in kinds(rt, row.id),
            f"the run to reach {wait_for_stage}",
            timeout_s=RUN_WAIT_S,
            poll_s=0.02,
        )
        try:
            how = _gateway(rt)._cancel(row.id, OWNER)
        except TusError as exc:
            assert exc.status == 409, exc
            how = "refused"
    finally:
        t.join(timeout=RUN_WAIT_S)
    assert not t.is_alive()
    done = row_of(rt, row.id)
    if how == "cancelled":
        assert "summary" not in outcome, outcome
        assert done.state == uploads.CANCELLED
        assert media_in_store(rt) == []
        assert leftovers(rt, row) == ([], [])
        assert rt.store.list_objects("videos/") == []  # no video, thumbnail or metadata
        assert kinds(rt, row.id)[-1] == "cancelled"
    else:
        assert how == "refused"
        assert done.state == uploads.STORED and "summary" in outcome, outcome
        media = rt.catalog.get_media(outcome["summary"]["media_id"])
        assert media is not None and rt.store.sha256_hex(media.video_key) == sha256_file(clip)
    if wait_for_stage == "storing":
        assert how == "refused"  # past the commit point the media stays


def test_delete_of_a_processing_upload_stops_an_embedded_child(tmp_path: Path) -> None:
    """The embedded hand-off's cancel sends SIGTERM to the upload's child process group."""
    from deployments.gateway.pipeline import SubprocessHandoff

    handoff = SubprocessHandoff(
        tmp_path / "runs.log", command=lambda upload: ["sleep", "60"], env={"PATH": "/usr/bin:/bin"}
    )
    row = GatewayUpload(id="child-1", owner=OWNER, expires_at=time_later())
    handoff.received(row)
    assert handoff.running() == ["child-1"]
    handoff.cancel(row)
    wait_for(lambda: handoff.running() == [], "the child to end", timeout_s=10, poll_s=0.05)
    handoff.close()


RACE_ROUNDS = 12


def _race_once(rt: Runtime, gw: Any, upload_id: str, commit_delay_s: float) -> dict[str, Any]:
    """One row a run holds; its commit and a DELETE released at the same instant (the commit
    ``commit_delay_s`` later: the DELETE has more to do first, a hold, so a spread of delays
    lets either side come first)."""
    engine = rt.catalog.engine
    uploads.create(
        engine,
        GatewayUpload(
            id=upload_id,
            owner=OWNER,
            length=10,
            state=uploads.PROCESSING,
            flow_run_id="run-a",
            store_url=rt.store.url,
            expires_at=time_later(),
        ),
    )
    fence = Leases(engine).acquire(f"lease-{upload_id}", "run-a")
    assert fence is not None
    start = threading.Barrier(2)
    results: dict[str, Any] = {}

    def commit() -> None:
        start.wait(timeout=10)
        time.sleep(commit_delay_s)
        try:
            results["commit"] = _commit_to_store(rt, upload_id, fence, "ab" * 32)
        except UploadCancelledError as exc:
            results["commit"] = exc

    def cancel() -> None:
        start.wait(timeout=10)
        try:
            results["cancel"] = gw._cancel(upload_id, OWNER)
        except TusError as exc:
            results["cancel"] = exc

    threads = [threading.Thread(target=commit), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.parametrize("backend", ["home", "s3_pg"])
def test_commit_and_cancel_race_exactly_one_wins(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """The run's commit CAS and a DELETE started at the same moment, many times, on SQLite and
    PostgreSQL: every round exactly one wins. Cancel won: the row is cancelled with no hash and
    the commit raised UploadCancelledError. Commit won: the hash is recorded, the row still the
    run's, and the DELETE was 409."""
    request.getfixturevalue(backend)
    rt = _runtime()
    gw = _gateway(rt)
    wins: list[str] = []
    for i in range(RACE_ROUNDS):
        results = _race_once(rt, gw, f"race-{i}", commit_delay_s=i * 0.001)
        final = row_of(rt, f"race-{i}")
        if results["cancel"] == "cancelled":
            assert isinstance(results["commit"], UploadCancelledError), results
            assert final.state == uploads.CANCELLED and final.sha256 is None
            wins.append("cancel")
        else:
            assert isinstance(results["cancel"], TusError) and results["cancel"].status == 409
            assert isinstance(results["commit"], GatewayUpload), results
            assert final.state == uploads.PROCESSING and final.sha256 == "ab" * 32
            wins.append("commit")
    assert len(wins) == RACE_ROUNDS
