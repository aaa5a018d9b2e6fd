"""TikTok publishing end to end: the publish-media flow against the sandbox over real HTTP.

Real parts only: the sandbox is a uvicorn server on 127.0.0.1 that ffprobes what arrives, media
are ingested by the real ingest flow (ffmpeg, local store or moto S3, SQLite), flows run on a
real Prefect API. Faults, clock jumps and token expiry come from the sandbox itself; a few tests
hook the sandbox's state object to act at an exact protocol moment (after the n-th chunk).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from typer.testing import CliRunner

from flows.ingest import ingest_video
from flows.publish import publish_media
from flows.scheduling import reconcile_publishes
from reelflow.cli_tiktok import tiktok_app
from reelflow.errors import ConfigurationError, PublishRefusedError
from reelflow.logging import configure_logging
from reelflow.samples import make_clip
from reelflow.settings import Settings
from reelflow.tiktok.client import TikTokClient
from reelflow.tiktok.errors import (
    TikTokAuthError,
    TikTokPolicyError,
    TikTokPublishFailedError,
)
from reelflow.tiktok.plan import plan_tiktok_upload
from reelflow.tiktok.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from reelflow.tiktok.tokens import AuthorizationRevokedError
from storage.accounts import get_account
from storage.crypto import secret_box
from storage.publishing import list_publishes
from storage.runtime import Runtime
from tasks.tiktok_limits import rate_limit_name
from tests.support.files import sha256_file
from tests.support.tiktok import SANDBOX_CONFIG, add_account

pytestmark = pytest.mark.usefixtures("prefect_api")

MIB = 1024 * 1024
CONFIG = SANDBOX_CONFIG
THREE_CHUNKS = 30_000_123  # 10,000,000-byte chunks, the last one 10,000,123


# ----- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny valid 3 s 720x1280 30 fps H.264+AAC clip (flat colour: a few tens of KB)."""
    return make_clip(
        tmp_path_factory.mktemp("base") / "base.mp4", duration_s=3, pattern="color", preset="fast"
    )


def sized(base: Path, size: int, dest: Path) -> Path:
    """``base`` plus a trailing top-level ``free`` box: a valid MP4 of exactly ``size`` bytes."""
    data = base.read_bytes()
    pad = size - len(data)
    assert pad >= 8, (size, len(data))
    with dest.open("wb") as fh:
        fh.write(data + pad.to_bytes(4, "big") + b"free")
        fh.truncate(size)  # sparse zeros: no I/O for the padding
    return dest


@pytest.fixture
def rt(home: Path, sandbox: RunningSandbox) -> Runtime:
    return Runtime.from_settings(Settings())


def ingest(path: Path) -> str:
    media_id: str = ingest_video(source=str(path))["media_id"]
    return media_id


def creator_media(rt: Runtime, sandbox: RunningSandbox, clip: Path) -> str:
    """The sandbox's ``creator`` account added, and ``clip`` ingested: its media id."""
    add_account(rt, sandbox)
    return ingest(clip)


def after_chunk(sb: RunningSandbox, mp: pytest.MonkeyPatch, n: int, act: Callable[[], Any]) -> None:
    """Run ``act`` inside the sandbox right after it accepted the ``n``-th chunk PUT."""
    original, seen = sb.state.commit_put, [0]

    def hooked(plan: Any, hasher: Any) -> tuple[int, str]:
        result = original(plan, hasher)
        seen[0] += 1
        if seen[0] == n:
            act()
        return result

    mp.setattr(sb.state, "commit_put", hooked)


