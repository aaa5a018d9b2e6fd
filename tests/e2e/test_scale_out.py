"""Scale-out on Prefect's own server and workers: many ingests at once, two workers, one limit.

The production topology on one machine, every part real: ``prefect server start`` on PostgreSQL,
the reelflow catalog on PostgreSQL, a ``process`` work pool filled by ``prefect deploy --all``
from prefect.yaml, two ``prefect worker start`` processes, moto's S3 server and the TikTok
sandbox over HTTP. Eight ``ingest-video`` runs are created at once through the API (seven
distinct clips, one of them submitted twice); seven also publish to one TikTok account, one more
than TikTok's six inits per window, so only a limit shared by both workers keeps the sandbox from
answering 429. TikTok's window is a sliding minute; here the sandbox and the limiter of every
worker's flow runs (``REELFLOW_TIKTOK_RATE_WINDOW_S``) share a shorter one, ``RATE_WINDOW_S``.

Each worker takes at most ``WORKER_LIMIT`` runs at a time (``--limit``), the production knob that
also guarantees eight runs cannot all land on one worker. The scheduled deployments are paused:
their runs would take worker slots at random moments and say nothing about scale-out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelflow.tiktok.sandbox import RunningSandbox, start_sandbox
from storage.catalog import Catalog, make_engine
from storage.publishing import list_publishes
from tasks.tiktok_limits import rate_limit_name
from tests.support.files import sha256_file
from tests.support.prefect_server import BIN, REPO, PrefectServer, start_process, stop_process
from tests.support.tiktok import SANDBOX_CONFIG
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

WORKERS = ("w1", "w2")
WORKER_LIMIT = 4  # flow runs per worker at once: 8 runs need both workers
WORKER_QUERY_S = 1  # default 10 s: how often a worker asks for scheduled runs
# Distinct durations give distinct contents; none is the 3 s default other tests ingest.
CLIP_DURATIONS_S = (2.2, 2.4, 2.6, 2.8, 3.2, 3.4, 3.6)
INIT_LIMIT_PER_WINDOW = 6  # TikTok's (and the sandbox's) per-token init limit
# TikTok's window is a sliding minute; the sandbox and reelflow's limiter are both scaled down to
# this, so the spread the limiter forces costs seconds instead of minutes.
RATE_WINDOW_S = 15.0
SCHEDULED = ("publish-due", "reconcile-publishes", "cleanup", "daily-report")
DEPLOYMENTS = {"ingest-video", "publish-media", "delete-media", *SCHEDULED}
CLI_TIMEOUT_S = 120
WORKERS_ONLINE_TIMEOUT_S = 60
# 7 inits at 6 per sliding window need 1.33 windows or more (Prefect's Retry-After for a rate
# limit grows with the queue of waiting runs: measured 1.6-2.2 windows); ingest itself takes
# ~35 s on 2 cores.
RUNS_TIMEOUT_S = 300
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
INIT_ROUTE = "POST /v2/post/publish/video/init/"


# ----- helpers ----------------------------------------------------------------------------------


def run_cli(cmd: list[str], env: dict[str, str], what: str) -> str:
    """Run a CLI to completion (bounded); fail with its output if it does not exit 0."""
    try:
        done = subprocess.run(
            cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish in {CLI_TIMEOUT_S}s: {exc.stdout!r} {exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(
            f"{what} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def most_in_window(times: list[float], window_s: float) -> int:
    """The largest number of ``times`` inside any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times)
    return max((sum(t <= u < t + window_s for u in ordered) for t in ordered), default=0)


def _at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# ----- the test ---------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[RunningSandbox]:
    """The TikTok sandbox with its rate-limit window shortened to ``RATE_WINDOW_S``."""
    config = dataclasses.replace(SANDBOX_CONFIG, rate_limit_window_s=RATE_WINDOW_S)
    with start_sandbox(config, data_dir=tmp_path / "sandbox") as sb:
        yield sb


