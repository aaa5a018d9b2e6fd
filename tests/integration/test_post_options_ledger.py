"""Post options kept by the catalog (SQLite and PostgreSQL): the publish ledger's options, a
scheduled post's options, and the columns added to a catalog made before they existed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from reelflow.ingest_options import check_publish_request
from reelflow.publish_rules import PostOptions
from storage.catalog import Catalog, make_engine
from storage.clock import utcnow
from storage.publishing import find_or_make_publish
from storage.schedule import queue_publish, queued_request, schedule_id

POST = PostOptions(disable_stitch=True, brand_content_toggle=True)


def test_a_publish_row_gives_its_post_options_back(catalog: Catalog) -> None:
    """The ledger row's request is the request it was made for, post options included; the
    same media and account asked again (other options) is the same publish."""
    request = check_publish_request("creator", "direct", "PUBLIC_TO_EVERYONE", "hi", post=POST)
    row = find_or_make_publish(catalog.engine, "m_1", 1000, request)
    assert row.request() == request
    plain = check_publish_request("creator", "direct", "PUBLIC_TO_EVERYONE", "hi")
    assert find_or_make_publish(catalog.engine, "m_1", 1000, plain).id == row.id


def test_a_scheduled_post_keeps_its_options(catalog: Catalog) -> None:
    """Queued with post options, publish-due gets them back; queued again they are replaced."""
    due = utcnow() + timedelta(hours=1)
    kwargs = {
        "media_id": "m_2",
        "account": "creator",
        "mode": "direct",
        "privacy": "PUBLIC_TO_EVERYONE",
        "caption": None,
        "due_at": due,
    }
    row = queue_publish(catalog.engine, **kwargs, post=POST)  # type: ignore[arg-type]
    assert queued_request(row).post == POST
    moved = queue_publish(catalog.engine, **kwargs, post=PostOptions())  # type: ignore[arg-type]
    assert moved.id == row.id and queued_request(moved).post == PostOptions()


def test_again_ids_without_post_options_are_unchanged() -> None:
    """Rows queued before post options existed keep their ids (no options: same hash input)."""
    request = check_publish_request("a", "direct", "SELF_ONLY", "x", again=True)
    with_post = check_publish_request(
        "a", "direct", "SELF_ONLY", "x", again=True, post=PostOptions(disable_comment=True)
    )
    assert schedule_id("m", request) != schedule_id("m", with_post)
    assert schedule_id("m", request).startswith("spa_")


def test_an_older_catalog_gets_the_new_columns(tmp_path: Path) -> None:
    """A catalog whose scheduled_publish and tiktok_account predate the new columns: opening
    it adds them, and the old rows read as 'no options' / 'no refresh yet'."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    with old.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE scheduled_publish (id VARCHAR PRIMARY KEY, media_id VARCHAR, "
                "account VARCHAR, mode VARCHAR, privacy VARCHAR, caption VARCHAR, due_at "
                "TIMESTAMP, status VARCHAR, attempts INTEGER, claimed_by VARCHAR, last_error "
                "VARCHAR, result_json VARCHAR, created_at TIMESTAMP, updated_at TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE tiktok_account (id INTEGER PRIMARY KEY, name VARCHAR UNIQUE, "
                "open_id VARCHAR, scopes VARCHAR, access_token_enc VARCHAR, refresh_token_enc "
                "VARCHAR, access_expires_at TIMESTAMP, access_lifetime_s INTEGER, "
                "refresh_expires_at TIMESTAMP, token_version INTEGER, created_at TIMESTAMP, "
                "updated_at TIMESTAMP)"
            )
        )
    old.dispose()
    engine = make_engine(url)
    columns = {
        t: {c["name"] for c in inspect(engine).get_columns(t)}
        for t in ("scheduled_publish", "tiktok_account")
    }
    assert "post_options_json" in columns["scheduled_publish"]
    assert {"last_refresh_at", "last_refresh_error", "last_refresh_error_at"} <= columns[
        "tiktok_account"
    ]
    make_engine(url)  # a second open adds nothing twice


def test_token_health_words() -> None:
    """ok / refresh_due / refresh_failing / expired, from the expiries and the last refreshes;
    a good refresh after a refused one clears the failing state."""
    from storage.accounts import Account, token_health

    now = utcnow()

    def account(**kw: object) -> Account:
        fields: dict[str, object] = {
            "name": "a",
            "access_token_enc": "",
            "refresh_token_enc": "",
            "access_expires_at": now + timedelta(hours=1),
            "access_lifetime_s": 7200,
            "refresh_expires_at": now + timedelta(days=30),
        }
        fields.update(kw)
        return Account(**fields)  # type: ignore[arg-type]

    assert token_health(account(), now)["health"] == "ok"
    assert token_health(account(access_expires_at=now), now)["health"] == "refresh_due"
    failed = account(last_refresh_error="invalid_grant: x", last_refresh_error_at=now)
    assert token_health(failed, now)["health"] == "refresh_failing"
    recovered = account(
        last_refresh_error="invalid_grant: x",
        last_refresh_error_at=now - timedelta(minutes=5),
        last_refresh_at=now,
    )
    assert token_health(recovered, now)["health"] == "ok"
    expired = token_health(account(refresh_expires_at=now - timedelta(seconds=1)), now)
    assert expired["health"] == "expired" and expired["refresh_expires_in_s"] == -1
    unknown = token_health(account(refresh_expires_at=None), now)
    assert unknown["refresh_expires_in_s"] is None and unknown["health"] == "ok"
