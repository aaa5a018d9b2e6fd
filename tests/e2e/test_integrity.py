"""A store that does not hold what was planned: the run fails, aborts, and publishes nothing."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.chunk_pipeline import send_source
from reelflow.errors import IntegrityCheckError, ReelflowError
from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.runtime import Runtime
from tasks.assemble import assemble_upload
from tasks.chunk_upload import give_up_upload, open_upload_session
from tasks.validate import validate_video

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow(name="tampered-ingest")
def tampered_ingest(source: str, tamper: str) -> None:
    """The real steps, with a second writer interfering between upload and assembly."""
    rt = Runtime.from_settings(Settings())
    checked = validate_video(source, rt)
    state = open_upload_session(checked.source, checked.meta, 5 * MIB, rt)
    sent = send_source(checked.source, state, rt, concurrency=2)
    chunk = state.plan.chunks[1]
    if tamper == "replace-part":
        other = b"\0" * chunk.length
        digest = base64.b64encode(hashlib.sha256(other).digest()).decode()
        rt.store.upload_part(state.staging_key, state.upload_id, chunk, other, digest)
    elif tamper == "flip-staged-byte":  # local store: corrupt the staged bytes, not the markers
        data = Path(rt.store.url.removeprefix("file://")) / ".uploads" / state.upload_id / "data"
        with data.open("r+b") as fh:
            fh.seek(chunk.offset + 100)
            byte = fh.read(1)
            fh.seek(chunk.offset + 100)
            fh.write(bytes([byte[0] ^ 0xFF]))
    try:
        assemble_upload(state, sent.sha256_hex, sent.part_digests_b64, rt)
    except ReelflowError as exc:
        give_up_upload(state, exc, rt)
        raise


def test_replaced_part_fails_assembly_on_s3(
    s3_env: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """A part whose checksum differs from the source's: IntegrityCheckError, upload aborted, no object."""
    with pytest.raises(IntegrityCheckError, match="part 2: (checksum|ETag) differs"):
        tampered_ingest(str(clips.medium(12 * MIB)), "replace-part")
    s3 = s3_server.client()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_corrupted_staged_bytes_fail_the_whole_file_check(home: Path, clips: Any) -> None:
    """Local store: the read-back SHA-256 catches bytes changed after the parts were accepted."""
    with pytest.raises(IntegrityCheckError, match="sha256"):
        tampered_ingest(str(clips.medium(12 * MIB)), "flip-staged-byte")
    objects = home / "objects"
    assert [p for p in objects.rglob("*") if p.is_file()] == []
