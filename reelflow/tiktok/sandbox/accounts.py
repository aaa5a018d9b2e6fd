"""Creator accounts: who can post, their privacy options, policy gates and posting caps.

This module owns :class:`Account`, the policy switches (each named after the error code it
forces), the admin actions on accounts, the ``creator_info`` answer and the posting-gate rule an
init must pass. It must not know about tokens (``oauth``) or publishes beyond the count of recent
ones it is handed, and must not share rules with the client's ``reelflow.tiktok.plan``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from reelflow.tiktok.sandbox.errors import SandboxError, invalid

SCOPE_PUBLISH, SCOPE_UPLOAD = "video.publish", "video.upload"
DEFAULT_SCOPES = ("user.info.basic", SCOPE_PUBLISH, SCOPE_UPLOAD)
PUBLIC_OPTIONS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
PRIVATE_OPTIONS = ("FOLLOWER_OF_CREATOR", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
# Policy switches, named after the error code each one forces (all off by default).
BANNED, TOO_MANY_POSTS = "spam_risk_user_banned_from_posting", "spam_risk_too_many_posts"
USER_CAP, PENDING_SHARE = "reached_active_user_cap", "spam_risk_too_many_pending_share"
URL_UNVERIFIED = "url_ownership_unverified"
POLICY_GATES = (BANNED, TOO_MANY_POSTS, USER_CAP, PENDING_SHARE, URL_UNVERIFIED)
PRIVACIES = frozenset({"public", "private"})
DAY_S = 86400.0  # the caps count the posts of the last 24 hours


@dataclass
class Account:
    open_id: str
    name: str
    scopes: tuple[str, ...]
    privacy: str = "public"
    audited: bool = True
    max_video_post_duration_sec: int = 600
    comment_disabled: bool = False
    duet_disabled: bool = False
    stitch_disabled: bool = False
    daily_post_cap: int | None = None  # e.g. 15 ("typically around 15 posts per day")
    pending_share_cap: int | None = None  # e.g. 5 (UP: at most 5 pending shares per 24 h)
    gates: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(POLICY_GATES, False))


def privacy_options(account: Account) -> tuple[str, ...]:
    """The ``privacy_level`` values this creator may post with."""
    return PUBLIC_OPTIONS if account.privacy == "public" else PRIVATE_OPTIONS


def check_gates(account: Account, mode: str, recent: int) -> None:
    """Refuse an init the account may not make; ``recent``: its live ``mode`` posts in DAY_S."""
    gates = account.gates
    cap = account.daily_post_cap if mode == "direct" else account.pending_share_cap
    over_cap = cap is not None and recent >= cap
    if gates[BANNED]:
        raise SandboxError(403, BANNED, "The user is banned from posting")
    if mode == "inbox" and (gates[PENDING_SHARE] or over_cap):
        raise SandboxError(403, PENDING_SHARE, "Too many pending shares in 24 hours")
    if mode == "direct" and (gates[TOO_MANY_POSTS] or over_cap):
        raise SandboxError(403, TOO_MANY_POSTS, "The daily post cap is reached")
    if mode == "direct" and gates[USER_CAP]:
        raise SandboxError(403, USER_CAP, "The client's active-creator quota is reached")
    # The check is on the *account* (brightbean #144): even SELF_ONLY is refused.
    if mode == "direct" and not account.audited and account.privacy != "private":
        code = "unaudited_client_can_only_post_to_private_accounts"
        raise SandboxError(403, code, "Unaudited clients can only post to private accounts")


class AccountBook:
    """Every account by ``open_id``, with the admin actions that create and change them."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.accounts: dict[str, Account] = {}

    def get(self, open_id: str) -> Account:
        if open_id not in self.accounts:
            raise SandboxError(404, "invalid_params", f"unknown account {open_id}")
        return self.accounts[open_id]

    def create(
        self,
        name: str,
        privacy: str,
        audited: bool,
        scopes: list[str] | tuple[str, ...],
        max_video_post_duration_sec: int,
    ) -> Account:
        if privacy not in PRIVACIES:
            raise invalid("privacy must be 'public' or 'private'")
        with self._lock:
            account = Account(
                open_id=f"-000{secrets.token_hex(12)}",
                name=name,
                scopes=tuple(scopes),
                privacy=privacy,
                audited=bool(audited),
                max_video_post_duration_sec=int(max_video_post_duration_sec),
                duet_disabled=privacy == "private",  # CI: duet/stitch are off for private accounts
                stitch_disabled=privacy == "private",
            )
            self.accounts[account.open_id] = account
            return account

    def set_policy(self, open_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Flip policy gates and account settings (privacy, audited, caps, duration...)."""
        settable = {f.name for f in fields(Account)} - {"open_id", "name", "scopes", "gates"}
        if set(changes) - settable - set(POLICY_GATES):
            raise invalid(f"unknown policy keys: {sorted(set(changes) - settable)}")
        if changes.get("privacy", "public") not in PRIVACIES:
            raise invalid("privacy must be 'public' or 'private'")
        with self._lock:
            account = self.get(open_id)
            for key, value in changes.items():
                if key in POLICY_GATES:
                    account.gates[key] = bool(value)
                else:
                    setattr(account, key, value)
            return asdict(account)

    def creator_info(self, open_id: str) -> dict[str, Any]:
        """The ``creator_info`` data, or the 200-status refusals TikTok answers it with."""
        with self._lock:
            account = self.get(open_id)
            for code in (TOO_MANY_POSTS, BANNED, USER_CAP):
                if account.gates[code]:  # CI: "200 (intentional)" for these three
                    raise SandboxError(200, code, "The creator cannot post right now.")
            return {
                "creator_avatar_url": f"https://sandbox.invalid/avatar/{account.open_id}.jpeg",
                "creator_username": account.name,
                "creator_nickname": account.name.title(),
                "privacy_level_options": list(privacy_options(account)),
                "comment_disabled": account.comment_disabled,
                "duet_disabled": account.duet_disabled,
                "stitch_disabled": account.stitch_disabled,
                "max_video_post_duration_sec": account.max_video_post_duration_sec,
            }
