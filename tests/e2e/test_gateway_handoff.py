"""From a received tus upload to stored media: one ``ingest-video`` run per upload, no second
upload of its bytes.

Uploads are received without HTTP: the gateway's own writer (``storage.tus_writer.TusWriter``)
streams a real clip into the staged multipart upload, in PATCH-sized pieces that leave tails,
on moto's S3 server with the catalog on PostgreSQL, and on the local store with SQLite. The
flow runs on a real Prefect API (the session's test harness); the event path runs on a real
``prefect server start`` with ``reelflow serve`` serving ``ingest-video`` and its trigger, and
the embedded path runs the real ``reelflow ingest --upload`` child process.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.gateway.pipeline import (
    EVENT_RECEIVED,
    EventHandoff,
    PipelineHandoff,
    SubprocessHandoff,
    build_event,
    event_id,
    resume_stalled,
)
from reelflow.errors import InputRejectedError
from reelflow.planning import MIB
from reelflow.rules import sniff_container
from reelflow.settings import Settings
from storage import gateway_uploads as uploads
from storage import stages
from storage.clock import utcnow
from storage.gateway_sweep import upload_lease_name
from storage.gateway_uploads import GatewayUpload
from storage.leases import Leases
from storage.runtime import Runtime
from storage.tus_writer import TusWriter
from tests.support.files import sha256_file
from tests.support.prefect_server import (
    BIN,
    REPO,
    PrefectServer,
    prefect_api,
    start_process,
    stop_process,
    wait_until_served,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

PART = 5 * MIB
PATCH_BYTES = 3 * MIB + 12345  # PATCH bodies that end mid-part: tails are written and read back
OWNER = "creator-7"
FILENAME = "first light.mp4"
RUN_WAIT_S = 60.0
SERVE_WAIT_S = 60.0
CHILD_WAIT_S = 120.0  # a child process starts its own Prefect API server (~10 s on 2 cores)


def _runtime() -> Runtime:
    return Runtime.from_settings(Settings())


def _pieces(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


def start_upload(
    rt: Runtime, length: int, *, filename: str = FILENAME, **meta: str
) -> tuple[TusWriter, GatewayUpload]:
    writer = TusWriter(rt.store, rt.catalog, part_size=PART)
    row = writer.create(
        GatewayUpload(
            id=secrets.token_urlsafe(18),
            owner=OWNER,
            length=length,
            metadata_json=json.dumps({"filename": filename, "filetype": "video/mp4", **meta}),
            expires_at=utcnow() + timedelta(days=1),
        )
    )
    return writer, row


def receive(rt: Runtime, clip: Path, **meta: str) -> GatewayUpload:
    """``clip`` sent in PATCH-sized bodies, as the gateway's handlers would write them."""
    writer, row = start_upload(rt, clip.stat().st_size, **meta)
    data = clip.read_bytes()
    for start in range(0, len(data), PATCH_BYTES):
        body = data[start : start + PATCH_BYTES]
        row = writer.append(row, [body], first_bytes_check=sniff_container).row
    assert row.state == uploads.RECEIVED, row
    return row


def row_of(rt: Runtime, upload: str) -> GatewayUpload:
    row = uploads.get(rt.catalog.engine, upload)
    assert row is not None
    return row


def ingest(upload: str) -> dict[str, Any]:
    from flows.ingest import ingest_video

    summary: dict[str, Any] = ingest_video(source=f"tus:{upload}", upload=upload)
    return summary


def leftovers(rt: Runtime, row: GatewayUpload) -> tuple[list[str], list[str]]:
    """What the upload left in the store: objects under its prefix, pending multipart uploads;
    a stored upload's media (its video is stored where it was received, the thumbnail and
    metadata beside it) is what it became, not left over."""
    now = uploads.get(rt.catalog.engine, row.id)
    media = rt.catalog.get_media(now.media_id) if now is not None and now.media_id else None
    kept = {media.video_key, media.thumbnail_key, media.metadata_key} if media else set()
    objects = [k for k, _ in rt.store.list_objects(uploads.upload_prefix(row.id)) if k not in kept]
    pending = [p.key for p in rt.store.list_uploads(uploads.upload_prefix(row.id))]
    return objects, pending


