"""Post options end to end: CLI flags and flow parameters → the ledger → TikTok's post_info.

Real parts: the CLI (typer's CliRunner, in process), the ingest and publish flows on the
Prefect test API, ffmpeg, the local store and SQLite, the TikTok sandbox over HTTP on
127.0.0.1 (which checks the post_info booleans and records what it accepted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.ingest import ingest_video
from flows.publish import publish_media
from reelflow.cli import app
from reelflow.errors import PublishRefusedError
from reelflow.samples import make_clip
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox
from storage.publishing import list_publishes
from storage.runtime import Runtime
from tests.support.tiktok import add_account

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(
        tmp_path_factory.mktemp("clip") / "c.mp4", duration_s=2, pattern="color", preset="fast"
    )


@pytest.fixture
def rt(home: Path, sandbox: RunningSandbox) -> Runtime:
    return Runtime.from_settings(Settings())


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def posted_flags(sb: RunningSandbox) -> list[dict[str, bool] | None]:
    return [p["post_flags"] for p in sb.state.stats()["publishes"].values()]


def test_cli_post_options_reach_tiktok(rt: Runtime, sandbox: RunningSandbox, clip: Path) -> None:
    """--disable-comment --brand-content --brand-organic on a public post: TikTok gets exactly
    those (duet/stitch as the creator set them), and the ledger records them."""
    add_account(rt, sandbox)
    result = cli(
        "ingest", str(clip), "--account", "creator", "--privacy", "PUBLIC_TO_EVERYONE",
        "--disable-comment", "--brand-content", "--brand-organic", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["publish"]["status"] == "PUBLISH_COMPLETE"
    assert posted_flags(sandbox) == [
        {
            "disable_comment": True,
            "disable_duet": False,
            "disable_stitch": False,
            "brand_content_toggle": True,
            "brand_organic_toggle": True,
            "is_aigc": False,
        }
    ]
    [row] = list_publishes(rt.catalog.engine, summary["media_id"])
    assert row.post_options["disable_comment"] is True
    assert row.post_options["brand_content_toggle"] is True


def test_creator_lock_is_refused_before_any_byte(
    rt: Runtime, sandbox: RunningSandbox, clip: Path
) -> None:
    """--allow-comment for a creator whose comments are off: refused after creator_info and
    before the video is read: exit 2, nothing stored, no init."""
    add_account(rt, sandbox)
    sandbox.state.set_policy(next(iter(sandbox.state.accounts)), {"comment_disabled": True})
    result = cli("ingest", str(clip), "--account", "creator", "--allow-comment", "--json")
    assert result.exit_code == 2, result.output
    assert "error: comment_disabled_by_creator:" in result.stderr
    assert rt.catalog.list_media() == []
    assert sandbox.state.stats()["inits"] == 0


def test_branded_content_cannot_be_private_from_the_cli(
    rt: Runtime, sandbox: RunningSandbox, clip: Path
) -> None:
    """--brand-content with the default SELF_ONLY: exit 2 before anything starts (no creator_info)."""
    add_account(rt, sandbox)
    result = cli("ingest", str(clip), "--account", "creator", "--brand-content")
    assert result.exit_code == 2
    assert "error: branded_content_private:" in result.stderr
    assert sandbox.state.stats()["calls"].get("POST /v2/post/publish/creator_info/query/", 0) == 0


def test_flow_parameters_carry_the_options_and_follow_creator_locks(
    rt: Runtime, sandbox: RunningSandbox, clip: Path
) -> None:
    """publish-media's parameters (the UI form): disable_duet=True is sent; an unset comment
    setting follows the creator's lock; asking to allow it is refused with no init."""
    add_account(rt, sandbox)
    sandbox.state.set_policy(next(iter(sandbox.state.accounts)), {"comment_disabled": True})
    media_id = ingest_video(source=str(clip))["media_id"]
    with pytest.raises(PublishRefusedError) as refused:
        publish_media(media_id=media_id, account="creator", disable_comment=False)
    assert refused.value.reason == "comment_disabled_by_creator"
    assert sandbox.state.stats()["inits"] == 0
    done = publish_media(media_id=media_id, account="creator", disable_duet=True)
    assert done["status"] == "PUBLISH_COMPLETE"
    [flags] = posted_flags(sandbox)
    assert flags is not None
    assert (flags["disable_comment"], flags["disable_duet"], flags["disable_stitch"]) == (
        True,
        True,
        False,
    )
