"""The sandbox's whole world behind one object: :class:`SandboxState` composes the job modules.

This module owns the wiring (one re-entrant lock, one clock and one seeded generator shared by
every part), the operations that span parts (an init crosses accounts, the ledger and uploads; a
revoke crosses tokens and statuses), reset, ``set_faults`` and ``stats``. Every rule lives in the
part that owns it; this module must not grow rules of its own, must not speak HTTP (``app`` turns
requests into these calls and errors into responses) and must not import the client's
``reelflow.tiktok.plan``. Its methods mirror the ``/_sandbox/`` admin routes and the API routes,
so tests can call or spy on them in-process.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reelflow.tiktok.sandbox.accounts import (
    DAY_S,
    DEFAULT_SCOPES,
    Account,
    AccountBook,
    check_gates,
    privacy_options,
)
from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import invalid
from reelflow.tiktok.sandbox.faults import FAULT_KEYS, FaultDice, Faults, InjectedFault
from reelflow.tiktok.sandbox.ledger import Ledger, Publish
from reelflow.tiktok.sandbox.media import ffprobe_file
from reelflow.tiktok.sandbox.oauth import AccessToken, Grant, TokenAuthority
from reelflow.tiktok.sandbox.rates import RateWindows
from reelflow.tiktok.sandbox.status import Probe, StatusMachine
from reelflow.tiktok.sandbox.uploads import PutPlan, UploadSessions, content_range, validate_init

# set_faults keys that are not dice: processing/URL timings, the seed, a one-shot URL expiry.
_RUNTIME_KEYS = frozenset(
    {"processing_delay_s", "upload_url_ttl_s", "seed", "expire_upload_urls_now"}
)


class SandboxState:
    """The sandbox's whole world, thread-safe (uvicorn's loop and the test thread share it)."""

    def __init__(
        self, config: SandboxConfig, data_dir: Path, *, probe: Probe = ffprobe_file
    ) -> None:
        self.config = config
        self.upload_dir = Path(data_dir) / "uploads"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._rng = random.Random(config.seed)  # reseeded in place, so every part keeps it
        self._clock = Clock(config.clock, self._lock)
        self._dice = FaultDice(self._rng, self._lock)
        self._accounts = AccountBook(self._lock)
        self._ledger = Ledger(self._rng, self._clock, self._lock)
        self._sessions = UploadSessions(
            config, self.upload_dir, self._ledger, rng=self._rng, clock=self._clock, lock=self._lock
        )
        self._status = StatusMachine(
            self._ledger,
            max_duration_s=lambda open_id: self._accounts.get(open_id).max_video_post_duration_sec,
            # The sandbox never fetches remote URLs; a pull times out with the upload URL's TTL.
            pull_timeout_s=lambda: self._sessions.url_ttl_s,
            probe=probe,
            rng=self._rng,
            clock=self._clock,
            lock=self._lock,
        )
        self._tokens = TokenAuthority(
            config,
            self._clock,
            self._lock,
            account=self._accounts.get,
            on_revoke=lambda grant: self._status.fail_grant(grant.grant_id),
        )
        self._rates = RateWindows(config, self._clock, self._lock)
        self.reset()

    # ----- runtime knobs and test hooks (read-only views of the parts) ------------------------

    @property
    def faults(self) -> Faults:
        return self._dice.faults

    @property
    def processing_delay_s(self) -> float:
        return self._sessions.processing_delay_s

    @property
    def upload_url_ttl_s(self) -> float:
        return self._sessions.url_ttl_s

    @property
    def accounts(self) -> dict[str, Account]:
        return self._accounts.accounts

    @property
    def _publishes(self) -> dict[str, Publish]:
        return self._ledger.publishes

    @property
    def _uploads(self) -> dict[str, str]:  # upload_id -> publish_id
        return self._sessions.uploads

    @property
    def _access(self) -> dict[str, AccessToken]:
        return self._tokens.access

    @property
    def _refresh(self) -> dict[str, Grant]:
        return self._tokens.refresh

    # ----- clock, stats, faults (mirrors of the /_sandbox/ admin routes) -----------------------

    def now(self) -> float:
        return self._clock.now()

    def advance_clock(self, seconds: float) -> dict[str, float]:
        return self._clock.advance(seconds)

    def record_call(self, key: str) -> None:
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1

    def set_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a partial fault dict (unknown keys are an error, so typos cannot pass silently)."""
        if set(changes) - FAULT_KEYS - _RUNTIME_KEYS:
            raise invalid(
                f"unknown fault keys: {sorted(set(changes) - FAULT_KEYS - _RUNTIME_KEYS)}"
            )
        with self._lock:
            self._dice.update(changes)
            if "processing_delay_s" in changes:
                self._sessions.processing_delay_s = float(changes["processing_delay_s"])
            if "upload_url_ttl_s" in changes:  # applies to URLs issued from now on
                self._sessions.url_ttl_s = float(changes["upload_url_ttl_s"])
            if "seed" in changes:
                self._rng.seed(changes["seed"])
            if changes.get("expire_upload_urls_now"):
                self._sessions.expire_all_now()
            return {
                **self._dice.settings(),
                "processing_delay_s": self.processing_delay_s,
                "upload_url_ttl_s": self.upload_url_ttl_s,
            }

    def roll_fault(self, target: str) -> InjectedFault | None:
        """Which fault, if any, strikes this request (``target``: api, oauth or upload)."""
        return self._dice.roll(target)

    def roll_drop(self) -> bool:
        return self._dice.roll_drop()

    def stats(self) -> dict[str, Any]:
        self._status.settle_all()
        with self._lock:
            return {
                "calls": dict(self._calls),
                "inits": self._inits,
                "posts": self._status.posts(),
                "faults": dict(self._dice.counts),
                "publishes": dict(self._ledger.described()),
            }

    def reset(self) -> None:
        """Forget everything, remove uploaded files, and restore the configured faults/clock."""
        with self._lock:
            self._sessions.reset()
            self._clock.reset()
            self._rng.seed(self.config.seed)
            self._dice.reset()
            self._accounts.reset()
            self._tokens.reset()
            self._ledger.reset()
            self._rates.reset()
            self._calls: dict[str, int] = {}
            self._inits = 0

    # ----- accounts and tokens (admin) --------------------------------------------------------

    def create_account(
        self,
        name: str,
        privacy: str = "public",
        audited: bool = True,
        scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
        max_video_post_duration_sec: int = 600,
    ) -> dict[str, Any]:
        """A new creator with a ready token pair and a fresh single-use auth code."""
        with self._lock:
            account = self._accounts.create(
                name, privacy, audited, scopes, max_video_post_duration_sec
            )
            tokens = self._tokens.issue_grant(account)
            return {**tokens, "auth_code": self.issue_auth_code(account.open_id)}

    def issue_auth_code(self, open_id: str, redirect_uri: str | None = None) -> str:
        return self._tokens.issue_auth_code(open_id, redirect_uri)

    def set_policy(self, open_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Flip policy gates and account settings (privacy, audited, caps, duration...)."""
        return self._accounts.set_policy(open_id, changes)

    def expire_access_token(self, token: str) -> dict[str, bool]:
        return self._tokens.expire_access_token(token)

    def revoke_token(self, token: str) -> dict[str, bool]:
        """Revoke the grant behind an access or refresh token, as a user removing the app would."""
        return self._tokens.revoke_token(token)

    # ----- OAuth ------------------------------------------------------------------------------

    def oauth_token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``POST /v2/oauth/token/``: the authorization_code and refresh_token grants."""
        return self._tokens.oauth_token(form)

    def oauth_revoke(self, form: Mapping[str, str]) -> None:
        """``POST /v2/oauth/revoke/``; unknown tokens succeed silently, as RFC 7009 asks."""
        self._tokens.oauth_revoke(form)

    # ----- API --------------------------------------------------------------------------------

    def authenticate(
        self, authorization: str | None, scopes_any: tuple[str, ...], bucket: str, route: str
    ) -> AccessToken:
        """The live token behind a Bearer header, after its scope and rate-limit checks."""
        with self._lock:
            record = self._tokens.bearer(authorization, scopes_any)
            self._rates.take(record.token, route, bucket)
            return record

    def creator_info(self, token: AccessToken) -> dict[str, Any]:
        return self._accounts.creator_info(token.open_id)

    def init_video(
        self, token: AccessToken, body: Any, *, mode: str, upload_base: str
    ) -> dict[str, Any]:
        """Direct Post (``mode="direct"``) or inbox (``"inbox"``) init; returns the ``data``."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object")
        with self._lock:
            account = self._accounts.get(token.open_id)
            since = self.now() - DAY_S
            check_gates(account, mode, self._ledger.recent(account.open_id, mode, since))
            request = validate_init(
                body,
                mode=mode,
                privacy_options=privacy_options(account),
                gates=account.gates,
                config=self.config,
                creator={
                    "comment_disabled": account.comment_disabled,
                    "duet_disabled": account.duet_disabled,
                    "stitch_disabled": account.stitch_disabled,
                },
            )
            pub = self._ledger.new(
                open_id=token.open_id,
                grant_id=token.grant.grant_id,
                mode=mode,
                source=request.source,
                privacy=request.privacy,
                title=request.title,
                post_flags=request.flags,
            )
            data: dict[str, Any] = {"publish_id": pub.publish_id}
            if request.source == "FILE_UPLOAD":
                data["upload_url"] = self._sessions.open(pub, request.sizes, upload_base)
            else:
                self._status.start_download(pub)
            self._inits += 1
            return data

    def fetch_status(self, token: AccessToken, body: Any) -> dict[str, Any]:
        return self._status.fetch(token.open_id, body)

    def cancel(self, token: AccessToken, body: Any) -> dict[str, Any]:
        """MT: only ongoing PULL_FROM_URL downloads can be cancelled."""
        return self._status.cancel(token.open_id, body)

    # ----- uploads ----------------------------------------------------------------------------

    def begin_put(self, upload_id: str, upload_token: str, headers: Mapping[str, str]) -> PutPlan:
        """Validate a chunk PUT's URL and headers against the session; nothing is recorded yet."""
        return self._sessions.begin_put(upload_id, upload_token, headers)

    def commit_put(self, plan: PutPlan, hasher: Any) -> tuple[int, str]:
        """Record a fully received chunk; returns (206 or 201, the progress Content-Range)."""
        return self._sessions.commit_put(plan, hasher)

    content_range = staticmethod(content_range)
