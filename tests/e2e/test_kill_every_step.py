"""Kill suite: SIGKILL a real ``reelflow ingest --account`` at seeded points across every step,
re-run it, and the world is as if nothing had happened.

Each point gets its own bucket (moto S3 server in this process), TikTok sandbox, SQLite catalog
and REELFLOW_HOME; the children report to the session's Prefect API, whose event stream tells
this process which task the child is in. A reference run discovers the steps (a new task, e.g.
``scan`` when clamd is up, is drawn like the others). During the killed run both servers answer
each request ``LINK_LATENCY_S`` late (a slow link), so short steps last long enough to be hit.

``REELFLOW_CHAOS_POINTS`` (default 12; ``make chaos`` runs 50) and ``REELFLOW_CHAOS_SEED`` pick
the points; a failure names its seed, point and step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.runtime import Runtime
from tests.support.chaos import (
    KillOutcome,
    KillPoint,
    RunEvents,
    StepTimeline,
    Tally,
    draw_points,
    env_vars,
    print_past_capture,
    run_and_kill,
)
from tests.support.files import sha256_file
from tests.support.tiktok import SANDBOX_CONFIG, PutMeter, add_account, slow_sandbox

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

POINTS = int(os.environ.get("REELFLOW_CHAOS_POINTS", "12"))
SEED = int(os.environ.get("REELFLOW_CHAOS_SEED", "8"))
CHUNK = 5 * MIB  # S3's smallest part
CONCURRENCY = 2
CLIP_BYTES = 20 * MIB  # ~22 MB: 5 S3 parts, 2 TikTok chunks
LINK_LATENCY_S = 0.03
MAX_OFFSET_S = 0.03
KILL_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 300.0
LEASE_WAIT_S = "60"  # a lease a dead run kept would fail the re-run in a minute, not an hour
ACCOUNT = "creator"
_DROPPED_ENV = (
    "REELFLOW_DATABASE_URL",
    "REELFLOW_CHUNK_SIZE_BYTES",
    "REELFLOW_UPLOAD_CONCURRENCY",
    "REELFLOW_MAX_DURATION_S",
    "REELFLOW_CLAMD_URL",
)


def reelflow_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reelflow"), *args]


@dataclass
class Chaos:
    """What every point shares: the servers, the event stream, the clip and the drawn points."""

    prefect_api: str
    s3: Any
    events: RunEvents
    clip: Path
    clip_sha256: str
    clamd_url: str | None
    root: Path
    timeline: StepTimeline | None = None
    points: list[KillPoint] | None = None


@dataclass
class World:
    """One point's own bucket, sandbox, home and command."""

    bucket: str
    sandbox: Any
    env: dict[str, str]
    cmd: list[str]
    clip: Path
    dir: Path


@pytest.fixture(scope="module")
def chaos(
    prefect_api: str,
    s3_server: Any,
    clips: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Chaos]:
    clamd_url: str | None = None
    try:  # the scan step exists only with a clamd; without one the suite still covers the rest
        clamd_url = request.getfixturevalue("clamd").url
    except Exception as exc:  # any start failure means "no scan step", not a failed suite
        print(f"clamd unavailable, scan off: {exc!r}")
    clip = Path(clips.medium(CLIP_BYTES))
    with RunEvents(prefect_api) as events:
        yield Chaos(
            prefect_api=prefect_api,
            s3=s3_server,
            events=events,
            clip=clip,
            clip_sha256=sha256_file(clip),
            clamd_url=clamd_url,
            root=tmp_path_factory.mktemp("chaos"),
        )


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    result = Tally()
    yield result
    print_past_capture(request, result.table(f"kill points (seed {SEED}, {POINTS} points)"))


@contextmanager
def make_world(chaos: Chaos, name: str) -> Iterator[World]:
    from reelflow.tiktok.sandbox import start_sandbox

    where = chaos.root / name
    where.mkdir()
    bucket = f"rf-chaos-{uuid.uuid4().hex[:10]}"
    chaos.s3.client().create_bucket(Bucket=bucket)
    # A file name of its own: the child's flow run is named after it.
    clip = where / f"chaos-{name}.mp4"
    try:
        os.link(chaos.clip, clip)
    except OSError:
        shutil.copyfile(chaos.clip, clip)
    with start_sandbox(SANDBOX_CONFIG, data_dir=where / "sandbox") as sb:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV} | {
            "REELFLOW_HOME": str(where / "home"),
            "REELFLOW_STORE_URL": f"s3://{bucket}/media",
            "REELFLOW_S3_ENDPOINT_URL": chaos.s3.endpoint_url,
            "REELFLOW_TIKTOK_API_BASE": sb.base_url,
            "REELFLOW_LEASE_WAIT_S": LEASE_WAIT_S,
            "PREFECT_API_URL": chaos.prefect_api,
        }
        if chaos.clamd_url:
            env["REELFLOW_CLAMD_URL"] = chaos.clamd_url
        with env_vars(env):
            add_account(Runtime.from_settings(Settings()), sb, ACCOUNT)
        cmd = reelflow_cmd(
            "ingest", str(clip), "--account", ACCOUNT, "--json",
            "--chunk-size", str(CHUNK), "--concurrency", str(CONCURRENCY),
        )  # fmt: skip
        yield World(bucket, sb, env, cmd, clip, where)


