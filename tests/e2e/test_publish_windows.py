"""The TikTok leg in windows of consecutive chunks: kills, faults and progress inside a window.

One Prefect task sends a window of chunks (``REELFLOW_TIKTOK_WINDOW_BYTES``); what must hold is
what held with one task per chunk: a killed or failed run never re-sends a range TikTok
acknowledged, a retry re-sends only what is missing, and progress moves per chunk. Real parts:
the sandbox over HTTP on 127.0.0.1, a real ``reelflow publish`` process to SIGKILL, a real
Prefect API; the only thing mocked is which request a fault strikes.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.publish import publish_media
from reelflow.progress import progress_listener
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox
from reelflow.tiktok.sandbox.faults import InjectedFault
from storage.publishing import list_publishes
from storage.runtime import Runtime
from tests.e2e.test_publish import base_clip, ingest, received, sized  # noqa: F401 (fixture)
from tests.e2e.test_publish_kill import (  # noqa: F401 (fixtures)
    CHUNK,
    SIX_CHUNKS,
    Hold,
    kill_when_held,
    publish_cmd,
    published_setup,
    rerun,
    sandbox,
)
from tests.support.files import sha256_file
from tests.support.tiktok import PutMeter, add_account

pytestmark = pytest.mark.usefixtures("prefect_api")

PUT = "PUT /upload/video/"
ONE_WINDOW = str(64 * 1024 * 1024)  # the default: all six chunks (61 MiB) in one window
THREE_CHUNK_WINDOWS = str(3 * CHUNK)  # two windows of three chunks (the last one longer)


def chunk_ranges(sb: RunningSandbox, mp: pytest.MonkeyPatch) -> list[str]:
    """The Content-Range of every PUT that reached the sandbox's upload state, in order."""
    ranges: list[str] = []
    original = sb.state.begin_put

    def spy(upload_id: str, upload_token: str, headers: Any) -> Any:
        ranges.append(headers.get("content-range", ""))
        return original(upload_id, upload_token, headers)

    mp.setattr(sb.state, "begin_put", spy)
    return ranges


