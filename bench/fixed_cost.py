"""Benchmark: the fixed cost of one ``reelflow ingest <8 MB clip> --json`` to S3, per CLI call.

Contenders, each a fresh CLI process per call as a script ingesting a folder one call at a
time would run them: the runner off (today: import everything, and on the embedded default
start Prefect's ephemeral API, per call) and on (reelflow/runner.py: a warm fork server), each
on the embedded default (no PREFECT_API_URL) and against a running ``prefect server``. The
baseline is a fresh ``python`` doing boto3 ``upload_file`` of the same clip to the same moto
server (what ``aws s3 cp`` does). Calls are paired rounds, the contenders' order alternating;
every call ingests a clip of its own (the 8 MB clip plus a distinct trailing ``free`` box), so
nothing is deduplicated. Reported: the 1st call (the runner's cold start) and the median of
calls 2..N, and their ratio to the baseline's median; plus ``python -X importtime`` totals of
``reelflow.launch`` and ``reelflow.cli``.

    python -m bench.fixed_cost [--runs 6] [--clip-mib 8] [--only on/embedded,off/server,...]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _moto as moto
from bench.publish import start_prefect

MIB = 2**20
CONTENDERS = ("off/embedded", "on/embedded", "off/server", "on/server")
CALL_TIMEOUT_S = 300

BOTO3_ONE = """
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
s3.upload_file(sys.argv[2], sys.argv[3], "baseline/" + sys.argv[4])
"""


def variant(base: Path, out_dir: Path, n: int) -> Path:
    """``base`` plus a trailing ISO-BMFF ``free`` box of random bytes: a valid clip of its own
    (players and ffprobe skip ``free``), so its SHA-256, and its media, are new."""
    out = out_dir / f"clip-{n:03d}.mp4"
    shutil.copyfile(base, out)
    payload = secrets.token_bytes(32)
    with out.open("ab") as fh:
        fh.write(struct.pack(">I", 8 + len(payload)) + b"free" + payload)
    return out


def import_ms(module: str) -> float:
    """The cumulative import time of ``module`` in a fresh interpreter, in ms."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in reversed(done.stderr.splitlines()):
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1]) / 1000
    raise RuntimeError(f"no importtime line for {module}")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CALL_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=6, help="calls per contender (1st + N-1 warm)")
    p.add_argument("--clip-mib", type=float, default=8.0)
    p.add_argument("--only", default=",".join(CONTENDERS))
    args = p.parse_args()
    if args.runs < 2:
        p.error("--runs must be at least 2 (the 1st call and the warm ones)")
    only = [c for c in args.only.split(",") if c]
    moto.use_moto_credentials()
    base = moto.cached_clip(f"fixed-{args.clip_mib:g}m.mp4", int(args.clip_mib * 1e6))
    s3_proc, endpoint = moto.start_s3()
    work = Path(tempfile.mkdtemp(prefix="rf-fc-"))
    server: subprocess.Popen[bytes] | None = None
    envs: dict[str, dict[str, str]] = {}
    try:
        s3 = moto.s3_client(endpoint)
        bucket = "fixed-cost"
        s3.create_bucket(Bucket=bucket)
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "REELFLOW_")) and k != "XDG_RUNTIME_DIR"
        }
        base_env |= moto.MOTO_CREDENTIALS | {"PYTHONPATH": str(moto.REPO)}
        if any(c.endswith("/server") for c in only):
            server_env = base_env | {"PREFECT_HOME": str(work / "server-home")}
            server, api_url = start_prefect(server_env)
        for name in only:
            runner, where = name.split("/")
            d = work / name.replace("/", "-")
            env = base_env | {
                "REELFLOW_HOME": str(d / "home"),
                "REELFLOW_STORE_URL": f"s3://{bucket}/{name.replace('/', '-')}",
                "REELFLOW_S3_ENDPOINT_URL": endpoint,
                "REELFLOW_RUNNER": runner,
                "XDG_RUNTIME_DIR": str(d / "run"),
                "PREFECT_HOME": str(d / "prefect"),
            }
            if where == "server":
                env["PREFECT_API_URL"] = api_url
            (d / "run").mkdir(parents=True, mode=0o700)
            envs[name] = env
        walls: dict[str, list[float]] = {name: [] for name in ["boto3", *only]}
        n = 0
        for round_no in range(args.runs):
            order = ["boto3", *only]
            if round_no % 2:
                order.reverse()
            for name in order:
                n += 1
                clip = variant(base, work, n)
                if name == "boto3":
                    cmd = [sys.executable, "-c", BOTO3_ONE, endpoint, str(clip), bucket, clip.name]
                    walls[name].append(timed(cmd, base_env))
                else:
                    cmd = [sys.executable, "-m", "reelflow.launch", "ingest", str(clip), "--json"]
                    walls[name].append(timed(cmd, envs[name]))
                clip.unlink()
            print(
                f"round {round_no + 1}: " + " ".join(f"{k}={v[-1]:.2f}" for k, v in walls.items())
            )
        base_med = statistics.median(walls["boto3"][1:])
        print(f"\nreelflow ingest of a {base.stat().st_size / 1e6:.1f} MB clip, wall per CLI call")
        print(f"{'contender':<14} {'1st s':>7} {'median 2..N s':>14} {'x boto3':>8}")
        for name, w in walls.items():
            med = statistics.median(w[1:])
            print(f"{name:<14} {w[0]:>7.2f} {med:>14.2f} {med / base_med:>8.1f}")
        print(f"(N={args.runs}; boto3 = a fresh python doing upload_file)")
        print(f"import reelflow.launch: {import_ms('reelflow.launch'):.0f} ms")
        print(f"import reelflow.cli:    {import_ms('reelflow.cli'):.0f} ms")
        print(json.dumps({"walls_s": walls}))
    finally:
        for env in envs.values():
            if env["REELFLOW_RUNNER"] != "off":
                subprocess.run(
                    [sys.executable, "-m", "reelflow.launch", "runner", "stop"],
                    env=env,
                    capture_output=True,
                    timeout=60,
                )
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        s3_proc.terminate()
        s3_proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
