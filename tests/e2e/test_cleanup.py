"""The cleanup flow removes what crashed runs leave behind, and reports it; dry_run removes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.chunk_pipeline import send_source
from flows.ingest import ingest_video
from flows.maintenance import chunk_results_dir, cleanup
from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.catalog import Catalog, make_engine
from storage.runtime import Runtime
from tasks.chunk_upload import open_upload_session
from tasks.validate import validate_video

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow(name="crashing-ingest")
def crashing_ingest(source: str) -> str:
    """The real first steps, then a crash (an error that is not a reelflow error keeps state)."""
    rt = Runtime.from_settings(Settings())
    checked = validate_video(source, rt)
    state = open_upload_session(checked.source, checked.meta, 5 * MIB, rt)
    send_source(checked.source, state, rt, concurrency=2)
    raise RuntimeError(f"simulated crash before assembly of {state.session_id}")


def test_cleanup_aborts_leftovers_and_drops_finished_cache(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """dry_run reports and keeps; a real run aborts the upload, abandons the session and deletes
    the cached chunk results of the finished session."""
    done = ingest_video(source=str(clips.valid()))
    catalog = Catalog(make_engine(Settings().resolved_database_url))
    finished = catalog.completed_session_for(
        Runtime.from_settings(Settings()).sources.resolve(str(clips.valid())).fingerprint,
        s3_env,
    )
    assert finished is not None and done["media_id"] == finished.media_id
    assert (chunk_results_dir() / finished.id).is_dir()

    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing_ingest(str(clips.medium(12 * MIB)))
    s3 = s3_server.client()
    assert len(s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1

    report = cleanup(dry_run=True, upload_ttl_hours=0)
    kinds = {(f["kind"], f["action"]) for f in report["findings"]}
    assert ("multipart_upload", "would remove") in kinds
    assert ("session", "would remove") in kinds
    assert ("cached_results", "would remove") in kinds
    assert len(s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1  # nothing touched

    report = cleanup(dry_run=False, upload_ttl_hours=0)
    assert report["counts"]["multipart_upload"] == 1
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not (chunk_results_dir() / finished.id).exists()
    statuses = {r.status for r in _sessions(catalog)}
    assert statuses == {"completed", "abandoned"}
    # the stored media is untouched
    assert s3.head_object(Bucket=bucket, Key=done["video_uri"].removeprefix(f"s3://{bucket}/"))


def _sessions(catalog: Catalog) -> list[Any]:
    from sqlmodel import Session, select

    from storage.catalog import UploadSession

    with Session(catalog.engine) as s:
        return list(s.exec(select(UploadSession)).all())


def test_cleanup_keeps_what_a_live_run_holds(home: Path, clips: Any) -> None:
    """A session under an unexpired lease is not touched even when older than the TTL."""
    from storage.leases import Leases

    with pytest.raises(RuntimeError):
        crashing_ingest(str(clips.medium(12 * MIB)))
    catalog = Catalog(make_engine(Settings().resolved_database_url))
    (row,) = _sessions(catalog)
    leases = Leases(catalog.engine, ttl_s=600)
    assert leases.try_acquire("src_live", "someone-else")
    leases.renew("src_live", "someone-else", session_id=row.id)
    report = cleanup(dry_run=False, upload_ttl_hours=0)
    assert ("multipart_upload", "kept (live run)") in {
        (f["kind"], f["action"]) for f in report["findings"]
    }
    assert {r.status for r in _sessions(catalog)} == {"open"}