def read_run(api: str, run_id: str) -> dict[str, Any]:
    reply = prefect_api("GET", f"{api}/flow_runs/{run_id}")
    reply.raise_for_status()
    return dict(reply.json())


@pytest.fixture
def s3_pg(s3_env: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's S3 store and the session's PostgreSQL catalog."""
    monkeypatch.setenv("REELFLOW_DATABASE_URL", pg_url)
    return s3_env


# --- the flow on a real Prefect API --------------------------------------------------------------


def test_received_upload_is_stored_without_uploading_its_bytes_again(
    prefect_api: str, s3_pg: str, s3_server: Any, clips: Any
) -> None:
    """S3 + PostgreSQL: the run completes the staged upload where it is: not one UploadPart (or
    a PutObject of the video) during the flow, stored SHA-256 = the clip's, thumbnail beside it,
    row ``stored``, the run named after the file and tagged with the creator."""
    clip = clips.medium()
    rt = _runtime()
    row = receive(rt, clip)
    s3_server.reset_stats()

    summary = ingest(row.id)

    stats = s3_server.stats()
    assert stats.get("UploadPart", 0) == 0, stats
    assert stats.get("UploadPartCopy", 0) == 0, stats
    assert stats.get("CompleteMultipartUpload", 0) == 1, stats
    put = s3_server.bytes_in().get("PutObject", 0)
    assert put < MIB, f"{put} bytes of PutObject: only the thumbnail and metadata may be put"
    sha = sha256_file(clip)
    assert summary["sha256"] == sha
    assert summary["size_bytes"] == clip.stat().st_size
    assert summary["bytes_uploaded_this_run"] == 0 and summary["chunks_uploaded_this_run"] == 0
    assert summary["chunks_total"] == 3
    media = rt.catalog.get_media(summary["media_id"])
    assert media is not None and rt.store.sha256_hex(media.video_key) == sha
    assert rt.store.exists(media.thumbnail_key) and rt.store.size(media.thumbnail_key)
    done = row_of(rt, row.id)
    assert (done.state, done.media_id, done.sha256) == (uploads.STORED, media.media_id, sha)
    assert leftovers(rt, row) == ([], [])
    run = read_run(prefect_api, str(done.flow_run_id))
    assert run["name"] == f"ingest-{FILENAME}"
    assert {f"creator:{OWNER}", "mode:none"} <= set(run["tags"])


def test_same_upload_twice_is_one_media_and_the_same_summary(
    prefect_api: str, home: Path, clips: Any
) -> None:
    """Local store + SQLite: a second run of a stored upload assembles nothing and returns the
    same media; the catalog holds one media."""
    rt = _runtime()
    row = receive(rt, clips.valid())

    first = ingest(row.id)
    second = ingest(row.id)

    assert second["media_id"] == first["media_id"] and second["sha256"] == first["sha256"]
    assert [m.media_id for m in rt.catalog.list_media()] == [first["media_id"]]
    assert row_of(rt, row.id).state == uploads.STORED
    assert rt.store.sha256_hex(rt.catalog.list_media()[0].video_key) == sha256_file(clips.valid())


def test_upload_with_account_metadata_is_published_as_it_asks(
    prefect_api: str, home: Path, sandbox: Any, clips: Any
) -> None:
    """The upload's metadata (account, caption, privacy) is the publish request: the run posts
    to the sandbox once, with that caption, and is tagged with the account."""
    from tests.support.tiktok import add_account

    rt = _runtime()
    add_account(rt, sandbox, "studio")
    row = receive(
        rt, clips.valid(), account="studio", caption="first light", privacy_level="SELF_ONLY"
    )

    summary = ingest(row.id)

    publish = summary["publish"]
    assert publish and publish["status"] == "PUBLISH_COMPLETE", publish
    stats = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10).json()
    assert stats["posts"] == 1, stats
    run = read_run(prefect_api, str(row_of(rt, row.id).flow_run_id))
    assert {f"creator:{OWNER}", "account:studio", "mode:direct"} <= set(run["tags"])
    again = ingest(row.id)  # stored, and published already: nothing is posted twice
    assert again["publish"]["publish_id"] == publish["publish_id"]
    assert httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10).json()["posts"] == 1


def test_upload_of_a_run_that_died_is_taken_over_by_the_next_run(
    prefect_api: str, home: Path, clips: Any
) -> None:
    """A row left ``processing`` by a run that died (its lease is free) is taken by the next
    run: it is stored once, under the new run's id."""
    rt = _runtime()
    row = receive(rt, clips.valid())
    taken = uploads.cas_update(
        rt.catalog.engine, row.id, row.version, state=uploads.PROCESSING, flow_run_id="dead-run"
    )
    assert taken is not None

    summary = ingest(row.id)

    done = row_of(rt, row.id)
    assert done.state == uploads.STORED and done.flow_run_id not in (None, "dead-run")
    assert summary["sha256"] == sha256_file(clips.valid())


def test_video_header_followed_by_garbage_fails_and_leaves_nothing(
    prefect_api: str, s3_pg: str, clips: Any
) -> None:
    """An MP4 whose header passes the gateway's first-bytes check but whose moov is gone: the run
    fails validation, the row is ``failed`` with the reason, and nothing is left in the store
    (no object, no pending multipart upload) or in the ledger."""
    rt = _runtime()
    row = receive(rt, clips.bad("truncated"))

    with pytest.raises(InputRejectedError):
        ingest(row.id)

    failed = row_of(rt, row.id)
    assert failed.state == uploads.FAILED
    assert str(failed.error).startswith("unreadable_media: ffprobe cannot read"), failed.error
    assert leftovers(rt, row) == ([], [])
    assert row.upload_id and rt.catalog.ledger_parts(row.upload_id) == {}
    assert [m for m in rt.catalog.list_media() if m.source_uri == f"tus:{row.id}"] == []
    with pytest.raises(InputRejectedError, match="failed"):
        ingest(row.id)  # refused from then on


def test_upload_whose_metadata_is_refused_now_fails_once_and_leaves_nothing(
    prefect_api: str, home: Path, clips: Any
) -> None:
    """Metadata the run's rules refuse (a direct post with no account): the row is failed and
    its bytes removed, so no sweeper hands it off again."""
    rt = _runtime()
    row = receive(rt, clips.valid(), mode="direct")

    with pytest.raises(InputRejectedError, match="needs an account"):
        ingest(row.id)

    failed = row_of(rt, row.id)
    assert failed.state == uploads.FAILED and str(failed.error).startswith("no_account:")
    assert leftovers(rt, row) == ([], [])
    assert resume_stalled(rt, 0, handoff=Recorder(), now=utcnow() + timedelta(hours=1)) == []


def test_expired_receiving_upload_is_removed_by_the_cleanup_flow(
    prefect_api: str, s3_pg: str, clips: Any
) -> None:
    """Half an upload (parts and a tail) past its Upload-Expires: the cleanup deployment aborts
    its multipart upload, deletes its tail and marks it ``expired``; a live upload is kept."""
    from flows.maintenance import cleanup

    rt = _runtime()
    data = clips.medium().read_bytes()
    writer, row = start_upload(rt, len(data))
    row = writer.append(row, [data[: PART + 1000]], first_bytes_check=sniff_container).row
    assert row.tail_size == 1000 and leftovers(rt, row)[0] and leftovers(rt, row)[1]
    expired = uploads.cas_update(
        rt.catalog.engine, row.id, row.version, expires_at=utcnow() - timedelta(minutes=1)
    )
    assert expired is not None
    _, live = start_upload(rt, len(data))

    report = cleanup(dry_run=False, upload_ttl_hours=24.0)

    assert {"kind": "gateway_upload", "what": row.id} in [
        {"kind": f["kind"], "what": f["what"]} for f in report["findings"]
    ]
    assert row_of(rt, row.id).state == uploads.EXPIRED
    assert leftovers(rt, row) == ([], [])
    assert row.upload_id and rt.catalog.ledger_parts(row.upload_id) == {}
    assert row_of(rt, live.id).state == uploads.RECEIVING
    assert leftovers(rt, live)[1], "the live upload's multipart upload must stay"
    last = stages.latest(rt.catalog.engine, row.id)  # the stage log (metrics, daily report)
    assert last is not None and (last.stage, last.reason) == (stages.FAILED, "upload_expired")
    live_last = stages.latest(rt.catalog.engine, live.id)
    assert live_last is None or live_last.stage != stages.FAILED


# --- the sweeper -------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def received(self, row: GatewayUpload) -> None:
        self.calls.append((row.id, None))

    def resume(self, row: GatewayUpload, after_run: str | None) -> None:
        self.calls.append((row.id, after_run))


def test_sweeper_hands_off_received_uploads_without_a_run_and_those_of_dead_runs(
    home: Path, clips: Any
) -> None:
    """``received`` for longer than N s → handed off again; a fresh one, one a live run holds,
    and a stored one are left alone; ``processing`` by a run whose lease is free → resumed."""
    rt = _runtime()
    stalled = receive(rt, clips.valid())
    dead = receive(rt, clips.valid())
    live = receive(rt, clips.valid())
    for row, run in ((dead, "run-dead"), (live, "run-live")):
        assert uploads.cas_update(
            rt.catalog.engine, row.id, row_of(rt, row.id).version, state=uploads.PROCESSING,
            flow_run_id=run,
        )  # fmt: skip
    leases = Leases(rt.catalog.engine, ttl_s=3600)
    assert leases.acquire(upload_lease_name(live.id, rt.store.url), "run-live") is not None
    later = utcnow() + timedelta(seconds=600)
    recorder = Recorder()

    assert resume_stalled(rt, 900, handoff=recorder, now=later) == []
    handed = resume_stalled(rt, 300, handoff=recorder, now=later)

    assert sorted(handed) == sorted([stalled.id, dead.id])
    assert sorted(recorder.calls) == sorted([(stalled.id, None), (dead.id, "run-dead")])


def test_gateway_lifespan_start_sweeps_at_once_and_close_stops_it(home: Path, clips: Any) -> None:
    """The hand-off ``reelflow gateway`` gets: ``start()`` (the app's lifespan) sweeps at once, so
    an upload a killed gateway never handed off gets its run; ``close()`` stops the sweeper."""
    rt = _runtime()
    row = receive(rt, clips.valid())
    recorder = Recorder()
    handoff = PipelineHandoff(Settings(), recorder, older_than_s=0)  # type: ignore[arg-type]

    handoff.start()
    try:
        wait_for(lambda: recorder.calls, "the first sweep", 30)
    finally:
        handoff.close()
    assert recorder.calls == [(row.id, None)]


def test_event_ids_are_deterministic_and_name_nothing_secret(home: Path, clips: Any) -> None:
    """The same upload gives the same event id; a resumption after a dead run another; the event
    carries the upload, its source and file name only."""
    rt = _runtime()
    row = receive(rt, clips.valid())
    now = utcnow()
    event = build_event(row, occurred=now)
    assert event["id"] == str(event_id(row.id)) == build_event(row, occurred=now)["id"]
    assert build_event(row, occurred=now, after_run="r1")["id"] != event["id"]
    assert event["event"] == EVENT_RECEIVED
    assert event["resource"] == {
        "prefect.resource.id": f"reelflow.upload.{row.id}",
        "prefect.resource.name": FILENAME,
    }
    assert set(event["payload"]) == {"upload", "source", "size", "after_run"}


# --- the two hand-offs, end to end ---------------------------------------------------------------


def test_embedded_handoff_runs_reelflow_ingest_in_a_child_after_a_lost_handoff(
    home: Path, clips: Any, tmp_path: Path
) -> None:
    """No Prefect server: an upload whose hand-off was lost (the gateway died after the last
    byte) is found by the sweeper and run by a ``reelflow ingest --upload`` child; stored."""
    rt = _runtime()
    row = receive(rt, clips.valid())
    # The gateway's environment (REELFLOW_HOME: this test's) is the child's, with a Prefect
    # home of its own: it starts its own API server, as `reelflow ingest` does embedded.
    child_env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PREFECT_HOME": str(tmp_path / "child-prefect"),
    }
    handoff = SubprocessHandoff(tmp_path / "runs.log", env=child_env)

    assert resume_stalled(rt, 0, handoff=handoff, now=utcnow() + timedelta(seconds=1)) == [row.id]
    assert handoff.running() == [row.id]
    handoff.received(row)  # a repeat while its run is on: no second child
    assert handoff.running() == [row.id]

    try:
        wait_for(
            lambda: not handoff.running(),
            "the reelflow ingest child to finish",
            CHILD_WAIT_S,
            poll_s=0.5,
            detail=lambda: (tmp_path / "runs.log").read_text(errors="replace")[-3000:],
        )
    finally:
        handoff.close()
    log = (tmp_path / "runs.log").read_text(errors="replace")
    done = row_of(rt, row.id)
    assert done.state == uploads.STORED, log[-3000:]
    assert json.loads(log.strip().splitlines()[-1])["sha256"] == sha256_file(clips.valid())


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def runs_of(server: PrefectServer, upload: str) -> list[dict[str, Any]]:
    body = {"sort": "START_TIME_DESC", "limit": 200}
    reply = prefect_api("POST", f"{server.api_url}/flow_runs/filter", json=body)
    reply.raise_for_status()
    return [r for r in reply.json() if r["parameters"].get("upload") == upload]


