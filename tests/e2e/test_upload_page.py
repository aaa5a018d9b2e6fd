"""The upload page in a real headless browser: Debian's Chromium, driven by Playwright.

Every part is real: ``reelflow gateway`` as its own process (moto's S3, a SQLite catalog, the
TikTok sandbox over HTTP, the account added with ``reelflow accounts add --code``), the page's
own tus-js-client bundle (``make js``), a real ffmpeg clip. The browser opens the link with
``?token=``, which becomes the session cookie; it fills the form (caption counted in UTF-16,
privacy from creator_info), picks the file and uploads it in small chunks. Half-way the page
is reloaded; the same file is picked again and the upload continues from the server's offset
(no new creation, the first PATCH at that offset, only the rest of the bytes sent), then the
page follows the pipeline's stages over SSE to the TikTok post. A screenshot of the finished
page is saved under the test's basetemp and, when REELFLOW_SCREENSHOT_DIR is set, there too.

The only thing the test adds to the system is a delay on each PATCH (a Playwright route, in
the browser), so that the upload has a middle to reload in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from deployments.gateway.page import TUS_BUNDLE
from reelflow.tiktok.sandbox import RunningSandbox
from tests.support.catalog_rows import catalog_row
from tests.support.files import sha256_file
from tests.support.gateway import GatewayProcess, GatewaySetup, auth
from tests.support.prefect_server import BIN, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MIB = 2**20
PART_BYTES = 5 * MIB
PAGE_CHUNK_BYTES = 512 * 1024  # each PATCH of the page: ~25 of them for the clip
PATCH_DELAY_S = 0.25  # per PATCH, in the browser: a middle to reload in, ~6 s in all
RELOAD_AT = 0.3  # of the file's bytes sent
ACCOUNT = "studio"
OWNER = "creator-page"
CAPTION = "Harbour at dawn 🌅 — first light #reelflow"
REQUEST_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
UI_TIMEOUT_MS = 30_000
UPLOAD_TIMEOUT_MS = 120_000
# From the last byte: the gateway's run (its own Prefect API), store, publish and status polls.
PUBLISHED_TIMEOUT_MS = 300_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = "upload-page.png"


# ----- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, s3_server: Any, bucket: str, sandbox: RunningSandbox) -> GatewaySetup:
    return GatewaySetup(
        home=tmp_path / "home",
        store_url=f"s3://{bucket}/media",
        s3_endpoint_url=s3_server.endpoint_url,
        extra_env={
            "REELFLOW_GATEWAY_PART_SIZE_BYTES": str(PART_BYTES),
            "REELFLOW_GATEWAY_PAGE_CHUNK_BYTES": str(PAGE_CHUNK_BYTES),
            "REELFLOW_TIKTOK_API_BASE": sandbox.base_url,
        },
    )


@pytest.fixture
def gateway(setup: GatewaySetup) -> Iterator[GatewayProcess]:
    with setup.running("gw") as gw:
        yield gw


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (no browser of Playwright's own)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make chromium` (Debian's chromium)")
    if not TUS_BUNDLE.is_file():
        pytest.fail("tus-js-client's browser bundle is not built: run `make js`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


# ----- helpers ----------------------------------------------------------------------------------


def add_account_with_cli(setup: GatewaySetup, sandbox: RunningSandbox, name: str) -> None:
    reply = httpx.post(
        f"{sandbox.base_url}/_sandbox/accounts", json={"name": name}, timeout=REQUEST_TIMEOUT_S
    )
    assert reply.status_code == 200, reply.text
    done = subprocess.run(
        [str(BIN / "reelflow"), "accounts", "add", name, "--code", reply.json()["auth_code"]],
        env=setup.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def logs(setup: GatewaySetup) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(setup.home.rglob("*.log"))
    )


class Wire:
    """The tus requests the page sends (method, path, Upload-Offset, body bytes), in order."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int | None, int]] = []

    def on_request(self, request: Any) -> None:
        path = urlsplit(request.url).path
        if not path.startswith("/uploads"):
            return
        headers = request.headers
        offset = headers.get("upload-offset")
        body = request.post_data_buffer if request.method in ("PATCH", "POST") else None
        self.requests.append(
            (request.method, path, int(offset) if offset else None, len(body or b""))
        )

    def of(self, method: str) -> list[tuple[str, str, int | None, int]]:
        return [r for r in self.requests if r[0] == method]


def slow_patches(route: Any) -> None:
    if route.request.method == "PATCH":
        time.sleep(PATCH_DELAY_S)
    route.continue_()