def spy_inits(sb: RunningSandbox, mp: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the JSON body of every init the sandbox receives."""
    original, bodies = sb.state.init_video, []

    def spy(token: Any, body: Any, **kw: Any) -> dict[str, Any]:
        bodies.append(copy.deepcopy(body))
        return original(token, body, **kw)

    mp.setattr(sb.state, "init_video", spy)
    return bodies


def received(sb: RunningSandbox, publish_id: str) -> dict[str, Any]:
    publish: dict[str, Any] = sb.state.stats()["publishes"][publish_id]
    return publish


def calls(sb: RunningSandbox, route: str) -> int:
    counts: dict[str, int] = sb.state.stats()["calls"]
    return counts.get(route, 0)


INIT, STATUS, TOKEN = (
    "POST /v2/post/publish/video/init/",
    "POST /v2/post/publish/status/fetch/",
    "POST /v2/oauth/token/",
)
PUT = "PUT /upload/video/"


# ----- protocol: sizes -------------------------------------------------------------------------

SIZES = [
    pytest.param(MIB, 1, id="1MiB"),
    pytest.param(5 * MIB - 1, 1, id="5MiB-1"),
    pytest.param(5 * MIB, 1, id="5MiB"),
    pytest.param(64_000_001, 6, id="64MB+1"),
    pytest.param(150_000_123, 15, id="150MB", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("size", "chunks"), SIZES)
def test_sizes_publish_exactly_once(
    size: int,
    chunks: int,
    rt: Runtime,
    sandbox: RunningSandbox,
    base_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each size is planned as TikTok requires, arrives byte-exact, posts once; a re-run is a no-op."""
    clip = sized(base_clip, size, tmp_path / "clip.mp4")
    add_account(rt, sandbox)
    media_id = ingest(clip)
    bodies = spy_inits(sandbox, monkeypatch)
    summary = publish_media(media_id=media_id, account="creator")
    plan = plan_tiktok_upload(size)
    assert plan.total_chunk_count == chunks
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["ledger_status"] == "published"
    assert summary["chunks_total"] == summary["chunks_sent_this_run"] == chunks
    got = received(sandbox, summary["publish_id"])
    assert (got["video_size"], got["chunk_size"], got["total_chunk_count"]) == (
        size,
        plan.chunk_size,
        chunks,
    )
    assert got["sha256"] == sha256_file(clip)
    media = rt.catalog.get_media(media_id)
    assert media is not None
    post_info = bodies[0]["post_info"]
    assert post_info["video_cover_timestamp_ms"] == media.thumbnail_time_ms
    assert post_info["privacy_level"] == "SELF_ONLY"
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"], stats["calls"][PUT]) == (1, 1, chunks)

    again = publish_media(media_id=media_id, account="creator")
    assert again["publish_id"] == summary["publish_id"] and again["chunks_sent_this_run"] == 0
    assert sandbox.state.stats()["calls"] == stats["calls"]  # not even a status call


def test_s3_store_streams_ranged_chunks(
    s3_env: str, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """With the S3 store, chunks come from ranged GETs and arrive byte-exact."""
    rt = Runtime.from_settings(Settings())
    clip = sized(base_clip, THREE_CHUNKS, tmp_path / "clip.mp4")
    add_account(rt, sandbox)
    summary = publish_media(media_id=ingest(clip), account="creator")
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 3
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def test_inbox_mode_and_public_post_id(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """Inbox ends at SEND_TO_USER_INBOX; a public Direct Post (--again) records TikTok's post id."""
    media_id = creator_media(rt, sandbox, sized(base_clip, 2 * MIB, tmp_path / "clip.mp4"))
    inbox = publish_media(media_id=media_id, account="creator", mode="inbox")
    assert inbox["status"] == "SEND_TO_USER_INBOX" and inbox["ledger_status"] == "sent_to_inbox"
    assert inbox["publish_id"].startswith("v_inbox_file~")
    state = publish_media(
        media_id=media_id,
        account="creator",
        privacy="PUBLIC_TO_EVERYONE",
        caption="#cat 🎬",
        again=True,
        return_state=True,
    )
    public = state.result()
    assert public["publish_id"] != inbox["publish_id"]  # posted again, as asked
    assert (public["generation"], public["options_differ"]) == (1, False)
    kinds = {a["type"]: a for a in run_artifacts(state.state_details.flow_run_id)}
    assert kinds["progress"]["data"] == 100.0
    assert public["publish_id"] in kinds["markdown"]["data"]
    assert public["post_id"] in kinds["markdown"]["data"]
    assert public["post_id"] and public["post_id"].isdigit() and int(public["post_id"]) > 2**53
    assert received(sandbox, public["publish_id"])["title"] == "#cat 🎬"


# ----- a publish is (media, account): edits find it, --again posts once more -------------------


def test_edited_caption_finds_the_existing_publish_and_again_posts_once(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """Another caption returns the existing post; --again posts once more, re-runs post nothing."""
    media_id = creator_media(rt, sandbox, sized(base_clip, 2 * MIB, tmp_path / "clip.mp4"))
    first = publish_media(media_id=media_id, account="creator", caption="take one")
    calls_before = sandbox.state.stats()["calls"]
    edited = publish_media(media_id=media_id, account="creator", caption="take two")
    assert edited["publish_id"] == first["publish_id"] and edited["options_differ"] is True
    assert (edited["status"], edited["chunks_sent_this_run"]) == ("PUBLISH_COMPLETE", 0)
    assert sandbox.state.stats()["calls"] == calls_before  # not even creator_info
    second = publish_media(media_id=media_id, account="creator", caption="take two", again=True)
    assert second["publish_id"] != first["publish_id"] and second["status"] == "PUBLISH_COMPLETE"
    assert (second["generation"], second["options_differ"]) == (1, False)
    assert received(sandbox, second["publish_id"])["title"] == "take two"
    rerun = publish_media(media_id=media_id, account="creator", caption="take two", again=True)
    assert rerun["publish_id"] == second["publish_id"] and rerun["chunks_sent_this_run"] == 0
    plain = publish_media(media_id=media_id, account="creator", caption="take three")
    assert plain["publish_id"] == first["publish_id"]  # the plain publish stays the answer
    via_cli = run_cli("publish", media_id, "--account", "creator", "--caption", "4", "--json")
    assert via_cli.exit_code == 0, via_cli.output
    assert json.loads(via_cli.stdout.splitlines()[-1])["publish_id"] == first["publish_id"]
    assert "already published" in via_cli.stderr and "--again" in via_cli.stderr
    again_cli = run_cli(
        "publish", media_id, "--account", "creator", "--caption", "take two", "--again", "--json"
    )
    assert again_cli.exit_code == 0, again_cli.output
    assert json.loads(again_cli.stdout.splitlines()[-1])["publish_id"] == second["publish_id"]
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (2, 2)
    assert len(list_publishes(rt.catalog.engine, media_id)) == 2


def test_a_publish_refused_before_init_takes_the_next_requests_options(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """Nothing reached TikTok: a corrected privacy is posted (one row, one post), no --again."""
    add_account(rt, sandbox, privacy="private")
    media_id = ingest(sized(base_clip, MIB, tmp_path / "clip.mp4"))
    with pytest.raises(PublishRefusedError):
        publish_media(media_id=media_id, account="creator", privacy="PUBLIC_TO_EVERYONE")
    fixed = publish_media(media_id=media_id, account="creator", privacy="SELF_ONLY")
    assert fixed["status"] == "PUBLISH_COMPLETE" and fixed["options_differ"] is False
    [row] = list_publishes(rt.catalog.engine, media_id)
    assert json.loads(row.options_json)["privacy_level"] == "SELF_ONLY"
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1)


# ----- refusals, policy errors and FAILED ------------------------------------------------------


def test_privacy_not_offered_and_too_long_are_refused_before_init(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """creator_info decides: no init for a privacy the creator lacks or an over-long video."""
    add_account(rt, sandbox, privacy="private")
    media_id = ingest(sized(base_clip, MIB, tmp_path / "clip.mp4"))
    with pytest.raises(PublishRefusedError) as refused:
        publish_media(media_id=media_id, account="creator", privacy="PUBLIC_TO_EVERYONE")
    assert refused.value.reason == "privacy_level_not_offered" and refused.value.exit_code == 2
    assert "FOLLOWER_OF_CREATOR" in str(refused.value)
    open_id = next(iter(sandbox.state.accounts))
    sandbox.state.set_policy(open_id, {"max_video_post_duration_sec": 2})
    with pytest.raises(PublishRefusedError, match="at most 2s") as too_long:
        publish_media(media_id=media_id, account="creator")
    assert too_long.value.reason == "video_too_long"
    assert sandbox.state.stats()["inits"] == 0


def test_tiktok_policy_errors_carry_code_and_log_id(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """A 200-with-error on creator_info and a 403 on init surface with TikTok's code and log id."""
    created = add_account(rt, sandbox, audited=False)
    media_id = ingest(sized(base_clip, MIB, tmp_path / "clip.mp4"))
    with pytest.raises(TikTokPolicyError) as unaudited:
        publish_media(media_id=media_id, account="creator")
    err = unaudited.value
    assert err.code == "unaudited_client_can_only_post_to_private_accounts"
    assert err.http_status == 403 and err.log_id and err.log_id in str(err) and not err.retryable
    sandbox.state.set_policy(created["open_id"], {"spam_risk_too_many_posts": True})
    with pytest.raises(TikTokPolicyError) as spam:
        publish_media(media_id=media_id, account="creator")
    assert spam.value.code == "spam_risk_too_many_posts" and spam.value.http_status == 200
    assert spam.value.log_id and spam.value.log_id in str(spam.value)
    [row] = list_publishes(rt.catalog.engine, media_id)
    assert row.status == "pending" and row.error_code == "spam_risk_too_many_posts"
    assert calls(sandbox, INIT) == 1  # the spam refusal came before init


def test_failed_status_is_terminal_with_reason_and_log_id(
    rt: Runtime, sandbox: RunningSandbox, clips: Any
) -> None:
    """Media TikTok rejects after upload → TikTokPublishFailedError; a re-run reports, calls nothing."""
    add_account(rt, sandbox)
    clip = clips.bad("one_fps")  # 1 fps: ingest would refuse it, so it goes into the store as-is
    from storage.catalog import Media

    rt.store.put_file("videos/one-fps.mp4", clip, "video/mp4")
    rt.catalog.upsert_media(
        Media(
            media_id="m_one_fps",
            sha256=sha256_file(clip),
            size_bytes=clip.stat().st_size,
            content_type="video/mp4",
            container="mp4",
            duration_s=3.0,
            width=720,
            height=1280,
            fps=1.0,
            video_codec="h264",
            has_audio=False,
            store_url=rt.store.url,
            video_key="videos/one-fps.mp4",
            thumbnail_key="videos/one-fps.jpg",
            metadata_key="videos/one-fps.json",
            source_uri=clip.as_uri(),
        )
    )
    with pytest.raises(TikTokPublishFailedError) as failed:
        publish_media(media_id="m_one_fps", account="creator")
    assert failed.value.fail_reason == "frame_rate_check_failed" and not failed.value.retryable
    assert failed.value.log_id and failed.value.log_id in str(failed.value)
    [row] = list_publishes(rt.catalog.engine, "m_one_fps")
    assert (row.status, row.fail_reason, row.log_id) == (
        "failed",
        "frame_rate_check_failed",
        failed.value.log_id,
    )
    before = sandbox.state.stats()["calls"]
    with pytest.raises(TikTokPublishFailedError, match="frame_rate_check_failed"):
        publish_media(media_id="m_one_fps", account="creator")
    assert sandbox.state.stats()["calls"] == before


# ----- tokens ----------------------------------------------------------------------------------


def test_token_expiry_mid_flow_refreshes_once_and_rotation_is_persisted(
    rt: Runtime,
    sandbox: RunningSandbox,
    base_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The access token dies after the first chunk → the status call refreshes and continues."""
    created = add_account(rt, sandbox)
    media_id = ingest(sized(base_clip, THREE_CHUNKS, tmp_path / "clip.mp4"))
    after_chunk(
        sandbox,
        monkeypatch,
        1,
        lambda: sandbox.state.expire_access_token(created["access_token"]),
    )
    summary = publish_media(media_id=media_id, account="creator")
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 3
    assert calls(sandbox, TOKEN) == 1
    box, account = secret_box(rt.settings), get_account(rt.catalog.engine, "creator")
    assert account is not None and account.token_version == 2
    stored_refresh = box.open(account.refresh_token_enc)
    assert stored_refresh != created["refresh_token"]  # rotated, and the rotation was stored
    with TikTokClient(
        sandbox.base_url, client_key=CONFIG.client_key, client_secret=CONFIG.client_secret
    ) as client:
        with pytest.raises(TikTokAuthError) as old:
            client.refresh(created["refresh_token"])
        assert old.value.code == "invalid_grant"
        assert client.refresh(stored_refresh).access_token  # the persisted one is the live one


def test_refresh_ahead_of_expiry_without_a_401(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """A stored token inside its refresh margin is refreshed before the first call."""
    add_account(rt, sandbox, stored_expires_in=0)
    summary = publish_media(
        media_id=ingest(sized(base_clip, MIB, tmp_path / "c.mp4")), account="creator"
    )
    assert summary["status"] == "PUBLISH_COMPLETE"
    assert calls(sandbox, TOKEN) == 1
    assert calls(sandbox, "POST /v2/post/publish/creator_info/query/") == 1  # no 401 + retry
    account = get_account(rt.catalog.engine, "creator")
    assert account is not None and account.access_lifetime_s == CONFIG.access_expires_in


def test_tokens_are_encrypted_at_rest(
    rt: Runtime, sandbox: RunningSandbox, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog holds ciphertext only; the key file is 0600; a set secret_key is used."""
    created = add_account(rt, sandbox)
    db = b"".join(p.read_bytes() for p in home.glob("catalog.db*"))
    assert db and created["access_token"].encode() not in db
    assert created["refresh_token"].encode() not in db
    assert (home / "secret.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("REELFLOW_SECRET_KEY", "a passphrase long enough to derive a key")
    keyed = secret_box(Settings())
    assert keyed.open(keyed.seal("x")) == "x"
    account = get_account(rt.catalog.engine, "creator")
    assert account is not None
    with pytest.raises(ConfigurationError, match="cannot be decrypted"):
        keyed.open(account.access_token_enc)  # written under the key file's key


def test_revoked_authorization_is_terminal(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """A revoked grant: the refresh is refused → AuthorizationRevokedError, nothing initialised."""
    created = add_account(rt, sandbox)
    media_id = ingest(sized(base_clip, MIB, tmp_path / "c.mp4"))
    sandbox.state.revoke_token(created["refresh_token"])
    with pytest.raises(AuthorizationRevokedError) as revoked:
        publish_media(media_id=media_id, account="creator")
    assert revoked.value.code == "invalid_grant" and not revoked.value.retryable
    assert revoked.value.log_id and "re-authorize" in str(revoked.value)
    assert calls(sandbox, TOKEN) == 1 and sandbox.state.stats()["inits"] == 0


# ----- faults, re-sync, expiry, deadline -------------------------------------------------------


@pytest.mark.slow
def test_faults_still_give_exactly_one_post(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """10 % 5xx/429, lost replies and dropped connections: it completes, one post, exact bytes."""
    add_account(rt, sandbox)
    clip = sized(base_clip, 64_000_001, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    sandbox.state.set_faults(
        {
            "seed": 42,
            "error_rate": 0.05,
            "rate_limit_rate": 0.05,
            "lost_response_rate": 0.05,
            "drop_rate": 0.1,
            "retry_after_s": 1,
        }
    )
    summary = publish_media(media_id=media_id, account="creator")
    stats = sandbox.state.stats()
    assert summary["status"] == "PUBLISH_COMPLETE"
    assert stats["posts"] == 1
    assert sum(stats["faults"].values()) >= 2, stats["faults"]  # the dice did strike
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def test_lost_put_replies_resync_instead_of_failing(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """Every PUT is applied but answered 5xx: the retry's 416 re-syncs and the upload goes on."""
    add_account(rt, sandbox)
    clip = sized(base_clip, THREE_CHUNKS, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    sandbox.state.set_faults({"lost_response_rate": 1.0, "targets": ["upload"]})
    summary = publish_media(media_id=media_id, account="creator")
    assert summary["status"] == "PUBLISH_COMPLETE" and summary["chunks_sent_this_run"] == 3
    assert calls(sandbox, PUT) == 6  # each chunk: the lost reply, then a 416 re-sync
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def land_directly(sb: RunningSandbox, clip: Path, chunks: range, chunk_size: int) -> None:
    """Another sender's copies of ``chunks`` (0-based, never the last) arrive at TikTok."""
    state, data = sb.state, clip.read_bytes()
    [(upload_id, publish_id)] = state._uploads.items()
    token = state._publishes[publish_id].upload_token
    for i in chunks:
        first = i * chunk_size
        last = first + chunk_size - 1
        headers = {
            "content-type": "video/mp4",
            "content-length": str(last - first + 1),
            "content-range": f"bytes {first}-{last}/{len(data)}",
        }
        plan = state.begin_put(upload_id, token, headers)
        with plan.path.open("r+b") as fh:
            fh.seek(first)
            fh.write(data[first : last + 1])
        plan.hasher.update(data[first : last + 1])
        state.commit_put(plan, plan.hasher)


def test_tiktok_two_chunks_ahead_releases_the_waiting_chunk_unsent(
    rt: Runtime,
    sandbox: RunningSandbox,
    base_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks 2-3 land from elsewhere during chunk 1's PUT: chunk 2's 416 moves the run to 4.

    The pipelined task for chunk 3 was already waiting its turn; it must give up without a PUT,
    and the run go on from chunk 4: four PUTs in all (1, 2 answered 416, 4, 5) and one post.
    """
    add_account(rt, sandbox)
    clip = sized(base_clip, 50_000_123, tmp_path / "clip.mp4")  # five 10 MB chunks
    media_id = ingest(clip)
    after_chunk(sandbox, monkeypatch, 1, lambda: land_directly(sandbox, clip, range(1, 3), 10**7))
    summary = publish_media(media_id=media_id, account="creator")
    assert summary["status"] == "PUBLISH_COMPLETE" and sandbox.state.stats()["posts"] == 1
    assert calls(sandbox, PUT) == 4 and summary["chunks_sent_this_run"] == 3
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)
    [row] = list_publishes(rt.catalog.engine, media_id)
    assert row.bytes_acknowledged == clip.stat().st_size


def test_upload_url_expiry_mid_upload_reinits_and_records_it(
    rt: Runtime,
    sandbox: RunningSandbox,
    base_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An hour passes after chunk 1: the next PUT gets 403, a new init starts over, one post."""
    add_account(rt, sandbox)
    clip = sized(base_clip, THREE_CHUNKS, tmp_path / "clip.mp4")
    media_id = ingest(clip)
    after_chunk(sandbox, monkeypatch, 1, lambda: sandbox.state.advance_clock(3601))
    summary = publish_media(media_id=media_id, account="creator")
    stats = sandbox.state.stats()
    assert summary["status"] == "PUBLISH_COMPLETE" and (stats["inits"], stats["posts"]) == (2, 1)
    assert summary["chunks_sent_this_run"] == 1 + 3 and summary["inits"] == 2
    [row] = list_publishes(rt.catalog.engine, media_id)
    reasons = [(h["reason"], h["bytes_acknowledged"]) for h in row.history()]
    assert reasons == [("first_init", 0), ("upload_url_expired", 10_000_000)]
    assert received(sandbox, summary["publish_id"])["sha256"] == sha256_file(clip)


def test_poll_deadline_leaves_processing_and_rerun_only_polls(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """Slow processing past the deadline → ``processing``; later, a re-run polls to the end."""
    media_id = creator_media(rt, sandbox, sized(base_clip, MIB, tmp_path / "c.mp4"))
    sandbox.state.set_faults({"processing_delay_s": 3600})
    first = publish_media(media_id=media_id, account="creator", poll_deadline_s=0.2)
    assert (first["status"], first["ledger_status"]) == ("PROCESSING_UPLOAD", "processing")
    sandbox.state.advance_clock(3600)
    puts = calls(sandbox, PUT)
    second = publish_media(media_id=media_id, account="creator")
    assert second["status"] == "PUBLISH_COMPLETE" and second["publish_id"] == first["publish_id"]
    assert (sandbox.state.stats()["inits"], calls(sandbox, PUT)) == (1, puts)


def test_reconcile_finishes_the_processing_row_by_id(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """reconcile-publishes resumes the processing re-post itself (by id), polling only."""
    media_id = creator_media(rt, sandbox, sized(base_clip, MIB, tmp_path / "c.mp4"))
    plain = publish_media(media_id=media_id, account="creator")
    sandbox.state.set_faults({"processing_delay_s": 3600})
    slow = publish_media(
        media_id=media_id, account="creator", caption="encore", again=True, poll_deadline_s=0.2
    )
    assert (slow["ledger_status"], slow["generation"]) == ("processing", 1)
    sandbox.state.advance_clock(3600)
    puts = calls(sandbox, PUT)
    reconciled = reconcile_publishes()
    assert [r["status"] for r in reconciled["rows"]] == ["PUBLISH_COMPLETE"]
    rows = {p.publish_id: p for p in list_publishes(rt.catalog.engine, media_id)}
    assert rows[slow["publish_id"]].status == "published"
    assert rows[plain["publish_id"]].status == "published"
    assert (sandbox.state.stats()["inits"], calls(sandbox, PUT)) == (2, puts)
    assert reconcile_publishes()["reconciled"] == 0  # nothing left in processing


def test_duplicate_concurrent_runs_publish_once(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """The same publish started twice at once (a duplicate trigger): one init, one post."""
    media_id = creator_media(rt, sandbox, sized(base_clip, THREE_CHUNKS, tmp_path / "c.mp4"))
    with ThreadPoolExecutor(2) as pool:
        done = list(
            pool.map(lambda _: publish_media(media_id=media_id, account="creator"), range(2))
        )
    assert [d["status"] for d in done] == ["PUBLISH_COMPLETE"] * 2
    assert done[0]["publish_id"] == done[1]["publish_id"]
    assert sorted(d["chunks_sent_this_run"] for d in done) == [0, 3]
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"], stats["calls"][PUT]) == (1, 1, 3)


@pytest.mark.slow
def test_rate_limits_hold_across_concurrent_runs(
    home: Path, base_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight publishes at once on one account: inits wait for a Prefect slot, none meets a 429.

    TikTok's window is a minute; the sandbox and the limiter are both scaled to 5 s so the test
    takes seconds. Without the limiter, inits 7 and 8 would be refused inside the first window
    (all eight are wanted within a second). The limiter spaces the waiting inits a third of a
    window apart at least (measured: 3 s apart), far more than an init's trip to the sandbox.
    """
    window_s, runs = 5.0, 8
    monkeypatch.setenv("REELFLOW_TIKTOK_RATE_WINDOW_S", str(window_s))
    config = SandboxConfig(processing_delay_s=0.0, rate_limit_window_s=window_s)
    with start_sandbox(config, data_dir=tmp_path / "sandbox") as sb:
        monkeypatch.setenv("REELFLOW_TIKTOK_API_BASE", sb.base_url)
        rt = Runtime.from_settings(Settings())
        created = add_account(rt, sb)
        media_id = ingest(sized(base_clip, MIB, tmp_path / "c.mp4"))
        with ThreadPoolExecutor(runs) as pool:  # one caption each, --again: eight publishes
            done = list(
                pool.map(
                    lambda i: publish_media(
                        media_id=media_id, account="creator", caption=f"#{i}", again=True
                    ),
                    range(runs),
                )
            )
        assert {d["status"] for d in done} == {"PUBLISH_COMPLETE"}
        assert sorted(d["generation"] for d in done) == list(range(1, runs + 1))
        stats = sb.state.stats()
        assert (stats["inits"], stats["posts"], stats["calls"][INIT]) == (runs, runs, runs)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(
            rate_limit_name("init", created["open_id"])
        )
    assert (limit.limit, limit.slot_decay_per_second) == (3, 3 / window_s)


# ----- CLI and the redaction check -------------------------------------------------------------


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(tiktok_app, list(args))


def test_cli_accounts_and_publish_exit_codes(
    rt: Runtime, sandbox: RunningSandbox, base_clip: Path, tmp_path: Path
) -> None:
    """accounts add (--code and tokens) / list / publish: 0 on success, 2 on a refusal."""
    created = sandbox.state.create_account("cli-creator", privacy="private")
    added = run_cli("accounts", "add", "viacode", "--code", created["auth_code"], "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["open_id"] == created["open_id"]
    media_id = ingest(sized(base_clip, MIB, tmp_path / "c.mp4"))
    ok = run_cli("publish", media_id, "--account", "viacode", "--json", "--verbose")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["status"] == "PUBLISH_COMPLETE"
    refused = run_cli(  # --again: without it the existing post is the answer (exit 0)
        "publish", media_id, "--account", "viacode", "--privacy", "PUBLIC_TO_EVERYONE", "--again"
    )
    assert refused.exit_code == 2
    assert "privacy_level_not_offered" in refused.stderr
    missing = run_cli("publish", "m_nope", "--account", "viacode")
    assert missing.exit_code == 2 and "media_not_found" in missing.stderr
    assert run_cli("accounts", "add", "bad", "--access-token", "x").exit_code == 2
    listed = run_cli("accounts", "list", "--json")
    assert [a["name"] for a in json.loads(listed.stdout)] == ["viacode"]


def test_tokens_never_leak(
    rt: Runtime,
    sandbox: RunningSandbox,
    base_clip: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens, upload tokens and the client secret appear in no log, artifact, error or output."""
    configure_logging()  # before capture_logs, so it cannot replace the capturing config later
    caplog.set_level(logging.DEBUG)
    created = sandbox.state.create_account("leaky")
    secrets = {created["access_token"], created["refresh_token"], CONFIG.client_secret}
    outputs: list[str] = []
    states: list[Any] = []
    media_id = ingest(sized(base_clip, THREE_CHUNKS, tmp_path / "c.mp4"))
    with structlog.testing.capture_logs() as events:
        added = run_cli(
            "accounts", "add", "leaky",
            "--access-token", created["access_token"],
            "--refresh-token", created["refresh_token"],
            "--expires-in", "0", "--open-id", created["open_id"],
        )  # fmt: skip
        outputs += [added.output, added.stderr, run_cli("accounts", "list").output]
        # Expiry of the upload URL, 5xx on PUTs and a refresh: every error path gets logged.
        after_chunk(sandbox, monkeypatch, 1, lambda: sandbox.state.advance_clock(3601))
        sandbox.state.set_faults({"seed": 3, "error_rate": 0.3, "targets": ["upload"]})
        states.append(publish_media(media_id=media_id, account="leaky", return_state=True))
        account = get_account(rt.catalog.engine, "leaky")
        assert account is not None
        box = secret_box(rt.settings)
        secrets |= {box.open(account.access_token_enc), box.open(account.refresh_token_enc)}
        [row] = list_publishes(rt.catalog.engine, media_id)
        assert row.upload_url_enc is not None
        secrets.add(box.open(row.upload_url_enc).split("upload_token=")[1])
        sandbox.state.revoke_token(box.open(account.refresh_token_enc))
        sandbox.state.expire_access_token(box.open(account.access_token_enc))
        failed = publish_media(
            media_id=media_id, account="leaky", mode="inbox", again=True, return_state=True
        )
        states.append(failed)
        error = failed.result(raise_on_failure=False)
        assert isinstance(error, AuthorizationRevokedError)
        outputs += [str(error), repr(error), str(error.__cause__), repr(error.__dict__)]
        cli = run_cli("publish", media_id, "--account", "leaky", "--mode", "inbox", "--again", "-v")
        assert cli.exit_code == 2
        outputs += [cli.output, cli.stderr]
    assert states[0].is_completed()
    outputs += [repr(e) for e in events] + [caplog.text]
    outputs += [r.getMessage() for r in caplog.records]
    outputs += prefect_records([s.state_details.flow_run_id for s in states])
    assert len(secrets) == 6 and all(len(s) > 10 for s in secrets)
    blob = "\n".join(outputs)
    assert "tiktok_upload_restarted" in blob and "access_token_refreshed" in blob
    # Shown on failure: what precedes each leak (the secret itself is cut off).
    leaked = [blob[max(0, blob.index(s) - 80) : blob.index(s)] for s in secrets if s in blob]
    assert leaked == [], f"secrets leaked after: {leaked}"


def run_artifacts(flow_run_id: Any) -> list[dict[str, Any]]:
    """A flow run's artifacts, read over the API (the sync client's filter call sends nulls)."""
    from prefect.client.orchestration import get_client

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 50}
    with get_client(sync_client=True) as client:
        found: list[dict[str, Any]] = client.request("POST", "/artifacts/filter", json=body).json()
    return found


def prefect_records(flow_run_ids: list[Any]) -> list[str]:
    """Everything the Prefect API holds for these runs: logs, artifacts, parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    texts = []
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            texts.append(json.dumps(client.read_flow_run(run_id).parameters))
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=0,
            )
            assert logs, "the run's logs must reach the API for this check to mean anything"
            texts += [log.message for log in logs]
            artifacts = run_artifacts(run_id)
            texts += [json.dumps(a, default=str) for a in artifacts]
            assert artifacts, "the publish must leave artifacts"
    return texts


def test_sandbox_http_admin_is_reachable(sandbox: RunningSandbox) -> None:
    """The sandbox used here is a real HTTP server (stats over the wire match the state)."""
    resp = requests.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10)
    assert resp.status_code == 200 and resp.json()["inits"] == 0
