"""The accounts a gateway token may publish to, and what TikTok lets each creator post.

Routes (bearer header or the page's session cookie, :func:`deployments.gateway.page.request_claims`):

* ``GET /accounts/`` → ``{"subject", "accounts", "max_size_bytes", "expires_at"}``: what the
  upload page needs to draw its form (the cookie is HttpOnly, so the page cannot read it).
* ``GET /accounts/{name}/creator_info`` → TikTok's ``creator_info`` fields
  (``privacy_level_options``, ``comment_disabled``, ``duet_disabled``, ``stitch_disabled``,
  ``max_video_post_duration_sec``, ``creator_nickname``, ``creator_username``). 404 unless the
  token names the account (exactly as for an account that does not exist: a token learns
  nothing about accounts it was not given) or when it is not connected here; 502 for TikTok's
  refusal (an account to reconnect), 503 for an outage (retry).

TikTok allows 20 creator_info queries a minute per user; a form that re-asks on every account
change would spend them. One answer per account is kept :data:`CREATOR_INFO_TTL_S` in this
process (so N instances ask at most N times a minute). The Prefect rate limits the publish runs
share are not taken here: the gateway may run without a Prefect API.

Must not: log or return a TikTok token; call TikTok for an account the token does not name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from deployments.gateway.base import GatewayBase, gateway_log
from deployments.gateway.page import request_claims
from reelflow.errors import ConfigurationError
from reelflow.ingest_options import ACCOUNT_NAME
from reelflow.tiktok.client import TikTokClient
from reelflow.tiktok.errors import TikTokApiError
from reelflow.tiktok.replies import CreatorInfo
from reelflow.tiktok.tokens import TokenManager
from reelflow.tus import TusError
from storage.accounts import AccountTokenStore
from storage.clock import utcnow
from storage.crypto import secret_box

CREATOR_INFO_TTL_S = 60.0
MAX_CACHED_ACCOUNTS = 1024  # a bound on the cache; an operator has far fewer accounts


@dataclass(frozen=True)
class CreatorOptions:
    """What the page shows of a creator's settings (TikTok's names)."""

    creator_username: str
    creator_nickname: str
    privacy_level_options: list[str]
    comment_disabled: bool
    duet_disabled: bool
    stitch_disabled: bool
    max_video_post_duration_sec: int | None

    @classmethod
    def of(cls, info: CreatorInfo) -> CreatorOptions:
        return cls(
            creator_username=info.creator_username,
            creator_nickname=info.creator_nickname,
            privacy_level_options=list(info.privacy_level_options),
            comment_disabled=info.comment_disabled,
            duet_disabled=info.duet_disabled,
            stitch_disabled=info.stitch_disabled,
            max_video_post_duration_sec=info.max_video_post_duration_sec,
        )


class CreatorInfoCache:
    """One answer per account for ``ttl_s`` (monotonic clock); thread-safe."""

    def __init__(self, ttl_s: float = CREATOR_INFO_TTL_S, clock: Callable[[], float] | None = None):
        self.ttl_s = ttl_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, CreatorOptions]] = {}

    def get(self, account: str) -> CreatorOptions | None:
        with self._lock:
            hit = self._answers.get(account)
            if hit is None or self._clock() - hit[0] >= self.ttl_s:
                return None
            return hit[1]

    def put(self, account: str, options: CreatorOptions) -> None:
        with self._lock:
            if len(self._answers) >= MAX_CACHED_ACCOUNTS:
                self._answers.clear()
            self._answers[account] = (self._clock(), options)


def _no_account(name: str) -> TusError:
    return TusError(404, f"no account {name}", reason="not_found")


class Accounts:
    """The ``/accounts/`` handlers of one app."""

    def __init__(self, gateway: GatewayBase, cache: CreatorInfoCache | None = None) -> None:
        self.gateway = gateway
        self.cache = cache or CreatorInfoCache()

    async def index(self, request: Request) -> Response:
        claims = request_claims(self.gateway, request)
        return JSONResponse(
            {
                "subject": claims.subject,
                "accounts": list(claims.accounts),
                "max_size_bytes": self.gateway._max_size(claims),
                "expires_at": claims.expires_at.isoformat(),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def creator_info(self, request: Request) -> Response:
        claims = request_claims(self.gateway, request)
        name = request.path_params["name"]
        if ACCOUNT_NAME.fullmatch(name) is None or name not in claims.accounts:
            raise _no_account(name)
        options = self.cache.get(name)
        if options is None:
            options = await anyio.to_thread.run_sync(self._query, name)
            self.cache.put(name, options)
        return JSONResponse(asdict(options), headers={"Cache-Control": "no-store"})

    def _query(self, name: str) -> CreatorOptions:
        """``creator_info`` for ``name`` with its stored tokens (refreshed when due)."""
        settings = self.gateway.settings
        engine = self.gateway.engine
        try:
            with TikTokClient(
                settings.tiktok_api_base,
                client_key=settings.tiktok_client_key,
                client_secret=settings.tiktok_client_secret.get_secret_value(),
            ) as client:
                try:
                    tokens = TokenManager(
                        client,
                        AccountTokenStore(engine, secret_box(settings)),
                        name,
                        clock=utcnow,
                    )
                except ConfigurationError:  # not connected on this gateway
                    raise _no_account(name) from None
                info = tokens.call(client.creator_info)
        except TikTokApiError as exc:
            gateway_log().info(
                "creator_info_failed", account=name, code=exc.code, retryable=exc.retryable
            )
            if exc.retryable:
                raise TusError(
                    503,
                    f"TikTok did not answer creator_info for {name} ({exc.code}); retry",
                    headers={"Retry-After": "5"},
                    reason="tiktok_unavailable",
                ) from None
            raise TusError(
                502,
                f"TikTok refused creator_info for {name} ({exc.code}): {exc.message}",
                reason="tiktok_refused",
            ) from None
        gateway_log().info("creator_info_read", account=name)
        return CreatorOptions.of(info)


def account_routes(gateway: GatewayBase) -> list[BaseRoute]:
    """``GET /accounts/`` and ``GET /accounts/{name}/creator_info``."""
    handlers = Accounts(gateway)
    return [
        Route("/accounts/", handlers.index, methods=["GET"]),
        Route("/accounts/{name}/creator_info", handlers.creator_info, methods=["GET"]),
    ]