@pytest.mark.long  # ~2 min; test_concurrency and test_lease_takeover cover its rules in make test
def test_six_plus_ingests_at_once_on_two_workers(
    s3_server: Any,
    bucket: str,
    pg_url: str,
    clips: Any,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    """All runs complete; each content stored once; both workers ran some; no init 429."""
    started = time.monotonic()
    sources = [clips.valid_vertical(duration_s=d) for d in CLIP_DURATIONS_S]
    sha_of = {str(p): sha256_file(p) for p in sources}
    assert len(set(sha_of.values())) == len(sources), "the clips must differ in content"
    account = f"scale-{uuid.uuid4().hex[:8]}"
    # Seven distinct sources, all published to one account; the first one submitted again
    # (a duplicate event or a double click), store-only.
    runs_wanted = [{"source": str(p), "account": account, "mode": "direct"} for p in sources]
    runs_wanted.append({"source": str(sources[0])})

    reelflow_env = {
        "REELFLOW_HOME": str(tmp_path / "reelflow-home"),  # holds secret.key for all workers
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "REELFLOW_DATABASE_URL": pg_url,
        "REELFLOW_TIKTOK_API_BASE": sandbox.base_url,
        "REELFLOW_TIKTOK_RATE_WINDOW_S": str(RATE_WINDOW_S),  # the sandbox's window
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    workers: dict[str, subprocess.Popen[bytes]] = {}
    server = PrefectServer(postgres=True, log_dir=tmp_path)
    with server, httpx.Client(base_url=server.api_url, timeout=30) as http:
        env = server.env(
            **reelflow_env,
            REELFLOW_PROJECT_DIR=str(REPO),  # the pull step's working directory
            PREFECT_WORKER_QUERY_SECONDS=str(WORKER_QUERY_S),
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        )
        for var in ("REELFLOW_SECRET_KEY", "REELFLOW_CHUNK_SIZE_BYTES", "REELFLOW_PUBLIC_BASE_URL"):
            env.pop(var, None)
        timings = {"server_ready_s": time.monotonic() - started}

        # --- the production path: pool, deploy --all, account, workers --------------------
        run_cli(
            [str(BIN / "prefect"), "work-pool", "create", "reelflow", "--type", "process"],
            env,
            "prefect work-pool create",
        )
        # The account is stored (the catalog, not Prefect) while deploy runs: two CLIs, two cores.
        tokens = (
            httpx.post(f"{sandbox.base_url}/_sandbox/accounts", json={"name": account}, timeout=10)
            .raise_for_status()
            .json()
        )
        with ThreadPoolExecutor(1) as pool:
            account_added = pool.submit(
                run_cli,
                [str(BIN / "reelflow"), "accounts", "add", account, "--open-id", tokens["open_id"]],
                env
                | {
                    "REELFLOW_TIKTOK_ACCESS_TOKEN": tokens["access_token"],
                    "REELFLOW_TIKTOK_REFRESH_TOKEN": tokens["refresh_token"],
                },
                "reelflow accounts add",
            )
            t0 = time.monotonic()
            run_cli(
                [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
                env,
                "prefect deploy --all",
            )
            timings["deploy_s"] = time.monotonic() - t0
            account_added.result()
        deployments = {
            d["name"]: d
            for d in http.post("/deployments/filter", json={}).raise_for_status().json()
        }
        assert set(deployments) == DEPLOYMENTS
        for d in deployments.values():
            assert d["work_pool_name"] == "reelflow"
            assert d["pull_steps"] == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ]
        for name in SCHEDULED:
            http.patch(
                f"/deployments/{deployments[name]['id']}", json={"paused": True}
            ).raise_for_status()

        try:
            for name in WORKERS:
                workers[name] = start_process(
                    [str(BIN / "prefect"), "worker", "start", "--pool", "reelflow"]
                    + ["--name", name, "--limit", str(WORKER_LIMIT)],
                    env,
                    tmp_path / f"worker-{name}.log",
                    cwd=tmp_path,
                )

            def both_online() -> list[str] | None:
                for name, proc in workers.items():
                    if proc.poll() is not None:
                        pytest.fail(
                            f"worker {name} exited: {tail(tmp_path / f'worker-{name}.log')}"
                        )
                rows = http.post("/work_pools/reelflow/workers/filter", json={}).json()
                online = sorted(w["name"] for w in rows if w["status"] == "ONLINE")
                return online if online == sorted(WORKERS) else None

            wait_for(both_online, "both workers online", WORKERS_ONLINE_TIMEOUT_S, poll_s=0.5)
            timings["setup_s"] = time.monotonic() - started

            # --- the burst: every run created at once ---------------------------------------
            ingest_id = deployments["ingest-video"]["id"]
            t_burst = time.monotonic()
            run_ids = [
                http.post(f"/deployments/{ingest_id}/create_flow_run", json={"parameters": p})
                .raise_for_status()
                .json()["id"]
                for p in runs_wanted
            ]

            def all_finished() -> list[dict[str, Any]] | None:
                runs = [http.get(f"/flow_runs/{rid}").raise_for_status().json() for rid in run_ids]
                return runs if all(r["state_type"] in TERMINAL for r in runs) else None

            runs = wait_for(
                all_finished,
                "all ingest runs finished",
                RUNS_TIMEOUT_S,
                poll_s=1,
                detail=lambda: {n: tail(tmp_path / f"worker-{n}.log", 3000) for n in WORKERS},
            )
            timings["burst_to_all_done_s"] = time.monotonic() - t_burst
        finally:
            for proc in workers.values():
                stop_process(proc)

        # --- all completed -------------------------------------------------------------------
        failed = {r["name"]: r["state"]["message"] for r in runs if r["state_type"] != "COMPLETED"}
        assert not failed, (failed, {n: tail(tmp_path / f"worker-{n}.log") for n in WORKERS})
        assert sorted(r["name"] for r in runs) == sorted(
            f"ingest-{Path(p['source']).name}" for p in runs_wanted
        )

        # --- picked up by both workers -------------------------------------------------------
        worker_of = {r["id"]: r["labels"].get("prefect.worker.name") for r in runs}
        split = Counter(worker_of.values())
        assert set(split) == set(WORKERS), split
        assert max(split.values()) <= WORKER_LIMIT
        logs = http.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": run_ids}}, "limit": 200}
        ).json()
        for rid, name in worker_of.items():  # the worker's own words agree with the label
            said = f"Worker '{name}' submitting flow run '{rid}'"
            assert any(log["message"] == said for log in logs), said
        publishers = {
            worker_of[rid] for rid, p in zip(run_ids, runs_wanted, strict=True) if "account" in p
        }
        assert publishers == set(WORKERS), "both workers published to the one account"

        # --- each content stored once --------------------------------------------------------
        media_of_run = {}
        for rid in run_ids:
            arts = http.post(
                "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [rid]}}}
            ).json()
            keys = [a["key"] for a in arts if a["key"] and a["key"].startswith("ingest-")]
            assert len(keys) == 1, (rid, arts)
            media_of_run[rid] = "m_" + keys[0].removeprefix("ingest-m-")
        assert media_of_run[run_ids[0]] == media_of_run[run_ids[-1]], "duplicate, same media"
        assert len(set(media_of_run.values())) == len(sources)

        listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="media/videos/")
        videos = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".mp4")]
        catalog = Catalog(make_engine(pg_url))
        mine = [m for m in catalog.list_media() if m.sha256 in set(sha_of.values())]
        assert len(mine) == len(sources)
        assert {m.media_id for m in mine} == set(media_of_run.values())
        assert sorted(videos) == sorted(f"media/{m.video_key}" for m in mine)
        assert all(re.fullmatch(r"videos/u_[0-9a-f]{24}\.mp4", m.video_key) for m in mine)
        # Uploaded once, too: every clip is one part, and the duplicate waited and reused it.
        parts = [r for r in s3_server.requests() if r.bucket == bucket and r.op == "UploadPart"]
        assert len(parts) == len(sources), [(r.key, r.status) for r in parts]

        # --- the per-account TikTok limit held across workers --------------------------------
        stats = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10).json()
        inits = list(stats["publishes"].values())
        assert stats["inits"] == len(sources) == len(inits)
        # Every init call the sandbox saw was accepted: not one 429.
        assert stats["calls"].get(INIT_ROUTE) == stats["inits"], stats["calls"]
        assert stats["posts"] == len(sources)
        # Seven inits wanted at once, six allowed per sliding window: they had to be spread.
        init_times = [p["created_at"] for p in inits]
        assert most_in_window(init_times, RATE_WINDOW_S) <= INIT_LIMIT_PER_WINDOW
        ledger = [p for p in list_publishes(catalog.engine) if p.account == account]
        assert len(ledger) == len(sources)
        assert {p.status for p in ledger} == {"published"}
        assert all(p.inits == 1 for p in ledger)
        # ...although all seven were wanted within one window (a ledger row is written just
        # before its run asks for an init slot): without the shared limit the sandbox would
        # have refused the seventh. A window shorter than the ingests' spread would prove nothing.
        wanted = [(p.created_at - ledger[0].created_at).total_seconds() for p in ledger]
        assert most_in_window(wanted, RATE_WINDOW_S) > INIT_LIMIT_PER_WINDOW, wanted
        catalog.engine.dispose()
        # The spread came from the limit the workers' runs made, shaped for the short window.
        name = rate_limit_name("init", tokens["open_id"])
        limit = http.get(f"/v2/concurrency_limits/{name}").raise_for_status().json()
        assert (limit["limit"], limit["slot_decay_per_second"]) == (3, 3 / RATE_WINDOW_S)

        timings["init_span_s"] = max(init_times) - min(init_times)
        timings["publish_rows_span_s"] = max(wanted) - min(wanted)
        burst_at = min(_at(r["created"]) for r in runs)
        stored_at = max(m.created_at for m in mine)
        timings["burst_to_all_stored_s"] = (stored_at - burst_at).total_seconds()
        timings["total_s"] = time.monotonic() - started
        # The figures docs/running-at-scale.md quotes (shown with pytest -s).
        figures = {k: round(v, 1) for k, v in timings.items()}
        run_s = sorted(round(r["total_run_time"], 1) for r in runs)
        waited_s = sorted(
            round((_at(r["start_time"]) - _at(r["created"])).total_seconds(), 1) for r in runs
        )
        print(
            f"\nscale-out: {json.dumps(figures)} runs per worker {dict(split)}"
            f" created->running s {waited_s} running s {run_s}"
        )
