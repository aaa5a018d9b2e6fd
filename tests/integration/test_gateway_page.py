"""The upload page's routes over HTTP: ``GET /`` (and ``?token=`` → cookie), ``/static/``,
``GET /accounts/`` and ``GET /accounts/{name}/creator_info`` against the TikTok sandbox.

A real uvicorn on 127.0.0.1 serves ``build_app`` (local store, SQLite catalog); the sandbox
answers creator_info over HTTP with the account's stored (encrypted) tokens. The browser side
of the page is tests/e2e/test_upload_page.py's.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from deployments.gateway.app import build_app
from deployments.gateway.page import TUS_BUNDLE, render_page
from reelflow.gateway_tokens import mint, verify
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox
from storage.runtime import Runtime
from tests.support.tiktok import add_account
from tests.support.waiting import wait_for

SECRET = "test-page-secret-" + "p" * 32
PAGE_CHUNK_BYTES = 256 * 1024
STARTUP_S = 30.0
TIMEOUT_S = 30.0
ACCOUNT = "studio"
CREATOR_INFO_CALL = "POST /v2/post/publish/creator_info/query/"  # the sandbox's call counter


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread of the test process
        pass


@dataclass
class Gw:
    base_url: str
    runtime: Runtime

    def token(self, subject: str, *, accounts: tuple[str, ...] = (), ttl_s: int = 3600) -> str:
        return mint(SECRET, subject, accounts=accounts, ttl_s=ttl_s, now=datetime.now(UTC))


@pytest.fixture
def gw(tmp_path: Path, sandbox: RunningSandbox) -> Iterator[Gw]:
    settings = Settings(
        home=tmp_path / "home",
        gateway_secret=SECRET,
        gateway_page_chunk_bytes=PAGE_CHUNK_BYTES,
        tiktok_api_base=sandbox.base_url,
    )
    runtime = Runtime.from_settings(settings)
    app = build_app(settings, runtime=runtime, handoff=_NoHandoff())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the gateway to start", timeout_s=STARTUP_S, poll_s=0.05)
    try:
        yield Gw(f"http://127.0.0.1:{port}", runtime)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


class _NoHandoff:
    def received(self, row: Any) -> None:
        raise AssertionError("no upload completes in these tests")


@pytest.fixture
def client(gw: Gw) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.base_url, timeout=TIMEOUT_S) as c:
        yield c


def page_config(body: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', body, re.S)
    assert found, body[:500]
    config: dict[str, Any] = json.loads(found.group(1))
    return config


# ----- the page --------------------------------------------------------------------------------


def test_page_is_served_with_its_settings_and_a_strict_policy(client: httpx.Client) -> None:
    """GET / is the page: no-store, a CSP allowing scripts only from itself, and the gateway's
    chunk size / caption limit in its config block; the static files it names are served."""
    reply = client.get("/")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["cache-control"] == "no-store"
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    config = page_config(reply.text)
    assert config["chunk_size_bytes"] == PAGE_CHUNK_BYTES
    assert config["max_caption_utf16"] == 2200 and config["endpoint"] == "/uploads/"
    for path in ("/static/app.js", "/static/app.css"):
        asset = client.get(path)
        assert asset.status_code == 200 and len(asset.content) > 1000, path
    assert client.get("/static/app.js").headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    if not TUS_BUNDLE.is_file():
        pytest.fail("tus-js-client's bundle is not built: run `make js`")
    assert config["client_installed"] is True
    bundle = client.get("/static/vendor/tus.min.js")
    assert bundle.status_code == 200 and b"tus" in bundle.content[:5000]


def test_static_serves_nothing_outside_its_folder(client: httpx.Client) -> None:
    """Paths that climb out of web/static (plain or encoded) are 404, never the source."""
    for path in ("/static/../page.py", "/static/%2e%2e/page.py", "/static/..%2fpage.py"):
        reply = client.get(path)
        assert reply.status_code == 404, (path, reply.status_code)
        assert b"def page_routes" not in reply.content


def test_config_block_cannot_be_closed_by_its_content() -> None:
    """A notice or value with ``</script>`` stays inside the JSON block, escaped."""
    body = render_page("<!--config-->", {"x": "</script><script>alert(1)</script>"}, notice="<b>")
    assert body.count("</script>") == 1, body
    assert "&lt;b&gt;" in body and "<b>" not in body
    assert page_config(body)["x"] == "</script><script>alert(1)</script>"


# ----- the token in the link → the session cookie ----------------------------------------------


def test_token_in_the_link_becomes_a_short_lived_cookie_and_leaves_the_url(
    gw: Gw, client: httpx.Client
) -> None:
    """GET /?token= answers 303 to / (the token is not in the Location) with an HttpOnly,
    SameSite=Strict cookie: a new JWT of the same creator that expires within 12 h, which the
    page's API calls then accept in place of the bearer header."""
    token = gw.token("creator-page", accounts=(ACCOUNT,), ttl_s=7 * 86400)
    reply = client.get("/", params={"token": token})
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/"
    assert token not in reply.headers["location"]
    cookie = reply.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path"} <= attributes, cookie
    assert "samesite=strict" in cookie.lower(), cookie
    assert "secure" not in attributes  # plain http on loopback: a Secure cookie would be lost
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert value != token
    claims = verify(SECRET, value, now=datetime.now(UTC))
    assert claims.subject == "creator-page" and claims.accounts == (ACCOUNT,)
    assert claims.expires_at <= datetime.now(UTC) + timedelta(hours=12, seconds=5)

    client.cookies.set("reelflow_session", value)
    me = client.get("/accounts/")
    assert me.status_code == 200, me.text
    assert me.json()["subject"] == "creator-page" and me.json()["accounts"] == [ACCOUNT]


