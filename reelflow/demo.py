"""`make demo`: run the main job on the embedded defaults and show what it produced.

Local object store and SQLite under REELFLOW_HOME, Prefect's ephemeral API (unless
PREFECT_API_URL is set), and reelflow's own TikTok sandbox started in this process: the clip is
ingested, stored, then published to a sandbox account and polled until it is live.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

# After the environment above: these load prefect, which reads it at import time.
import requests  # noqa: E402

from flows.ingest import ingest_video  # noqa: E402
from reelflow.settings import Settings  # noqa: E402
from reelflow.tiktok.sandbox import SandboxConfig, start_sandbox  # noqa: E402
from storage.accounts import save_account  # noqa: E402
from storage.catalog import make_engine  # noqa: E402
from storage.crypto import secret_box  # noqa: E402

DEMO_ACCOUNT = "demo-creator"


def main(argv: list[str]) -> int:
    clip = Path(argv[0] if argv else ".reelflow/sample.mp4").resolve()
    settings = Settings()
    sandbox_dir = settings.home / "sandbox"
    with start_sandbox(SandboxConfig(processing_delay_s=1.0), data_dir=sandbox_dir) as sandbox:
        os.environ["REELFLOW_TIKTOK_API_BASE"] = sandbox.base_url
        creator = requests.post(
            f"{sandbox.base_url}/_sandbox/accounts",
            json={"name": DEMO_ACCOUNT, "privacy": "public", "audited": True},
            timeout=10,
        ).json()
        _add_account(settings, creator)

        print(f"reelflow demo: ingesting {clip} ({clip.stat().st_size} bytes)")
        print(f"  store:   {settings.resolved_store_url}")
        print(f"  catalog: {settings.resolved_database_url}")
        print(f"  TikTok:  sandbox at {sandbox.base_url}, account {DEMO_ACCOUNT!r}")
        summary = ingest_video(
            source=str(clip),
            account=DEMO_ACCOUNT,
            caption="reelflow demo #reelflow",
            privacy_level="PUBLIC_TO_EVERYONE",
            mode="direct",
        )
        stats = requests.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10).json()
    print("\nsummary:")
    print(json.dumps(summary, indent=2, default=str))
    print("\nfiles:")
    for key in ("video_uri", "thumbnail_uri", "metadata_uri"):
        print(f"  {key:14} {summary[key]}")
    publish = summary.get("publish") or {}
    print(
        f"\nTikTok sandbox: publish {publish.get('publish_id')} is {publish.get('status')}"
        f" (post id {publish.get('post_id')}); the sandbox counted {stats.get('inits')} init(s),"
        f" {stats.get('posts')} post(s)."
    )
    print("run `make demo` again: the same content is found, nothing is uploaded or posted twice.")
    return 0


def _add_account(settings: Settings, creator: dict[str, object]) -> None:
    save_account(
        make_engine(settings.resolved_database_url),
        secret_box(settings),
        DEMO_ACCOUNT,
        access_token=str(creator["access_token"]),
        refresh_token=str(creator["refresh_token"]),
        expires_in=int(str(creator["expires_in"])),
        refresh_expires_in=int(str(creator["refresh_expires_in"])),
        open_id=str(creator["open_id"]),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
