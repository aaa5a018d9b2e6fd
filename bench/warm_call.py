"""Where a warm runner call's seconds go: a child forked as reelflow/runner.py forks one.

Starts moto's S3 server and a ``prefect server`` on 127.0.0.1, imports what the runner preloads,
then per call forks a child that runs ``reelflow ingest <clip> --json`` through the same entry
(``reelflow.launch.run_in_process``) and times the command and the exit drain (threading's exit
hooks and atexit, where Prefect's log and event workers flush to the API) separately. With
``--profile`` one warm call's cProfile is printed (cumulative, top 40); with ``--preload-engines``
Prefect's engine modules, which a child otherwise imports per call, are imported before forking.

    python -m bench.warm_call [--calls 5] [--profile] [--preload-engines]
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import importlib
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import _moto as moto
from bench.fixed_cost import variant
from bench.publish import start_prefect

ENGINE_MODULES = (
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.engine",
    "prefect.telemetry.run_telemetry",
    "prefect.utilities.visualization",
    "prefect._internal.control_listener",
    "prefect._internal.attempt_control",
    "prefect.concurrency.v1.context",
    "sqlite3",
)


def one_call(clip: Path, profile_to: Path | None) -> dict[str, float]:
    """Fork, run the command in the child, time it; the child's figures come back on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as the runner's, on /dev/null instead of a caller's fds
        os.close(r)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        from reelflow.launch import run_in_process

        prof = cProfile.Profile() if profile_to else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        code = run_in_process(["ingest", str(clip), "--json"])
        if prof:
            prof.disable()
            prof.dump_stats(str(profile_to))
        t1 = time.perf_counter()
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        t2 = time.perf_counter()
        os.write(w, json.dumps({"code": code, "command_s": t1 - t0, "exit_s": t2 - t1}).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, float] = json.loads(data)
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile of the last call")
    p.add_argument("--preload-engines", action="store_true")
    args = p.parse_args()
    moto.use_moto_credentials()
    s3proc, endpoint = moto.start_s3()
    home = tempfile.mkdtemp(prefix="reelflow-warm-")
    env = {"PREFECT_HOME": tempfile.mkdtemp(prefix="reelflow-warm-prefect-")}
    prefect, url = start_prefect(os.environ | env, services=False)
    try:
        moto.s3_client(endpoint).create_bucket(Bucket="warm-call")
        os.environ.update(
            env,
            PREFECT_API_URL=url,
            REELFLOW_HOME=home,
            REELFLOW_STORE_URL="s3://warm-call/media",
            REELFLOW_S3_ENDPOINT_URL=endpoint,
            REELFLOW_RUNNER="off",
        )
        importlib.import_module("reelflow.cli")  # what the runner preloads
        importlib.import_module("flows.ingest")
        if args.preload_engines:
            for name in ENGINE_MODULES:
                importlib.import_module(name)
        assert threading.active_count() == 1, "a preload started a thread: not fork-safe"
        base = moto.cached_clip("bench-8mib.mp4", 8 * 2**20)
        prof_path = Path(home) / "warm.prof"
        for n in range(args.calls):
            last = n == args.calls - 1
            got = one_call(
                variant(base, Path(home), n), prof_path if args.profile and last else None
            )
            print(json.dumps({"call": n + 1, **got}), flush=True)
        if args.profile:
            pstats.Stats(str(prof_path)).sort_stats("cumulative").print_stats(40)
    finally:
        prefect.terminate()
        s3proc.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