def fill_form(page: Any, clip: Path) -> None:
    page.wait_for_selector("#app:not([hidden])", timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("#creator:text-matches('^posting as @')", timeout=UI_TIMEOUT_MS)
    page.select_option("#account", ACCOUNT)
    page.fill("#caption", CAPTION)
    page.select_option("#mode", "direct")
    page.select_option("#privacy", "SELF_ONLY")
    page.check("#disable_stitch")
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#start:not([disabled])", timeout=UI_TIMEOUT_MS)


def sent_at_least(page: Any, n: int, timeout_s: float) -> None:
    """Wait (bounded) until the page says it has sent ``n`` bytes. Polled from here: the
    page's CSP (no eval) forbids Playwright's in-page predicate functions."""
    deadline = time.monotonic() + timeout_s
    while int(page.get_attribute("#job", "data-sent") or 0) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not send {n} bytes in {timeout_s:.0f}s")
        page.wait_for_timeout(50)


def save_screenshot(page: Any, basetemp: Path) -> Path:
    shot = basetemp / SCREENSHOT
    page.screenshot(path=str(shot), full_page=True)
    extra = os.environ.get("REELFLOW_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(extra) / SCREENSHOT)
    return shot


# ----- the test ---------------------------------------------------------------------------------


def test_page_upload_survives_a_reload_and_follows_the_pipeline_to_the_post(
    setup: GatewaySetup,
    gateway: GatewayProcess,
    sandbox: RunningSandbox,
    browser: Any,
    clips: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Token link → cookie; the form offers the creator's privacy levels and counts the caption
    in UTF-16; an upload reloaded half-way resumes from the server's offset when the same file
    is picked again (one creation, no byte sent twice), and the page shows the stages live
    up to the TikTok post; the stored video is the file, byte for byte."""
    add_account_with_cli(setup, sandbox, ACCOUNT)
    clip: Path = clips.medium()
    size = clip.stat().st_size
    sha = sha256_file(clip)
    token = setup.token(OWNER, accounts=(ACCOUNT,))
    info = httpx.get(
        f"{gateway.base_url}/accounts/{ACCOUNT}/creator_info",
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert info.status_code == 200, info.text

    context = browser.new_context(viewport={"width": 900, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    wire = Wire()
    page.on("request", wire.on_request)
    page.route("**/uploads/**", slow_patches)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

    # The link with the token: exchanged for the cookie, and gone from the address bar.
    page.goto(f"{gateway.base_url}/?token={token}")
    assert page.url == f"{gateway.base_url}/", page.url
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["reelflow_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict", session
    assert session["value"] != token
    assert page.evaluate("document.cookie") == ""  # HttpOnly: page script cannot read it

    fill_form(page, clip)
    offered = page.eval_on_selector_all("#privacy option", "os => os.map(o => o.value)")
    assert offered == info.json()["privacy_level_options"], offered
    units = page.get_attribute("#caption-count", "data-units")
    assert units == str(len(CAPTION.encode("utf-16-le")) // 2) != str(len(CAPTION)), units

    page.click("#start")
    sent_at_least(page, int(size * RELOAD_AT), UPLOAD_TIMEOUT_MS / 1000)
    upload_id = page.get_attribute("#job", "data-upload-id")
    assert upload_id, "the page never learned its upload's URL"
    assert page.get_attribute("#job", "data-resumed") == "false"
    page.reload()

    # The server's offset now: what the page must continue from.
    head = httpx.head(f"{gateway.uploads_url}{upload_id}", headers=auth(token), timeout=30)
    assert head.status_code == 200, head.text
    offset = int(head.headers["Upload-Offset"])
    assert 0 < offset < size, (offset, size)
    before = len(wire.requests)

    fill_form(page, clip)
    row = page.locator(f'#uploads li[data-upload-id="{upload_id}"]')
    assert "continue" in row.inner_text(), row.inner_text()
    page.click("#start")
    page.wait_for_selector("#job[data-resumed=true]", state="attached", timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("#job[data-received=true]", state="attached", timeout=UPLOAD_TIMEOUT_MS)
    assert page.get_attribute("#job", "data-upload-id") == upload_id

    # On the wire after the reload: no creation, a HEAD, then PATCHes from that offset on.
    after = wire.requests[before:]
    assert [r for r in after if r[0] == "POST"] == [], after
    assert ("HEAD", f"/uploads/{upload_id}") in [(m, p) for m, p, *_ in after], after
    patches = [r for r in after if r[0] == "PATCH"]
    assert patches and all(p[1] == f"/uploads/{upload_id}" for p in patches), patches
    assert patches[0][2] == offset, (patches[0], offset)
    assert sum(p[3] for p in patches) == size - offset, (patches, size, offset)
    assert len(wire.of("POST")) == 1, wire.of("POST")

    # The stages, live, up to the post.
    try:
        page.wait_for_selector(
            "body[data-stage=published], body[data-stage=failed], body[data-stage=cancelled]",
            state="attached",
            timeout=PUBLISHED_TIMEOUT_MS,
        )
    finally:
        shot = save_screenshot(page, tmp_path_factory.getbasetemp())
    stage = page.get_attribute("body", "data-stage")
    assert stage == "published", f"{stage}: {page.inner_text('#job')}\n{console}\n{logs(setup)}"
    assert page.get_attribute("#post", "data-status") == "PUBLISH_COMPLETE"
    assert page.locator("#thumb").is_visible()
    assert page.evaluate("document.getElementById('thumb').naturalWidth") > 0
    done = page.eval_on_selector_all("#stages li.done", "ls => ls.map(l => l.dataset.stage)")
    assert done[0] == "receiving" and done[-1] == "published", done
    assert shot.stat().st_size > 10_000

    # The stored video is the file: the resumed bytes went where they belong.
    row_ = catalog_row(setup.settings().resolved_database_url, "gateway_upload", "id", upload_id)
    assert row_ is not None and row_["state"] == "stored", row_
    assert row_["sha256"] == sha, (row_, sha)
    pageerrors = [c for c in console if c.startswith("pageerror")]
    assert pageerrors == [], pageerrors
    context.close()


def test_page_form_rules_pause_resume_and_cancel(
    setup: GatewaySetup,
    gateway: GatewayProcess,
    sandbox: RunningSandbox,
    browser: Any,
    clips: Any,
) -> None:
    """The form refuses before any byte (a caption over 2200 UTF-16 units, branded content
    that is private); Pause stops the PATCHes and Resume continues at the server's offset;
    Cancel while receiving terminates the upload on the server (404 afterwards)."""
    add_account_with_cli(setup, sandbox, ACCOUNT)
    clip: Path = clips.medium()
    size = clip.stat().st_size
    token = setup.token(OWNER, accounts=(ACCOUNT,))
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    wire = Wire()
    page.on("request", wire.on_request)
    page.route("**/uploads/**", slow_patches)
    page.goto(f"{gateway.base_url}/?token={token}")
    fill_form(page, clip)

    # 2200 units is the limit: 1100 emoji are 2200 units (allowed), one more letter is not.
    page.fill("#caption", "🌅" * 1100)
    assert page.get_attribute("#caption-count", "data-units") == "2200"
    assert page.is_enabled("#start")
    page.fill("#caption", "🌅" * 1100 + "x")
    assert page.get_attribute("#caption-count", "data-units") == "2201"
    assert page.is_disabled("#start") and "2200" in page.inner_text("#form-error")
    page.fill("#caption", CAPTION)
    page.check("#brand_content_toggle")
    assert page.is_disabled("#start") and "private" in page.inner_text("#form-error")
    page.uncheck("#brand_content_toggle")
    assert page.is_enabled("#start")
    assert wire.of("POST") == wire.of("PATCH") == []  # nothing was sent for a refused form

    page.click("#start")
    sent_at_least(page, int(size * 0.2), UPLOAD_TIMEOUT_MS / 1000)
    upload_id = page.get_attribute("#job", "data-upload-id")
    page.click("#pause")
    page.wait_for_selector("#pause:text('Resume')")
    url = f"{gateway.uploads_url}{upload_id}"

    def server_offset() -> int:
        head = httpx.head(url, headers=auth(token), timeout=REQUEST_TIMEOUT_S)
        assert head.status_code == 200, head.text
        return int(head.headers["Upload-Offset"])

    # Paused: the PATCH in flight (if any) ends; then nothing more is sent.
    page.wait_for_timeout(int(PATCH_DELAY_S * 4 * 1000))
    paused_at, patches = server_offset(), len(wire.of("PATCH"))
    page.wait_for_timeout(int(PATCH_DELAY_S * 4 * 1000))
    assert (server_offset(), len(wire.of("PATCH"))) == (paused_at, patches)
    assert 0 < paused_at < size

    page.click("#pause")  # Resume
    sent_at_least(page, paused_at + PAGE_CHUNK_BYTES, UPLOAD_TIMEOUT_MS / 1000)
    resumed = wire.of("PATCH")[patches:]
    assert resumed and resumed[0][2] == paused_at, (resumed[:2], paused_at)
    assert len(wire.of("POST")) == 1

    page.click("#cancel")
    page.wait_for_selector("body[data-stage=cancelled]", state="attached")
    assert ("DELETE", f"/uploads/{upload_id}") in [(m, p) for m, p, *_ in wire.requests]
    gone = httpx.head(url, headers=auth(token), timeout=REQUEST_TIMEOUT_S)
    assert gone.status_code == 404, (gone.status_code, gone.headers)
    status = httpx.get(f"{url}/status", headers=auth(token), timeout=REQUEST_TIMEOUT_S)
    assert status.status_code == 200 and status.json()["stage"] == "cancelled", status.text
    context.close()
