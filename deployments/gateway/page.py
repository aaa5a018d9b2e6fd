"""The creator's upload page: ``GET /`` and its static files under ``GET /static/``.

The page (deployments/gateway/web/index.html, app.js, app.css) is plain JavaScript around
tus-js-client's browser bundle, which ``make js`` brings from npm at the version of
web/package-lock.json into web/static/vendor/tus.min.js (git-ignored: the lock pins it, the
build copies it). Without it the page says so instead of failing silently.

* ``GET /``: the page, with its settings (the chunk size of each PATCH, the caption limit,
  the modes) in a JSON data block; ``no-store`` and a strict Content-Security-Policy (scripts,
  styles, requests and images only from this origin; no inline script, no eval).
* ``GET /?token=<bearer>``: exchanged at once for the session cookie and answered 303 to ``/``,
  so the token stays in neither the address bar nor the history (the exchange itself is
  :func:`deployments.gateway.auth.session_redirect`); a bad token gets the page with the
  reason, 401, and no cookie.
* ``GET /static/...``: the files of web/static (Starlette's StaticFiles: no path outside it).

The page then authenticates every request with the cookie (same origin, SameSite=Strict): the
token is never held by page script.

Must not: log the token, echo it into the page, or serve anything outside web/static.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from deployments.gateway.auth import authenticate, session_redirect
from deployments.gateway.base import GatewayBase, gateway_log
from reelflow.gateway_tokens import Claims
from reelflow.ingest_options import INGEST_MODES
from reelflow.publish_rules import DEFAULT_PRIVACY, MAX_CAPTION_UTF16_UNITS, PRIVACY_LEVELS
from reelflow.tus import TusError

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
TUS_BUNDLE = STATIC_DIR / "vendor" / "tus.min.js"
CONFIG_MARKER = "<!--config-->"
# Everything from this origin: the thumbnail too (/uploads/{id}/thumbnail); blob: for the
# <video> that reads the picked file's duration.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def request_claims(gateway: GatewayBase, request: Request) -> Claims:
    """The claims of a request to a page route: the bearer header, else the session cookie;
    401 when neither is there or valid (:func:`deployments.gateway.auth.authenticate`)."""
    return authenticate(request.headers, gateway.secret, now=gateway.now())


def page_config(gateway: GatewayBase) -> dict[str, Any]:
    """What the page's script needs to know of this gateway (no secret, nothing per user)."""
    settings = gateway.settings
    return {
        "endpoint": "/uploads/",
        "chunk_size_bytes": settings.gateway_page_chunk_bytes,
        "max_size_bytes": settings.gateway_max_size_bytes,
        "max_caption_utf16": MAX_CAPTION_UTF16_UNITS,
        "privacy_levels": list(PRIVACY_LEVELS),
        "default_privacy": DEFAULT_PRIVACY,
        "modes": list(INGEST_MODES),
        "client_installed": TUS_BUNDLE.is_file(),
    }


def render_page(template: str, config: dict[str, Any], *, notice: str | None = None) -> str:
    """``template`` with ``config`` in its JSON data block (``<`` escaped, so nothing in it can
    close the script element) and an optional notice (HTML-escaped)."""
    data = json.dumps({**config, "notice": notice}).replace("<", "\\u003c")
    block = f'<script type="application/json" id="config">{data}</script>'
    if notice:
        block += f'\n<p class="notice" role="alert">{html.escape(notice)}</p>'
    return template.replace(CONFIG_MARKER, block, 1)


class UploadPage:
    """``GET /`` over one app's gateway."""

    def __init__(self, gateway: GatewayBase) -> None:
        self.gateway = gateway
        self.template = (WEB_DIR / "index.html").read_text(encoding="utf-8")

    def _page(self, *, status: int = 200, notice: str | None = None) -> Response:
        body = render_page(self.template, page_config(self.gateway), notice=notice)
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    async def index(self, request: Request) -> Response:
        if "token" not in request.query_params:
            return self._page()
        try:
            response = session_redirect(request, self.gateway.secret, now=self.gateway.now())
        except TusError as exc:
            if exc.status != 401:
                raise
            gateway_log().info("page_token_refused", reason=exc.reason)
            return self._page(status=401, notice=f"The token of that link was refused: {exc}")
        gateway_log().info("page_session_started")
        return response


def page_routes(gateway: GatewayBase) -> list[BaseRoute]:
    """``GET /`` and ``/static/``."""
    page = UploadPage(gateway)
    return [
        Route("/", page.index, methods=["GET"], name="page"),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
