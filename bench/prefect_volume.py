"""Benchmark: what one ingest leaves in a Prefect server's PostgreSQL database, per task unit.

Creates a database of its own on the machine's PostgreSQL (127.0.0.1:5432), starts
``prefect server start`` on it with its background services (the task-run recorder and the
event persister write what production's server writes), starts moto's S3 server, and ingests
a 100 MiB and a >= 1 GiB clip once per ``--window-bytes`` value (REELFLOW_TASK_WINDOW_BYTES; a value
at or below the chunk size is one task run per part, the old unit), each in a fresh process,
home and bucket. After each ingest it waits until the server's counts stop moving, then reads
task runs (``/api/task_runs/count``) and, per table, the rows and bytes
(``pg_total_relation_size``: heap, TOAST and indexes) the ingest added. Prints them per GiB
(the slope between the two sizes) and per video (the intercept), and extrapolates to 10 000
videos of 500 MB a day. Drops the database at the end.

    python -m bench.prefect_volume [--small-mib 100] [--big-mib 1024] [--chunk 8388608] [--concurrency 4]
                                   [--window-bytes 8388608,134217728] [--db reelflow_bench_prefect]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import psutil

from bench import _moto as moto
from bench.ingest import run_one
from bench.publish import start_prefect

MIB = 2**20
GIB = 2**30
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-Atq"]
SETTLE_S = 3.0  # counts unchanged this long: the server has recorded the run
SETTLE_MAX_S = 300.0


def psql(db: str, sql: str) -> str:
    out = subprocess.run([*PG, "-d", db, "-c", sql], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()


def table_stats(db: str) -> dict[str, tuple[int, int]]:
    """(rows, bytes incl. TOAST and indexes) of every table of the public schema."""
    tables = psql(db, "select tablename from pg_tables where schemaname = 'public'").split()
    parts = [
        f"select '{t}', (select count(*) from public.\"{t}\"), "
        f"pg_total_relation_size('public.\"{t}\"')"
        for t in tables
    ]
    stats: dict[str, tuple[int, int]] = {}
    for line in psql(db, " union all ".join(parts)).splitlines():
        name, rows, size = line.split("|")
        stats[name] = (int(rows), int(size))
    return stats


def task_run_count(api: str, name_like: str | None = None) -> int:
    body: dict[str, Any] = {}
    if name_like:
        body = {"task_runs": {"name": {"like_": name_like}}}
    resp = httpx.post(f"{api}/task_runs/count", json=body, timeout=30)
    resp.raise_for_status()
    return int(resp.json())


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the Prefect server's process tree so far."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def settle(db: str, api: str) -> dict[str, tuple[int, int]]:
    """Table stats once task runs, states and events stop growing (bounded)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last: tuple[int, ...] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        stats = table_stats(db)
        key = (task_run_count(api), *(stats.get(t, (0, 0))[0] for t in sorted(stats)))
        if key != last:
            last, since = key, time.monotonic()
        elif time.monotonic() - since >= SETTLE_S:
            return stats
        time.sleep(0.5)
    raise RuntimeError("the Prefect server kept writing for SETTLE_MAX_S")


def measure_one(
    db: str,
    api: str,
    file: Any,
    endpoint: str,
    s3: Any,
    env0: dict[str, str],
    args: Any,
    w: int,
    server_pid: int,
) -> dict[str, Any]:
    """One ingest of ``file`` with window ``w``: what it added to the server's database, and
    the server's CPU seconds until it had recorded it all."""
    before = settle(db, api)
    cpu0 = server_cpu_s(server_pid)
    bucket = f"bench-volume-{w}-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    env = env0 | {"REELFLOW_HOME": tempfile.mkdtemp(prefix="reelflow-bench-")}
    runs0, windows0 = task_run_count(api), task_run_count(api, "upload-window")
    r = run_one("reelflow", file, endpoint, bucket, args.chunk, args.concurrency, env, None, w)
    after = settle(db, api)
    # Includes the settle polls' own API calls: a few per second, the same for both designs.
    cpu = server_cpu_s(server_pid) - cpu0
    tables = {
        t: (rows - before.get(t, (0, 0))[0], size - before.get(t, (0, 0))[1])
        for t, (rows, size) in after.items()
    }
    return {
        "server_cpu_s": cpu,
        "gib": file.stat().st_size / GIB,
        "parts": r["chunks"],
        "upload_s": r["upload_s"],
        "task_runs": task_run_count(api) - runs0,
        "upload_task_runs": task_run_count(api, "upload-window") - windows0,
        "events": tables.get("events", (0, 0))[0],
        "db_bytes": sum(size for _, size in tables.values()),
        "tables": {t: d for t, d in tables.items() if d != (0, 0)},
    }