def finish(world: World) -> dict[str, Any]:
    done = subprocess.run(
        world.cmd, env=world.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def check_world(chaos: Chaos, world: World, summary: dict[str, Any], meter: PutMeter) -> None:
    """The invariants after a (killed and) finished run, and the cleanup flow."""
    from flows.maintenance import cleanup

    size = world.clip.stat().st_size
    publish = summary["publish"]
    assert publish and publish["status"] == "PUBLISH_COMPLETE", publish
    stats = world.sandbox.state.stats()
    assert stats["posts"] == 1, f"{stats['posts']} posts: {stats['publishes']}"
    [posted] = [p for p in stats["publishes"].values() if p["status"] == "PUBLISH_COMPLETE"]
    assert posted["sha256"] == chaos.clip_sha256

    s3 = chaos.s3.client()
    key = summary["video_uri"].removeprefix(f"s3://{world.bucket}/")
    h = hashlib.sha256()
    for block in s3.get_object(Bucket=world.bucket, Key=key)["Body"].iter_chunks(4 * MIB):
        h.update(block)
    assert h.hexdigest() == summary["sha256"] == chaos.clip_sha256

    with env_vars(world.env):
        cleanup(upload_ttl_hours=0)
    assert s3.list_multipart_uploads(Bucket=world.bucket).get("Uploads", []) == []

    s3_sent = chaos.s3.bytes_in(world.bucket).get("UploadPart", 0)
    assert s3_sent - size <= CHUNK * CONCURRENCY, f"S3 re-sent {s3_sent - size} bytes"
    tiktok_chunk = max(size - posted["chunk_size"] * (posted["total_chunk_count"] - 1), 1)
    assert meter.bytes - size <= tiktok_chunk, f"TikTok re-sent {meter.bytes - size} bytes"


def test_reference_run_discovers_the_steps(chaos: Chaos, tally: Tally) -> None:
    """An uninterrupted run passes every check and shows which steps there are to kill in."""
    with make_world(chaos, "reference") as world:
        started = time.monotonic()
        with (
            PutMeter(world.sandbox) as meter,
            slow_sandbox(world.sandbox, LINK_LATENCY_S),
            s3_latency(chaos.s3, LINK_LATENCY_S),
        ):
            summary = finish(world)
        check_world(chaos, world, summary, meter)
        run = chaos.events.flow_run_named(f"ingest-{world.clip.name}", started)
        assert run is not None
        timeline = StepTimeline.from_events(chaos.events.task_events(run))
    expected = {"validate", "chunk-upload", "assemble", "thumbnail", "store", "init"}
    expected |= {"chunk-puts", "poll"} | ({"scan"} if chaos.clamd_url else set())
    assert expected <= set(timeline.order), timeline
    chaos.timeline = timeline
    tally.steps = timeline.order
    chaos.points = draw_points(SEED, POINTS, timeline, max_offset_s=MAX_OFFSET_S)


class s3_latency:  # noqa: N801 - used like a function-style context manager
    def __init__(self, s3: Any, seconds: float) -> None:
        self.s3, self.seconds = s3, seconds

    def __enter__(self) -> None:
        self.s3.set_latency(self.seconds)

    def __exit__(self, *exc_info: object) -> None:
        self.s3.set_latency(0.0)


@pytest.mark.parametrize("index", range(POINTS), ids=lambda i: f"point{i}")
def test_killed_run_finishes_on_rerun(index: int, chaos: Chaos, tally: Tally) -> None:
    """SIGKILL at the drawn step, re-run: one post, the source's SHA-256 stored, no upload left
    after cleanup, at most one chunk x concurrency re-sent to S3 and to TikTok."""
    if chaos.points is None:
        pytest.skip("the reference run did not discover the steps")
    point = chaos.points[index]
    where = point.describe(SEED)
    outcome: KillOutcome | None = None
    with make_world(chaos, f"p{index}") as world, PutMeter(world.sandbox) as meter:
        with slow_sandbox(world.sandbox, LINK_LATENCY_S), s3_latency(chaos.s3, LINK_LATENCY_S):
            outcome = run_and_kill(
                world.cmd,
                world.env,
                chaos.events,
                flow_run_name=f"ingest-{world.clip.name}",
                point=point,
                log_path=world.dir / "killed.log",
                timeout_s=KILL_TIMEOUT_S,
            )
        try:
            assert outcome.killed, f"{where}: not killed ({outcome.returncode}) {outcome.log}"
            summary = finish(world)
            check_world(chaos, world, summary, meter)
        except AssertionError as exc:
            tally.add(point, outcome, survived=False, note=f"{where} landed={outcome.landed_in}")
            raise AssertionError(f"{where} landed in {outcome.landed_in}: {exc}") from exc
        tally.add(point, outcome, survived=True)
