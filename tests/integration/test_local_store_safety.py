"""The local store cannot be steered outside itself and finishes what a kill interrupted (§6);
bad upload arguments are refused before anything exists; every failure decides abort-or-keep."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError, UploadNotFoundError
from reelflow.ingest_options import MAX_UPLOAD_CONCURRENCY as MAX_CONCURRENCY
from reelflow.planning import MIB, Chunk
from storage.local import UPLOADS_DIR, LocalStore, valid_upload_id
from tasks.chunk_upload import check_upload_args

REPO = Path(__file__).resolve().parents[2]


def _part(store: LocalStore, key: str, upload_id: str, n: int, data: bytes, offset: int) -> Any:
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return store.upload_part(key, upload_id, Chunk(n, offset, len(data)), data, digest)


@pytest.mark.parametrize("bad", ["../../outside", "..", "", "ABCDEF0123456789abcdef01", "a" * 25])
def test_an_upload_id_that_is_not_ours_never_reaches_the_filesystem(
    tmp_path: Path, bad: str
) -> None:
    """Path-like or malformed ids are refused by every multipart call; nothing outside is touched."""
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    store = LocalStore((tmp_path / "a" / "b" / "objects").as_uri())
    (store.root / UPLOADS_DIR).mkdir()
    for call in (
        lambda: store.abort_upload("staging/x.mp4", bad),
        lambda: store.list_parts("staging/x.mp4", bad),
        lambda: store.complete_upload("staging/x.mp4", bad, []),
        lambda: _part(store, "staging/x.mp4", bad, 1, b"x", 0),
    ):
        with pytest.raises(UploadNotFoundError):
            call()
    assert (outside / "keep").is_dir()


@given(st.text(max_size=40))
def test_only_the_stores_own_id_format_is_valid(text: str) -> None:
    """Exactly 24 lowercase hex digits, the ids create_upload hands out."""
    expected = len(text) == 24 and all(c in "0123456789abcdef" for c in text)
    assert valid_upload_id(text) is expected
    assert valid_upload_id(secrets.token_hex(12))


def test_foreign_directories_and_other_keys_are_not_uploads(tmp_path: Path) -> None:
    """list_uploads never offers a planted directory; an upload answers only for its own key."""
    store = LocalStore((tmp_path / "objects").as_uri())
    upload_id = store.create_upload("staging/a.mp4", "video/mp4")
    planted = store.root / UPLOADS_DIR / "..evil"
    planted.mkdir()
    (planted / "meta.json").write_text(json.dumps({"key": "staging/", "initiated": "2020-01-01"}))
    assert [u.upload_id for u in store.list_uploads()] == [upload_id]
    with pytest.raises(UploadNotFoundError):
        store.list_parts("staging/b.mp4", upload_id)
    with pytest.raises(Exception, match="escapes"):
        store.create_upload("../../x.mp4", "video/mp4")


_KILL_AFTER_RENAME = """
import os, signal, sys, types
import storage.local as local
real = local.shutil
def rmtree(path, **kw):
    if "{uploads}" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)  # killed after the rename, before bookkeeping
    return real.rmtree(path, **kw)
