"""Screenshots of the Prefect UI for the README: the deployments page and a finished ingest run.

Run it as a script (pytest does not collect it: the name has no ``test_`` prefix)::

    .venv/bin/python -m tests.e2e.ui_screenshots docs/

It builds the production path on this machine: ``prefect server start`` on PostgreSQL (its own
temporary home and database), moto's S3 server and the TikTok sandbox on 127.0.0.1, a
``process`` work pool filled by ``prefect deploy --all`` and one ``prefect worker start``. Two
``ingest-video`` runs go through the worker (one also publishes to the sandbox); once both are
Completed and the publishing run has its progress and markdown artifacts, Debian's headless
Chromium photographs the deployments page (ui-deployments.png), that run's artifacts tab
(ui-flow-run.png) and its summary artifact with the thumbnail (ui-ingest-summary.png). Chromium
is installed with apt-get when ``/usr/bin/chromium`` is missing.

Must not: run under pytest, or leave a process behind (everything started here is stopped in
``finally``; ``--hold`` keeps the stack up for a while to look at it in a browser).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

# Before prefect is imported anywhere: no telemetry, no promotional banners in the pictures.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import httpx  # noqa: E402

from reelflow.samples import make_clip  # noqa: E402
from reelflow.tiktok.sandbox import SandboxConfig, start_sandbox  # noqa: E402
from tests.support.prefect_server import BIN, REPO, PrefectServer, start_process, stop_process  # noqa: E402
from tests.support.s3server import S3TestServer  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
WIDTH_PX = 1600
# The UI Prefect 3.8 opens at "/" (and the one it is moving to) lives under /v2; plain deep
# links like /deployments still serve the older V1 UI.
UI_PREFIX = "/v2"
# Virtual time lets the SPA's timers run ahead while Chromium still waits for network fetches;
# 20 s of it covers the bundle, the API queries and the artifact/markdown rendering.
VIRTUAL_TIME_BUDGET_MS = 20_000
SCREENSHOT_TIMEOUT_S = 120
MAX_PNG_BYTES = 500_000
CLI_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
ACCOUNT = "creator-demo"
# Friendly file names: flow runs are named ingest-<file>, which is what the UI lists.
CLIPS = {
    "beach-sunset.mp4": {"duration_s": 6.0, "pattern": "smptehdbars"},
    "city-timelapse.mp4": {"duration_s": 4.0, "pattern": "testsrc2"},
}


def log(message: str) -> None:
    print(f"[ui-screenshots] {message}", flush=True)


def run_cli(cmd: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def ensure_chromium() -> Path:
    """Debian's chromium, installed on first use (apt-get update once, then install)."""
    if CHROMIUM.exists():
        return CHROMIUM
    log("installing Debian chromium")
    apt_env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt_env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=apt_env, timeout=1200
    )
    if not CHROMIUM.exists():
        raise RuntimeError("apt-get installed chromium, but /usr/bin/chromium is missing")
    return CHROMIUM


