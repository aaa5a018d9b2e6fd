"""The gateway's status API over HTTP (issue 11): status JSON, SSE with Last-Event-ID replay,
the list, the session cookie and the events token, and DELETE after the last byte.

The same in-process uvicorn as tests/integration/test_gateway_http.py (its fixtures: local
store + SQLite, moto S3 + PostgreSQL). Stage rows a worker would write are written here with
``storage.stages.record`` into the same catalog, as a worker on another machine would: the
gateway must show them from the catalog alone.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from reelflow.gateway_tokens import mint
from storage import gateway_uploads as uploads
from storage import stages
from tests.integration import test_gateway_http as gwhttp
from tests.integration.test_gateway_http import Gw, auth, create, creator, patch, upload_id_of

# The gateway fixtures of test_gateway_http (one in-process gateway per backend per module).
running_gw = gwhttp.running_gw
gw = gwhttp.gw
client = gwhttp.client

SSE_TIMEOUT_S = 30.0
MAX_EVENTS = 200


def status(client: httpx.Client, gw: Gw, upload_id: str, **headers: str) -> httpx.Response:
    return client.get(f"{gw.uploads_url}{upload_id}/status", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def events(
    gw: Gw,
    upload_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    until: str = "end",
    max_events: int = MAX_EVENTS,
) -> list[dict[str, Any]]:
    """The stream's messages ({"id", "event", "data"}) up to the first ``until`` event."""
    out: list[dict[str, Any]] = []
    url = f"{gw.uploads_url}{upload_id}/events"
    timeout = httpx.Timeout(SSE_TIMEOUT_S)
    with httpx.stream("GET", url, headers=headers, params=params, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        msg: dict[str, Any] = {}
        for line in r.iter_lines():
            if line == "":
                if "event" in msg:
                    out.append(msg)
                    if msg["event"] == until or len(out) >= max_events:
                        return out
                msg = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            if field == "data":
                msg["data"] = json.loads(value)
            elif field in ("id", "event"):
                msg[field] = value
    return out


def _received_upload(client: httpx.Client, gw: Gw, clips: Any, token: str) -> str:
    data = clips.valid().read_bytes()
    upload_id = upload_id_of(create(client, gw, token, len(data)))
    r = patch(client, f"{gw.uploads_url}{upload_id}", token, 0, data)
    assert r.status_code == 204, r.text
    return upload_id


def test_status_follows_the_bytes_and_the_stages(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """receiving with bytes/percent → validating once received → a worker's stage rows show,
    with the media id, thumbnail link and run id; another creator gets 404."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()
    upload_id = upload_id_of(create(client, gw, token, len(data)))
    half = len(data) // 2
    assert patch(client, f"{gw.uploads_url}{upload_id}", token, 0, data[:half]).status_code == 204
    s = status(client, gw, upload_id, **bearer(token)).json()
    assert s["stage"] == "receiving"
    assert (s["bytes_received"], s["size_bytes"]) == (half, len(data))
    assert s["percent"] == round(100 * half / len(data), 1)
    assert s["id"] == upload_id and s["publish"] is None and s["thumbnail_url"] is None
    assert s["event_id"] > 0  # the receiving row
    r = patch(client, f"{gw.uploads_url}{upload_id}", token, half, data[half:])
    assert r.status_code == 204
    s = status(client, gw, upload_id, **bearer(token)).json()
    assert s["stage"] == "validating" and s["percent"] == 100.0 and s["eta_s"] is None
    kinds = [row.stage for row in stages.for_run(gw.catalog.engine, upload_id)]
    assert kinds == ["receiving", "received"]
    # A worker elsewhere writes its stages into the catalog.
    engine = gw.catalog.engine
    stages.record(engine, upload_id, "validating", upload_id=upload_id, flow_run_id="run-1")
    stages.record(engine, upload_id, "stored", upload_id=upload_id, media_id="med_x")
    s = status(client, gw, upload_id, **bearer(token)).json()
    assert s["stage"] == "stored" and s["media_id"] == "med_x" and s["flow_run_id"] == "run-1"
    assert s["thumbnail_url"] == f"/uploads/{upload_id}/thumbnail"
    stages.record(engine, upload_id, "failed", upload_id=upload_id, reason="infected", message="m")
    s = status(client, gw, upload_id, **bearer(token)).json()
    assert (s["stage"], s["reason"], s["message"]) == ("failed", "infected", "m")
    assert status(client, gw, upload_id, **bearer(gw.token(creator()))).status_code == 404
    assert status(client, gw, upload_id).status_code == 401


def test_sse_replays_after_last_event_id_and_ends(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """A fresh stream starts with the current status (id = newest stage row); a reconnect with
    Last-Event-ID gets every later stage row in order with its id, then `end` at the final
    stage; a reconnect after the end is 204 (EventSource stops)."""
    token = gw.token(who := creator())
    upload_id = _received_upload(client, gw, clips, token)
    engine = gw.catalog.engine
    first = events(gw, upload_id, headers=bearer(token), max_events=1)
    assert first[0]["event"] == "status" and first[0]["data"]["stage"] == "validating"
    seen = int(first[0]["id"])
    ids = [
        stages.record(engine, upload_id, st, upload_id=upload_id, owner=who).id
        for st in ("validating", "scanning", "storing")
    ]
    stages.record(engine, upload_id, "stored", upload_id=upload_id, media_id="med_y")
    uploads.cas_update(
        engine,
        upload_id,
        uploads.get(engine, upload_id).version,
        state=uploads.STORED,  # type: ignore[union-attr]
        media_id="med_y",
    )
    got = events(gw, upload_id, headers=bearer(token) | {"Last-Event-ID": str(seen)})
    status_events = [m for m in got if m["event"] == "status"]
    assert [m["data"]["stage"] for m in status_events] == [
        "validating",
        "scanning",
        "storing",
        "stored",
    ]
    assert [int(m["id"]) for m in status_events][:3] == ids
    assert got[-1]["event"] == "end" and got[-1]["data"]["stage"] == "stored"
    again = client.get(
        f"{gw.uploads_url}{upload_id}/events",
        headers=bearer(token) | {"Last-Event-ID": status_events[-1]["id"]},
    )
    assert again.status_code == 204
    # ?last_event_id= (a page that reloads) replays the same way.
    got = events(gw, upload_id, headers=bearer(token), params={"last_event_id": str(ids[1])})
    assert [m["data"]["stage"] for m in got if m["event"] == "status"] == ["storing", "stored"]


def test_sse_progress_while_receiving(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """While bytes arrive, `progress` events (no id) carry bytes_received, a rate and an ETA;
    the last byte brings a `status` (validating) event."""
    token = gw.token(creator())
    data = clips.valid().read_bytes()
    upload_id = upload_id_of(create(client, gw, token, len(data)))
    url = f"{gw.uploads_url}{upload_id}"
    third = len(data) // 3
    got: list[dict[str, Any]] = []

    def listen() -> None:
        got.extend(events(gw, upload_id, headers=bearer(token), until="never", max_events=6))

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(1.0)
    for start in (0, third, 2 * third):
        end = len(data) if start == 2 * third else start + third
        assert patch(client, url, token, start, data[start:end]).status_code == 204
        time.sleep(0.6)
    stages.record(gw.catalog.engine, upload_id, "failed", upload_id=upload_id, reason="x")
    t.join(timeout=SSE_TIMEOUT_S)
    assert not t.is_alive()
    progress = [m for m in got if m["event"] == "progress"]
    assert progress and all("id" not in m for m in progress)
    received = [m["data"]["bytes_received"] for m in progress]
    assert received == sorted(received) and received[0] >= third
    # Two PATCHes apart: a rate from the catalog's samples, and an ETA from it.
    assert any(m["data"]["rate_bytes_s"] and m["data"]["eta_s"] is not None for m in progress)
    stage_names = [m["data"]["stage"] for m in got if m["event"] == "status"]
    assert stage_names[0] == "receiving" and "validating" in stage_names


def test_list_is_newest_first_and_paginated(gw: Gw, client: httpx.Client) -> None:
    """GET /uploads/ lists only the creator's uploads, newest first, `next` pages on."""
    who = creator()
    token = gw.token(who)
    made = [upload_id_of(create(client, gw, token, 1000)) for _ in range(5)]
    create(client, gw, gw.token(creator()), 1000)  # someone else's
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2"} | ({"before": cursor} if cursor else {})
        r = client.get(gw.uploads_url, headers=bearer(token), params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [u["id"] for u in body["uploads"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert (
        client.get(gw.uploads_url, headers=bearer(token), params={"limit": "0"}).status_code == 400
    )
    bad = client.get(gw.uploads_url, headers=bearer(token), params={"before": "!!"})
    assert bad.status_code == 400


def test_session_cookie_and_events_token(gw: Gw, client: httpx.Client) -> None:
    """POST /session sets an HttpOnly SameSite=Strict cookie that authorizes the API (tus too);
    an events token reads only its own upload's status, and is no upload credential."""
    who = creator()
    token = gw.token(who, ttl_s=600)
    r = client.post(f"{gw.base_url}/session", headers=bearer(token))
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "reelflow_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie  # plain http here
    assert r.json()["subject"] == who and 590 <= r.json()["expires_in"] <= 600
    value = r.cookies["reelflow_session"]
    client.cookies.clear()  # from here on, only what each request names
    with httpx.Client(cookies={"reelflow_session": value}) as browser:
        made = browser.post(
            gw.uploads_url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000"}
        )
        upload_id = upload_id_of(made)
        assert browser.get(f"{gw.uploads_url}{upload_id}/status").status_code == 200
        tok = browser.post(f"{gw.uploads_url}{upload_id}/events-token")
        assert tok.status_code == 200
        assert tok.json()["expires_in"] == 300
        access = tok.json()["token"]
    other = upload_id_of(create(client, gw, token, 1000))
    ok = client.get(f"{gw.uploads_url}{upload_id}/status", params={"access": access})
    assert ok.status_code == 200 and ok.json()["id"] == upload_id
    assert (
        client.get(f"{gw.uploads_url}{other}/status", params={"access": access}).status_code == 404
    )
    assert client.get(gw.uploads_url, params={"access": access}).status_code == 401
    head = client.head(f"{gw.uploads_url}{upload_id}", headers=auth(access))
    assert head.status_code == 401
    assert client.post(f"{gw.base_url}/session").status_code == 401
    forged = mint("x" * 40, who, ttl_s=60, now=datetime.now(UTC))
    with httpx.Client(cookies={"reelflow_session": forged}) as browser:
        assert browser.get(f"{gw.uploads_url}{upload_id}/status").status_code == 401


def test_session_cookie_never_outlives_its_token(gw: Gw, client: httpx.Client) -> None:
    """The cookie expires with the token when that is sooner than 12 h, else after 12 h."""
    long = gw.token(creator(), ttl_s=3 * 86400)
    r = client.post(f"{gw.base_url}/session", headers=bearer(long))
    client.cookies.clear()
    assert r.json()["expires_in"] == 12 * 3600
    gw.clock.offset = timedelta(hours=13)
    with httpx.Client(cookies={"reelflow_session": r.cookies["reelflow_session"]}) as browser:
        assert browser.get(gw.uploads_url).status_code == 401
    assert client.get(gw.uploads_url, headers=bearer(long)).status_code == 200


@pytest.mark.parametrize("state", ["received", "processing"])
def test_delete_after_the_last_byte_cancels_and_leaves_nothing(
    gw: Gw, client: httpx.Client, clips: Any, state: str
) -> None:
    """DELETE of a received (or taken, not yet storing) upload: 204, row cancelled, a
    `cancelled` stage, nothing staged left; the status says cancelled."""
    token = gw.token(creator())
    upload_id = _received_upload(client, gw, clips, token)
    engine = gw.catalog.engine
    if state == "processing":
        row = uploads.get(engine, upload_id)
        assert row is not None
        uploads.cas_update(
            engine, upload_id, row.version, state=uploads.PROCESSING, flow_run_id="r"
        )
    r = client.delete(f"{gw.uploads_url}{upload_id}", headers=auth(token))
    assert r.status_code == 204, r.text
    row = uploads.get(engine, upload_id)
    assert row is not None and row.state == uploads.CANCELLED
    gw.assert_nothing_left(upload_id)
    assert stages.latest(engine, upload_id).stage == "cancelled"  # type: ignore[union-attr]
    assert status(client, gw, upload_id, **bearer(token)).json()["stage"] == "cancelled"


def test_delete_once_stored_or_storing_is_409(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Once the run committed to storing (sha256 set) or stored: 409 naming `reelflow media
    delete`, and nothing changes."""
    token = gw.token(creator())
    upload_id = _received_upload(client, gw, clips, token)
    engine = gw.catalog.engine
    row = uploads.get(engine, upload_id)
    assert row is not None
    row = uploads.cas_update(
        engine, upload_id, row.version, state=uploads.PROCESSING, flow_run_id="r", sha256="ab"
    )
    assert row is not None
    r = client.delete(f"{gw.uploads_url}{upload_id}", headers=auth(token))
    assert r.status_code == 409 and "reelflow media delete" in r.text
    row = uploads.cas_update(engine, upload_id, row.version, state=uploads.STORED, media_id="med_z")
    r = client.delete(f"{gw.uploads_url}{upload_id}", headers=auth(token))
    assert r.status_code == 409 and "reelflow media delete med_z" in r.text
    assert uploads.get(engine, upload_id).state == uploads.STORED  # type: ignore[union-attr]


def test_get_with_a_token_sets_the_cookie_and_leaves_the_url() -> None:
    """The upload page's ``GET /?token=``: 303 to ``/`` (no token in Location), the session
    cookie set; a bad token is 401 with no cookie."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from deployments.gateway.app import _on_error
    from deployments.gateway.auth import session_redirect
    from reelflow.errors import ReelflowError

    secret = gwhttp.SECRET.encode()

    async def page(request: Request) -> Response:
        if "token" in request.query_params:
            return session_redirect(request, secret, now=datetime.now(UTC))
        return PlainTextResponse("page")

    app = Starlette(
        routes=[Route("/", page)],
        exception_handlers={ReelflowError: _on_error, Exception: _on_error},
    )
    server, thread, base = gwhttp._start(app)
    try:
        token = mint(gwhttp.SECRET, "alice", ttl_s=600, now=datetime.now(UTC))
        with httpx.Client(timeout=10) as http:
            r = http.get(f"{base}/", params={"token": token}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/"
            assert "HttpOnly" in r.headers["set-cookie"] and token not in r.headers["location"]
            assert r.cookies["reelflow_session"] != token  # a session JWT of its own
            bad = http.get(f"{base}/", params={"token": "nope"}, follow_redirects=False)
            assert bad.status_code == 401 and "set-cookie" not in bad.headers
    finally:
        server.should_exit = True
        thread.join(timeout=15)