def test_a_bad_token_in_the_link_gets_the_page_with_the_reason_and_no_cookie(
    gw: Gw, client: httpx.Client
) -> None:
    """A forged or expired token: 401, the page says why, no cookie, nothing of the token."""
    expired = mint(SECRET, "c", ttl_s=60, now=datetime.now(UTC) - timedelta(hours=1))
    forged = mint("another-secret-" + "x" * 32, "c", ttl_s=60, now=datetime.now(UTC))
    for token in (expired, forged, "not-a-jwt"):
        reply = client.get("/", params={"token": token})
        assert reply.status_code == 401, reply.text
        assert "set-cookie" not in reply.headers
        assert token not in reply.text
        assert "was refused" in page_config(reply.text)["notice"]


def test_accounts_need_a_token_or_a_session(client: httpx.Client) -> None:
    """Without a bearer header or a valid cookie /accounts/ answers 401."""
    assert client.get("/accounts/").status_code == 401
    client.cookies.set("reelflow_session", "x.y.z")
    assert client.get("/accounts/").status_code == 401
    assert client.get(f"/accounts/{ACCOUNT}/creator_info").status_code == 401


# ----- creator_info ----------------------------------------------------------------------------


def test_creator_info_answers_what_tiktok_says_of_the_account(
    gw: Gw, client: httpx.Client, sandbox: RunningSandbox
) -> None:
    """The sandbox's creator_info fields for an account of the token (its stored tokens are
    used); asked again within a minute, TikTok is not called a second time."""
    created = add_account(gw.runtime, sandbox, ACCOUNT, privacy="private")
    sandbox.state.set_policy(created["open_id"], {"comment_disabled": True})
    # A private account: TikTok offers followers (no "everyone") and turns duets off.
    token = gw.token("creator-ci", accounts=(ACCOUNT,))
    headers = {"Authorization": f"Bearer {token}"}

    def calls() -> int:
        stats = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=TIMEOUT_S).json()
        return int(stats["calls"].get(CREATOR_INFO_CALL, 0))

    before = calls()
    reply = client.get(f"/accounts/{ACCOUNT}/creator_info", headers=headers)
    assert reply.status_code == 200, reply.text
    info = reply.json()
    assert info["privacy_level_options"] == [
        "FOLLOWER_OF_CREATOR",
        "MUTUAL_FOLLOW_FRIENDS",
        "SELF_ONLY",
    ]
    assert info["comment_disabled"] is True and info["duet_disabled"] is True
    assert info["creator_username"] == ACCOUNT
    assert info["max_video_post_duration_sec"] == 600
    assert set(info) == {
        "privacy_level_options",
        "comment_disabled",
        "duet_disabled",
        "stitch_disabled",
        "max_video_post_duration_sec",
        "creator_nickname",
        "creator_username",
    }
    assert "token" not in reply.text
    assert calls() == before + 1
    again = client.get(f"/accounts/{ACCOUNT}/creator_info", headers=headers)
    assert again.json() == info and calls() == before + 1


def test_creator_info_is_404_for_accounts_the_token_does_not_name(
    gw: Gw, client: httpx.Client, sandbox: RunningSandbox
) -> None:
    """Another creator's account (connected here) and an account named by the token but not
    connected both answer 404, and TikTok is not asked."""
    add_account(gw.runtime, sandbox, ACCOUNT)
    other = {"Authorization": f"Bearer {gw.token('creator-x', accounts=('elsewhere',))}"}
    assert client.get(f"/accounts/{ACCOUNT}/creator_info", headers=other).status_code == 404
    missing = client.get("/accounts/elsewhere/creator_info", headers=other)
    assert missing.status_code == 404, missing.text
    stats = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=TIMEOUT_S).json()
    assert stats["calls"].get(CREATOR_INFO_CALL, 0) == 0


def test_creator_info_says_when_tiktok_refuses_the_creator(
    gw: Gw, client: httpx.Client, sandbox: RunningSandbox
) -> None:
    """A creator TikTok will not let post (spam_risk_user_banned_from_posting): 502 with
    TikTok's code, so the page can say why instead of offering a form that cannot work."""
    created = add_account(gw.runtime, sandbox, ACCOUNT)
    sandbox.state.set_policy(created["open_id"], {"spam_risk_user_banned_from_posting": True})
    headers = {"Authorization": f"Bearer {gw.token('creator-b', accounts=(ACCOUNT,))}"}
    reply = client.get(f"/accounts/{ACCOUNT}/creator_info", headers=headers)
    assert reply.status_code == 502, reply.text
    assert "spam_risk_user_banned_from_posting" in reply.text