def expected_ranges(first: int, last: int) -> list[str]:
    """Content-Range of chunks ``first..last`` (0-based) of the six-chunk clip."""
    out = []
    for i in range(first, last + 1):
        end = SIX_CHUNKS - 1 if i == 5 else (i + 1) * CHUNK - 1
        out.append(f"bytes {i * CHUNK}-{end}/{SIX_CHUNKS}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("window_bytes", "held_put"),
    [
        pytest.param(ONE_WINDOW, 3, id="third-chunk-of-the-one-window"),
        pytest.param(THREE_CHUNK_WINDOWS, 5, id="second-chunk-of-the-second-window"),
    ],
)
def test_sigkill_mid_window_resumes_from_tiktoks_byte_and_resends_nothing(
    window_bytes: str,
    held_put: int,
    prefect_api: str,
    sandbox: RunningSandbox,  # noqa: F811
    published_setup: tuple[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed inside a window with TikTok a chunk ahead of the ledger: the re-run sends exactly
    the chunks TikTok lacks; over both runs the sandbox receives each byte once."""
    media_id, clip = published_setup
    env = os.environ | {
        "PREFECT_API_URL": prefect_api,
        "REELFLOW_TIKTOK_WINDOW_BYTES": window_bytes,
    }
    cmd = publish_cmd(media_id, "--account", "creator", "--json")
    with PutMeter(sandbox) as meter:
        with pytest.MonkeyPatch.context() as mp:
            kill_when_held(cmd, env, Hold(sandbox, "commit_put", held_put, mp))
        [(publish_id, before)] = sandbox.state.stats()["publishes"].items()
        assert before["uploaded_bytes"] == held_put * CHUNK
        [row] = list_publishes(Runtime.from_settings(Settings()).catalog.engine, media_id)
        # Per chunk, written while the next PUT is on the wire: one behind TikTok at most.
        assert (held_put - 1) * CHUNK <= row.bytes_acknowledged <= held_put * CHUNK
        with pytest.MonkeyPatch.context() as mp:
            ranges = chunk_ranges(sandbox, mp)
            summary = rerun(cmd, env)
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["publish_id"] == publish_id
    assert summary["chunks_sent_this_run"] == 6 - held_put
    assert ranges == expected_ranges(held_put, 5)
    assert meter.bytes == SIX_CHUNKS  # nothing TikTok acknowledged went out twice
    after = sandbox.state.stats()
    assert (after["inits"], after["posts"]) == (1, 1)
    assert after["publishes"][publish_id]["sha256"] == sha256_file(clip)


def fault_on_put(sb: RunningSandbox, mp: pytest.MonkeyPatch, n: int, fault: InjectedFault) -> None:
    """The ``n``-th chunk PUT (1-based) is answered with ``fault`` and not applied."""
    original, seen = sb.state.roll_fault, [0]

    def roll(target: str) -> InjectedFault | None:
        if target == "upload":
            seen[0] += 1
            if seen[0] == n:
                return fault
        return original(target)

    mp.setattr(sb.state, "roll_fault", roll)


SERVER_ERROR = InjectedFault("error", 503)
RATE_LIMITED = InjectedFault("rate_limit", 429, retry_after_s=1)


@pytest.mark.parametrize(
    ("window_bytes", "nth", "fault"),
    [
        pytest.param(ONE_WINDOW, 3, SERVER_ERROR, id="503-mid-window"),
        pytest.param(ONE_WINDOW, 1, SERVER_ERROR, id="503-on-the-windows-first-chunk"),
        pytest.param(ONE_WINDOW, 5, RATE_LIMITED, id="429-mid-window"),
        pytest.param("1", 3, SERVER_ERROR, id="503-one-chunk-windows"),
    ],
)
def test_a_retryable_fault_on_one_chunk_resends_only_that_chunk(
    window_bytes: str,
    nth: int,
    fault: InjectedFault,
    home: Path,
    sandbox: RunningSandbox,  # noqa: F811
    base_clip: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One PUT answered 5xx/429: that chunk goes again, no other; one post, exact bytes."""
    monkeypatch.setenv("REELFLOW_TIKTOK_WINDOW_BYTES", window_bytes)
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox)
    clip = sized(base_clip, SIX_CHUNKS, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    ranges = chunk_ranges(sandbox, monkeypatch)
    fault_on_put(sandbox, monkeypatch, nth, fault)
    summary = publish_media(media_id=media_id, account="creator")
    stats = sandbox.state.stats()
    assert summary["status"] == "PUBLISH_COMPLETE" and stats["posts"] == 1
    assert summary["chunks_sent_this_run"] == 6
    assert stats["calls"][PUT] == 7  # the six chunks and the faulted one once more
    assert ranges == expected_ranges(0, 5)  # the faulted PUT never reached the upload state
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def test_s3_windows_fetch_ahead_and_a_mid_window_fault_resends_one_chunk(
    s3_env: str,
    sandbox: RunningSandbox,  # noqa: F811
    base_clip: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From S3 (ranged GETs, one chunk fetched ahead): byte-exact, and a 503 mid-window costs
    one chunk's PUT again (the prefetched body of the next one is not sent early)."""
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox)
    clip = sized(base_clip, SIX_CHUNKS, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    ranges = chunk_ranges(sandbox, monkeypatch)
    fault_on_put(sandbox, monkeypatch, 4, SERVER_ERROR)
    summary = publish_media(media_id=media_id, account="creator")
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 6
    assert sandbox.state.stats()["calls"][PUT] == 7
    assert ranges == expected_ranges(0, 5)
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def test_progress_moves_per_chunk_inside_a_window(
    home: Path,
    sandbox: RunningSandbox,  # noqa: F811
    base_clip: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Six chunks in one window task: the run's progress subscriber hears every chunk."""
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox)
    clip = sized(base_clip, SIX_CHUNKS, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    heard: list[int] = []

    def listen(done: int, total: int) -> None:
        assert total == SIX_CHUNKS
        heard.append(done)

    def run(listener: Callable[[int, int], None]) -> dict[str, Any]:
        progress_listener.set(listener)
        return publish_media(media_id=media_id, account="creator")

    summary = contextvars.copy_context().run(run, listen)
    assert summary["status"] == "PUBLISH_COMPLETE"
    boundaries = [i * CHUNK for i in range(1, 6)] + [SIX_CHUNKS]
    assert set(heard) == {0, *boundaries}  # the start, then every acknowledged chunk
    assert heard == sorted(heard)  # never backwards


def upload_task_runs(flow_run_id: Any, expected: int) -> list[str]:
    """Names of the flow run's upload task runs, once the API has recorded ``expected`` of them
    (task runs reach it as events; bounded wait)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    names: list[str] = []
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            names = sorted(r.name for r in runs if r.name.startswith("tiktok-upload-window"))
            if len(names) >= expected:
                time.sleep(1.0)  # any straggler would be recorded by now
                runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                return sorted(r.name for r in runs if r.name.startswith("tiktok-upload-window"))
            time.sleep(0.25)
    return names


@pytest.mark.parametrize(
    ("window_bytes", "task_runs"),
    [pytest.param(ONE_WINDOW, 1, id="default"), pytest.param("1", 6, id="one-chunk-windows")],
)
def test_one_task_run_per_window(
    window_bytes: str,
    task_runs: int,
    home: Path,
    sandbox: RunningSandbox,  # noqa: F811
    base_clip: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six chunks: one upload task run with the default window, six with one-chunk windows."""
    monkeypatch.setenv("REELFLOW_TIKTOK_WINDOW_BYTES", window_bytes)
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox)
    media_id = ingest(sized(base_clip, SIX_CHUNKS, tmp_path / "clip.mp4"))
    state = publish_media(media_id=media_id, account="creator", return_state=True)
    summary = state.result()
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 6
    assert len(upload_task_runs(state.state_details.flow_run_id, task_runs)) == task_runs