def fit(small: dict[str, Any], big: dict[str, Any], key: str) -> tuple[float, float]:
    """(per GiB, per video) of ``key`` from two ingests of different sizes: a straight line
    through both, so a video's fixed cost (validate, assemble, thumbnail, store, the flow run)
    is not counted as if it grew with the bytes."""
    slope = (big[key] - small[key]) / (big["gib"] - small["gib"])
    return slope, small[key] - slope * small["gib"]


def main() -> int:
    moto.use_moto_credentials()
    p = argparse.ArgumentParser()
    p.add_argument("--small-mib", type=int, default=100)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=8 * MIB)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--window-bytes", default=f"{8 * MIB},{128 * MIB}")
    p.add_argument("--db", default="reelflow_bench_prefect")
    args = p.parse_args()
    windows = [int(w) for w in args.window_bytes.split(",") if w]
    files = [
        moto.cached_clip(f"bench-{args.small_mib}mib.mp4", args.small_mib * MIB),
        moto.cached_clip(f"bench-{args.big_mib}mib.mp4", args.big_mib * MIB),
    ]
    psql("postgres", f'drop database if exists "{args.db}"')
    psql("postgres", f'create database "{args.db}"')
    psql(args.db, "create extension if not exists pg_trgm")
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{args.db}"
    prefect_env = {
        "PREFECT_HOME": tempfile.mkdtemp(prefix="reelflow-bench-prefect-"),
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect, api = start_prefect(os.environ | prefect_env, services=True)
    prefect_env["PREFECT_API_URL"] = api
    server, endpoint = moto.start_s3()
    env0 = os.environ | {**moto.MOTO_CREDENTIALS, **prefect_env}
    results = []
    try:
        s3 = moto.s3_client(endpoint)
        # One ingest first: the flow's own rows (flow, artifact collections) are written once.
        one = (args.db, api)
        measure_one(*one, moto.warmup_clip(), endpoint, s3, env0, args, windows[-1], prefect.pid)
        for w in windows:
            small, big = (
                measure_one(*one, f, endpoint, s3, env0, args, w, prefect.pid) for f in files
            )
            row: dict[str, Any] = {"window_bytes": w, "parts_big": big["parts"]}
            row["upload_s_big"] = round(big["upload_s"], 2)
            video_gib = 500_000_000 / GIB
            for key in ("task_runs", "upload_task_runs", "events", "db_bytes", "server_cpu_s"):
                per_gib, per_video = fit(small, big, key)
                row[f"{key}_per_gib"] = round(per_gib, 1)
                row[f"{key}_per_video_fixed"] = round(per_video, 1)
                row[f"{key}_per_day"] = round(10_000 * (per_video + per_gib * video_gib))
            row["measured"] = {
                f"{m['gib']:.3f}GiB": {
                    k: m[k] for k in ("task_runs", "events", "db_bytes", "server_cpu_s")
                }
                | {"tables": {t: list(d) for t, d in m["tables"].items()}}
                for m in (small, big)
            }
            results.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.killpg(prefect.pid, signal.SIGTERM)
        prefect.wait(timeout=60)
        psql("postgres", f'drop database if exists "{args.db}"')
    print(
        f"\nclips of {args.small_mib} and {args.big_mib} MiB, chunk {args.chunk // MIB} MiB, "
        f"concurrency {args.concurrency}, Prefect server + services on PostgreSQL, moto S3 on "
        "127.0.0.1; a day = 10 000 videos x 500 MB"
    )
    for row in results:
        print(
            f"window {row['window_bytes'] // MIB} MiB: per GiB {row['task_runs_per_gib']} task "
            f"runs ({row['upload_task_runs_per_gib']} upload), {row['events_per_gib']} events, "
            f"{row['db_bytes_per_gib'] / MIB:.2f} MiB of database, "
            f"{row['server_cpu_s_per_gib']} server CPU-s; per video fixed "
            f"{row['task_runs_per_video_fixed']} task runs, {row['events_per_video_fixed']} "
            f"events; a day: {row['task_runs_per_day']} task runs, {row['events_per_day']} "
            f"events, {row['db_bytes_per_day'] / 2**30:.1f} GiB of database, "
            f"{row['server_cpu_s_per_day'] / 3600:.1f} server CPU-hours"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