@pytest.fixture
def served(prefect_server: PrefectServer, home: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """``reelflow serve --only ingest-video`` on the session's Prefect server, this test's home."""
    env = prefect_server.env(
        REELFLOW_HOME=str(home),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
    )
    for var in ("REELFLOW_DATABASE_URL", "REELFLOW_STORE_URL"):
        env.pop(var, None)
    log = tmp_path / "serve.log"
    serve = start_process(
        [str(BIN / "reelflow"), "serve", "--only", "ingest-video"], env, log, REPO
    )
    try:
        wait_until_served(serve, log, SERVE_WAIT_S)
        yield env
    finally:
        stop_process(serve)


def test_event_handoff_starts_one_served_run_that_stores_the_upload(
    prefect_server: PrefectServer, served: dict[str, str], clips: Any
) -> None:
    """With a Prefect server: the hand-off's event (posted twice, as two gateways would) starts
    one ``ingest-video`` run through the upload-received trigger; it completes, ``origin`` is
    gateway, and the row is stored."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rt = _runtime()
    row = receive(rt, clips.valid())
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        EventHandoff().received(row)
        EventHandoff().received(row)

    def finished() -> dict[str, Any] | None:
        final = [r for r in runs_of(prefect_server, row.id) if r["state"]["type"] in FINAL]
        return final[0] if final else None

    run = wait_for(finished, "the upload's ingest-video run", RUN_WAIT_S, poll_s=0.5)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"]["origin"] == "gateway"
    assert run["name"] == f"ingest-{FILENAME}"
    assert row_of(rt, row.id).state == uploads.STORED
    assert len(runs_of(prefect_server, row.id)) == 1
    reply = httpx.post(
        f"{prefect_server.api_url}/events/filter",
        json={"filter": {"resource": {"id": [f"reelflow.upload.{row.id}"]}}},
        timeout=10,
    )
    assert len(reply.json()["events"]) == 1
