"""The seams between layers: TokenManager over any account store, the catalog's account store,
and the catalog queries the janitor uses instead of its own SQL."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from reelflow.settings import Settings
from reelflow.tiktok.client import TikTokClient
from reelflow.tiktok.sandbox import RunningSandbox
from reelflow.tiktok.tokens import StoredTokens, TokenManager
from storage.accounts import AccountTokenStore, save_account
from storage.catalog import Catalog, make_engine
from storage.crypto import SecretBox
from storage.leases import Leases
from tests.support.rows import upload_session

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Plain:
    """A secret kept in memory, as a store that does not encrypt would keep it."""

    value: str = field(repr=False)

    def reveal(self) -> str:
        return self.value


class MemoryAccounts:
    """An account store with no database: what TokenManager needs and nothing more."""

    def __init__(self, name: str, tokens: StoredTokens) -> None:
        self.rows = {name: tokens}
        self.saved: list[dict[str, Any]] = []

    def load(self, name: str) -> StoredTokens | None:
        return self.rows.get(name)

    def save_refreshed(self, name: str, **kw: Any) -> None:
        self.saved.append(kw)
        old = self.rows[name]
        self.rows[name] = replace(
            old,
            access_token=Plain(kw["access_token"]),
            refresh_token=Plain(kw["refresh_token"]) if kw["refresh_token"] else old.refresh_token,
            access_expires_at=kw["now"] + timedelta(seconds=kw["expires_in"]),
            access_lifetime_s=kw["expires_in"],
            token_version=old.token_version + 1,
        )


def _client(sb: RunningSandbox) -> TikTokClient:
    settings = Settings()
    return TikTokClient(
        sb.base_url,
        client_key=settings.tiktok_client_key,
        client_secret=settings.tiktok_client_secret.get_secret_value(),
    )


def _stored(created: dict[str, Any], *, expires_at: datetime) -> StoredTokens:
    return StoredTokens(
        open_id=created["open_id"],
        scopes=created["scope"],
        access_token=Plain(created["access_token"]),
        refresh_token=Plain(created["refresh_token"]),
        access_expires_at=expires_at,
        access_lifetime_s=created["expires_in"],
        refresh_expires_at=None,
        token_version=1,
    )


def test_token_manager_refreshes_through_any_account_store(sandbox: RunningSandbox) -> None:
    """An expired token is refreshed at TikTok and written back through the store it was given,
    at the time of the clock it was given."""
    created = sandbox.state.create_account("creator")
    store = MemoryAccounts("creator", _stored(created, expires_at=NOW - timedelta(seconds=1)))
    with _client(sandbox) as client:
        tokens = TokenManager(client, store, "creator", clock=lambda: NOW)
        fresh = tokens.access_token()
    assert fresh != created["access_token"]
    assert [s["now"] for s in store.saved] == [NOW]
    assert store.saved[0]["access_token"] == fresh
    assert tokens.open_id == created["open_id"]


def test_live_token_is_handed_out_without_a_refresh(sandbox: RunningSandbox) -> None:
    """A token outside its refresh-ahead margin is returned as stored; nothing is written."""
    created = sandbox.state.create_account("creator")
    store = MemoryAccounts("creator", _stored(created, expires_at=NOW + timedelta(hours=1)))
    with _client(sandbox) as client:
        tokens = TokenManager(client, store, "creator", clock=lambda: NOW)
        assert tokens.access_token() == created["access_token"]
    assert store.saved == []


def test_catalog_account_store_seals_tokens_and_gives_aware_times(tmp_path: Path) -> None:
    """The catalog's store hands out aware UTC expiries (SQLite keeps naive ones) and tokens
    that show in no repr and open only on reveal(); an unknown name is None."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    box = SecretBox(Fernet.generate_key())
    save_account(
        engine,
        box,
        "creator",
        access_token="act.secret-access",
        refresh_token="rft.secret-refresh",
        expires_in=3600,
        refresh_expires_in=86400,
        now=NOW,
    )
    store = AccountTokenStore(engine, box)
    stored = store.load("creator")
    assert stored is not None and store.load("nobody") is None
    assert stored.access_expires_at == NOW + timedelta(seconds=3600)
    assert stored.access_expires_at.tzinfo is not None
    assert stored.refresh_expires_at == NOW + timedelta(seconds=86400)
    shown = repr(stored) + repr(store) + repr(stored.access_token)
    assert "secret" not in shown
    assert stored.access_token.reveal() == "act.secret-access"
    assert stored.refresh_token.reveal() == "rft.secret-refresh"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_catalog_lists_sessions_and_the_ones_live_runs_hold(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """list_sessions returns every session; live_session_ids only those under an unexpired,
    owned lease (what the janitor must leave alone)."""
    url = (
        f"sqlite:///{tmp_path / 'c.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    catalog = Catalog(make_engine(url))
    ids = [f"seam_{backend}_{i}_{id(catalog)}" for i in range(2)]
    for sid in ids:
        catalog.save_session(upload_session(sid, 1, source_uri=f"/{sid}.mp4", fingerprint=sid))
    leases = Leases(catalog.engine, ttl_s=600)
    fence = leases.acquire(f"lease_{ids[0]}", "run-a")
    assert fence is not None
    leases.attach_session(fence, ids[0])
    assert set(ids) <= {s.id for s in catalog.list_sessions()}
    now = datetime.now(UTC)
    assert ids[0] in catalog.live_session_ids(now) and ids[1] not in catalog.live_session_ids(now)
    assert ids[0] not in catalog.live_session_ids(now + timedelta(seconds=601))  # lapsed
    leases.release(fence.name, "run-a")
    assert ids[0] not in catalog.live_session_ids(now)
