"""`reelflow media list|show|delete` and `accounts list|remove` end to end.

Real parts: the CLI in process (CliRunner), the ingest, publish and delete-media flows on the
Prefect test API, ffmpeg, the local store or moto's S3 server, SQLite, the TikTok sandbox over
HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.ingest import ingest_video
from flows.media_admin import delete_media
from flows.publish import publish_media
from reelflow.cli import app
from reelflow.publish_rules import PublishRequest
from reelflow.samples import make_clip
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox
from reelflow.tiktok.tokens import AuthorizationRevokedError
from storage.accounts import get_account
from storage.publishing import find_or_make_publish, list_publishes, update_publish
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


def last_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_list_show_delete_and_the_post_stays_once(
    rt: Runtime, sandbox: RunningSandbox, clip: Path
) -> None:
    """A published media is listed and shown, deleted (objects and rows), and re-ingesting
    the same video then finds its post in the ledger: TikTok gets no second one."""
    add_account(rt, sandbox)
    media_id = ingest_video(source=str(clip), account="creator")["media_id"]
    media = rt.catalog.get_media(media_id)
    assert media is not None
    keys = (media.video_key, media.thumbnail_key, media.metadata_key)
    assert all(rt.store.exists(k) for k in keys)

    listed = last_json(cli("media", "list", "--json"))["media"]
    assert [(m["media_id"], m["publishes"]) for m in listed] == [(media_id, 1)]
    shown = last_json(cli("media", "show", media_id, "--json"))
    assert shown["media"]["sha256"] == media.sha256 and len(shown["publishes"]) == 1
    assert "upload_url_enc" not in shown["publishes"][0]

    unconfirmed = cli("media", "delete", media_id)
    assert unconfirmed.exit_code == 2 and "confirmation_needed" in unconfirmed.stderr
    dry = last_json(cli("media", "delete", media_id, "--dry-run", "--json"))
    assert set(dry["deleted_keys"]) == set(keys) and all(rt.store.exists(k) for k in keys)

    done = last_json(cli("media", "delete", media_id, "--yes", "--json"))
    assert done["rows_deleted"]["media"] == 1
    assert not any(rt.store.exists(k) for k in keys)
    assert rt.catalog.get_media(media_id) is None
    assert [p.status for p in list_publishes(rt.catalog.engine, media_id)] == ["published"]
    missing = cli("media", "show", media_id)
    assert missing.exit_code == 2 and "media_not_found" in missing.stderr

    again = ingest_video(source=str(clip), account="creator")
    assert again["media_id"] == media_id  # content identity: the same id
    assert again["publish"]["status"] == "PUBLISH_COMPLETE"
    assert sandbox.state.stats()["inits"] == 1  # the existing post, not a second one


def test_delete_is_refused_while_a_publish_is_in_flight(rt: Runtime, clip: Path) -> None:
    """A publish sending chunks: exit 1, one error line, every object still there."""
    media_id = ingest_video(source=str(clip))["media_id"]
    media = rt.catalog.get_media(media_id)
    assert media is not None
    row = find_or_make_publish(
        rt.catalog.engine,
        media_id,
        media.size_bytes,
        PublishRequest("creator", "direct", "SELF_ONLY", None),
    )
    update_publish(rt.catalog.engine, row.id, status="uploading", publish_id="v_pub_file~9")
    refused = cli("media", "delete", media_id, "--yes")
    assert refused.exit_code == 1
    assert refused.stderr.strip().startswith("error: publish_in_flight:")
    assert rt.store.exists(media.video_key) and rt.catalog.get_media(media_id) is not None


def test_delete_media_flow_on_s3(s3_env: str, s3_server: Any, bucket: str, clip: Path) -> None:
    """The delete-media flow on moto's S3: the media's three objects are gone from the bucket."""
    rt = Runtime.from_settings(Settings())
    media_id = ingest_video(source=str(clip))["media_id"]
    before = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    summary = delete_media(media_id=media_id)
    after = {
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    }
    gone = before - after
    assert len(summary["deleted_keys"]) == 3 and len(gone) == 3
    assert all(any(k.endswith(key) for k in gone) for key in summary["deleted_keys"])
    assert rt.catalog.get_media(media_id) is None


def test_accounts_health_and_remove(rt: Runtime, sandbox: RunningSandbox, clip: Path) -> None:
    """list shows token health; a refused refresh is shown as refresh_failing with its code;
    remove deletes the row (tokens and all) and a second remove is exit 2."""
    created = add_account(rt, sandbox, stored_expires_in=0)  # due for a refresh at once
    listed = last_json(cli("accounts", "list", "--json"))
    assert [(a["name"], a["health"]) for a in listed] == [("creator", "refresh_due")]
    assert listed[0]["access_expires_in_s"] <= 0 and listed[0]["refresh_expires_in_s"] > 0

    media_id = ingest_video(source=str(clip))["media_id"]
    sandbox.state.revoke_token(created["refresh_token"])
    with pytest.raises(AuthorizationRevokedError):
        publish_media(media_id=media_id, account="creator")
    result = cli("accounts", "list", "--json")
    [health] = last_json(result)
    assert health["health"] == "refresh_failing"
    assert health["last_refresh_error"].startswith("invalid_grant:")
    for secret in (created["access_token"], created["refresh_token"]):
        assert secret not in result.output

    removed = cli("accounts", "remove", "creator")
    assert removed.exit_code == 0, removed.output
    assert get_account(rt.catalog.engine, "creator") is None
    assert last_json(cli("accounts", "list", "--json")) == []
    again = cli("accounts", "remove", "creator")
    assert again.exit_code == 2 and "no_such_account" in again.stderr


def test_a_delete_that_broke_midway_is_finished_by_running_it_again(
    rt: Runtime, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails after the first object (a fault injected in the store): the media stays
    `deleting` (listed so, never published), and the same delete run again finishes it."""
    from storage.local import LocalStore

    media_id = ingest_video(source=str(clip))["media_id"]
    original, calls = LocalStore.delete, [0]

    def failing(self: LocalStore, key: str) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("disk went away")
        original(self, key)

    monkeypatch.setattr(LocalStore, "delete", failing)
    broke = cli("media", "delete", media_id, "--yes")
    assert broke.exit_code == 1 and calls[0] == 2
    listed = last_json(cli("media", "list", "--json"))["media"]
    assert [m["status"] for m in listed] == ["deleting"]
    refused = cli("publish", media_id, "--account", "creator")
    assert refused.exit_code == 2 and "media_not_found" in refused.stderr
    monkeypatch.setattr(LocalStore, "delete", original)
    done = last_json(cli("media", "delete", media_id, "--yes", "--json"))
    assert done["rows_deleted"]["media"] == 1
    assert rt.catalog.get_media(media_id) is None
    objects = rt.settings.home / "objects"
    assert objects.is_dir()
    assert not [p for p in objects.rglob("*") if p.is_file() and media_id[2:] in p.name]