def screenshot(url: str, out: Path, profile_dir: Path, *, height_px: int) -> Path:
    """One headless Chromium screenshot of ``url`` (a fresh profile each time)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.png")
    raw.unlink(missing_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=profile_dir))
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH_PX},{height_px}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        f"--screenshot={raw}",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SCREENSHOT_TIMEOUT_S)
    if done.returncode != 0 or not raw.exists():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    shrink_png(raw, out)
    raw.unlink(missing_ok=True)
    log(f"{out} ({out.stat().st_size // 1024} KiB) <- {url}")
    return out


def shrink_png(src: Path, dest: Path) -> None:
    """A palette PNG (ffmpeg's palettegen/paletteuse): UI shots lose nothing visible."""
    if src.stat().st_size <= MAX_PNG_BYTES:
        shutil.copyfile(src, dest)
        return
    graph = (
        "split[a][b];[a]palettegen=max_colors=256:stats_mode=full[p];[b][p]paletteuse=dither=none"
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-filter_complex", graph, str(dest)],
        check=True,
        timeout=60,
    )


@contextmanager
def running(proc_cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[Any]:
    proc = start_process(proc_cmd, env, log_path, cwd=log_path.parent)
    try:
        yield proc
    finally:
        stop_process(proc)


def make_sources(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: make_clip(directory / name, **kw) for name, kw in CLIPS.items()}


def finished_run(api: httpx.Client, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = api.get(f"/flow_runs/{run_id}").raise_for_status().json()
    if run["state_type"] in {"FAILED", "CRASHED", "CANCELLED"}:
        raise RuntimeError(f"{run['name']} ended {run['state_name']}: {run['state']['message']}")
    return run if run["state_type"] == "COMPLETED" else None


def artifacts_of(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    found: list[dict[str, Any]] = api.post("/artifacts/filter", json=body).json()
    return found


def take_screenshots(out_dir: Path, *, hold_s: float = 0) -> list[Path]:
    ensure_chromium()
    work = Path(tempfile.mkdtemp(prefix="reelflow-ui-shots-"))
    sources = make_sources(work / "clips")
    with ExitStack() as stack:
        s3 = stack.enter_context(S3TestServer())
        bucket = f"reels-{uuid.uuid4().hex[:8]}"
        s3.client().create_bucket(Bucket=bucket)
        sandbox = stack.enter_context(
            start_sandbox(SandboxConfig(processing_delay_s=1.0), data_dir=work / "sandbox")
        )
        # PostgreSQL: on SQLite the scheduler and the first runs make the API answer 503 (locked).
        server = PrefectServer(postgres=True, log_dir=work)
        # The UI asks /ui-settings where the API is; unset, it says 127.0.0.1:4200, not our port.
        os.environ["PREFECT_UI_API_URL"] = server.api_url
        stack.enter_context(server)
        log(f"Prefect server at {server.ui_url}")
        env = server.env(
            REELFLOW_HOME=str(work / "reelflow-home"),
            REELFLOW_STORE_URL=f"s3://{bucket}/media",
            REELFLOW_S3_ENDPOINT_URL=s3.endpoint_url,
            REELFLOW_TIKTOK_API_BASE=sandbox.base_url,
            REELFLOW_PROJECT_DIR=str(REPO),
            PREFECT_WORKER_QUERY_SECONDS="2",
        )
        for var in ("REELFLOW_DATABASE_URL", "REELFLOW_SECRET_KEY", "REELFLOW_PUBLIC_BASE_URL"):
            env.pop(var, None)

        prefect = str(BIN / "prefect")
        run_cli([prefect, "work-pool", "create", "reelflow", "--type", "process"], env, "pool")
        run_cli([prefect, "--no-prompt", "deploy", "--all"], env, "prefect deploy --all")
        tokens = (
            httpx.post(f"{sandbox.base_url}/_sandbox/accounts", json={"name": ACCOUNT}, timeout=10)
            .raise_for_status()
            .json()
        )
        run_cli(
            [str(BIN / "reelflow"), "accounts", "add", ACCOUNT, "--open-id", tokens["open_id"]],
            env
            | {
                "REELFLOW_TIKTOK_ACCESS_TOKEN": tokens["access_token"],
                "REELFLOW_TIKTOK_REFRESH_TOKEN": tokens["refresh_token"],
            },
            "reelflow accounts add",
        )
        stack.enter_context(
            running(
                [prefect, "worker", "start", "--pool", "reelflow", "--name", "worker-1"],
                env,
                work / "worker.log",
            )
        )
        api = stack.enter_context(httpx.Client(base_url=server.api_url, timeout=30))
        deployment = api.get("/deployments/name/ingest-video/ingest-video").raise_for_status()
        create = f"/deployments/{deployment.json()['id']}/create_flow_run"
        published = api.post(
            create,
            json={
                "parameters": {
                    "source": str(sources["beach-sunset.mp4"]),
                    "account": ACCOUNT,
                    "mode": "direct",
                    "caption": "Sunset at the beach #reelflow",
                    # Public, so TikTok (the sandbox) gives the post id the summary shows.
                    "privacy_level": "PUBLIC_TO_EVERYONE",
                }
            },
        ).raise_for_status()
        stored = api.post(
            create, json={"parameters": {"source": str(sources["city-timelapse.mp4"])}}
        ).raise_for_status()
        run_ids = [published.json()["id"], stored.json()["id"]]
        for run_id in run_ids:
            run = wait_for(lambda r=run_id: finished_run(api, r), "ingest run", RUN_TIMEOUT_S, 2)
            log(f"{run['name']} {run['state_name']} in {run['total_run_time']:.1f}s")
        artifacts = artifacts_of(api, run_ids[0])
        kinds = {a["type"] for a in artifacts}
        if not {"progress", "markdown"} <= kinds:
            raise RuntimeError(f"the run has artifacts {kinds}, wanted progress and markdown")
        summary = next(a for a in artifacts if (a["key"] or "").startswith("ingest-"))

        ui = f"{server.ui_url}{UI_PREFIX}"
        shots = [
            screenshot(f"{ui}/deployments", out_dir / "ui-deployments.png", work, height_px=640),
            screenshot(
                f"{ui}/runs/flow-run/{run_ids[0]}?tab=Artifacts",
                out_dir / "ui-flow-run.png",
                work,
                height_px=1150,
            ),
            # Tall: the thumbnail is shown at its own size (720x1280), the table below it.
            screenshot(
                f"{ui}/artifacts/artifact/{summary['id']}",
                out_dir / "ui-ingest-summary.png",
                work,
                height_px=2500,
            ),
        ]
        if hold_s:
            log(f"holding for {hold_s:.0f}s (Ctrl-C ends): {ui}/runs/flow-run/{run_ids[0]}")
            with suppress(KeyboardInterrupt):
                time.sleep(hold_s)
    shutil.rmtree(work, ignore_errors=True)
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.ui_screenshots", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "out_dir",
        type=Path,
        help="where ui-deployments.png, ui-flow-run.png and ui-ingest-summary.png go",
    )
    parser.add_argument(
        "--hold", type=float, default=0, help="keep the stack up this many seconds afterwards"
    )
    args = parser.parse_args(argv)
    for shot in take_screenshots(args.out_dir, hold_s=args.hold):
        print(shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