local.shutil = types.SimpleNamespace(rmtree=rmtree, copyfile=real.copyfile)
{body}
"""


def test_complete_killed_after_the_rename_is_finished_by_the_next_call(tmp_path: Path) -> None:
    """SIGKILL between the rename and the clean-up: completing again succeeds (no
    FileNotFoundError), returns the same composite, and leaves no upload behind."""
    root = tmp_path / "objects"
    store = LocalStore(root.as_uri())
    upload_id = store.create_upload("staging/s/v.mp4", "video/mp4")
    parts = [
        _part(store, "staging/s/v.mp4", upload_id, n, bytes([n]) * 1000, (n - 1) * 1000)
        for n in (1, 2)
    ]
    body = (
        "from storage.base import PartReceipt\n"
        "store = local.LocalStore(sys.argv[1])\n"
        f"parts = [PartReceipt(*p) for p in {[tuple(p.__dict__.values()) for p in parts]!r}]\n"
        f"store.complete_upload('staging/s/v.mp4', {upload_id!r}, parts)\n"
    )
    code = _KILL_AFTER_RENAME.format(uploads=UPLOADS_DIR, body=body)
    done = subprocess.run([sys.executable, "-c", code, root.as_uri()], cwd=REPO, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert (root / "staging/s/v.mp4").is_file() and store.list_uploads() != []
    composite = store.complete_upload("staging/s/v.mp4", upload_id, parts)
    assert composite and composite.endswith("-2")
    assert store.list_uploads() == []
    assert (root / "staging/s/v.mp4").read_bytes() == b"\x01" * 1000 + b"\x02" * 1000


@pytest.mark.usefixtures("prefect_api")
def test_ingest_killed_after_the_rename_completes_on_the_next_run(
    home: Path, clips: Any, prefect_api: str
) -> None:
    """A real ingest SIGKILLed inside completion (after the rename); the re-run stores the video."""
    from flows.ingest import ingest_video

    clip = clips.medium(12 * MIB)
    body = (
        "from flows.ingest import ingest_video\n"
        f"ingest_video(source=sys.argv[1], chunk_size_bytes={5 * MIB})\n"
    )
    code = _KILL_AFTER_RENAME.format(uploads=UPLOADS_DIR, body=body)
    env = os.environ | {"REELFLOW_HOME": str(home), "PREFECT_API_URL": prefect_api}
    done = subprocess.run(
        [sys.executable, "-c", code, str(clip)], cwd=REPO, env=env, timeout=300, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    summary = ingest_video(source=str(clip), chunk_size_bytes=5 * MIB)
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert summary["sha256"] == sha and summary["chunks_uploaded_this_run"] == 0
    stored = home / "objects" / "videos" / summary["video_uri"].rsplit("/", 1)[-1]  # final key
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert LocalStore((home / "objects").as_uri()).list_uploads() == []


@pytest.mark.parametrize(
    ("chunk", "concurrency", "reason"),
    [
        (-1, 4, "invalid_chunk_size"),
        (0, 4, "invalid_chunk_size"),
        (6 * 1024 * MIB, 4, "invalid_chunk_size"),
        (5 * MIB, -1, "invalid_concurrency"),
        (5 * MIB, 0, "invalid_concurrency"),
        (5 * MIB, MAX_CONCURRENCY + 1, "invalid_concurrency"),
        (5 * MIB, True, "invalid_concurrency"),
        (64 * MIB, 40, "over_memory_budget"),
    ],
)
def test_absurd_upload_arguments_are_validation_errors(
    chunk: int, concurrency: int, reason: str
) -> None:
    """Chunk size, concurrency and their memory (chunk × (concurrency + 1)) are checked."""
    with pytest.raises(InputRejectedError) as err:
        check_upload_args(chunk, concurrency, memory_budget_bytes=1024 * MIB)
    assert err.value.reason == reason
    check_upload_args(5 * MIB, 4, memory_budget_bytes=1024 * MIB)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("chunk", "concurrency"), [(5 * MIB, -1), (-5, 2)])
def test_bad_arguments_leave_no_session_and_nothing_staged(
    home: Path, clips: Any, chunk: int, concurrency: int
) -> None:
    """--concurrency -1 / a negative chunk size: refused (exit 2) before a session or upload exists."""
    from sqlmodel import Session, select

    from flows.ingest import ingest_video
    from reelflow.settings import Settings
    from storage.catalog import UploadSession, make_engine

    with pytest.raises(InputRejectedError):
        ingest_video(source=str(clips.valid()), chunk_size_bytes=chunk, concurrency=concurrency)
    with Session(make_engine(Settings().resolved_database_url)) as s:
        assert s.exec(select(UploadSession)).all() == []
    uploads = home / "objects" / UPLOADS_DIR
    assert not uploads.exists() or list(uploads.iterdir()) == []


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("parts_sent", [0, 1])
def test_an_unexpected_error_aborts_an_empty_session_and_keeps_one_with_parts(
    home: Path, clips: Any, parts_sent: int
) -> None:
    """A non-reelflow error (a bug) decides too: nothing stored → aborted; parts stored → kept."""
    from reelflow.settings import Settings
    from storage.runtime import Runtime
    from tasks.chunk_upload import give_up_upload, open_upload_session, send_part
    from tasks.validate import validate_video

    rt = Runtime.from_settings(Settings())
    checked = validate_video(str(clips.medium(12 * MIB)), rt)
    state = open_upload_session(checked.source, checked.meta, 5 * MIB, rt, concurrency=2)
    if parts_sent:
        chunk = state.plan.chunks[0]
        data = Path(checked.source.uri.removeprefix("file://")).read_bytes()[: chunk.length]
        send_part(rt, state.session_id, state.upload_id, state.staging_key, chunk, data)
    give_up_upload(state, ValueError("a bug"), rt)
    row = rt.catalog.get_session(state.session_id)
    assert row is not None
    if parts_sent:
        assert row.status == "open" and "ValueError" in (row.error or "")
        assert [u.upload_id for u in rt.store.list_uploads()] == [state.upload_id]
    else:
        assert row.status == "aborted" and rt.store.list_uploads() == []
