"""State, protocol rules and fault injection of the local TikTok Content Posting API sandbox.

This module owns everything the sandbox *decides*: accounts and their policy switches, OAuth
codes/grants/tokens, per-token sliding-window rate limits, init validation (the chunk maths), the
upload-session ledger, the publish status machine with the media checks run after upload, and the
seeded fault dice. It must not speak HTTP: ``sandbox_app`` turns requests into calls on
:class:`SandboxState` and :class:`SandboxError` / :class:`OAuthError` into responses. The only I/O
here is the upload file (created, removed) and ffprobe on a finished upload.

Rules follow the research notes (shared reference, "What a faithful emulator must enforce"). Where
those notes are uncertain ([U]) the choice made is commented at the rule.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ffmpeg

MIB = 1024 * 1024
DAY_S = 86400.0
REDIRECT_URI = "https://localhost/callback"
SCOPE_PUBLISH, SCOPE_UPLOAD = "video.publish", "video.upload"
DEFAULT_SCOPES = ("user.info.basic", SCOPE_PUBLISH, SCOPE_UPLOAD)
PUBLIC_OPTIONS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
PRIVATE_OPTIONS = ("FOLLOWER_OF_CREATOR", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
PREFIXES = {  # (mode, source) -> publish_id prefix, as in the DP/UP/GS examples
    ("direct", "FILE_UPLOAD"): "v_pub_file~v2-1.",
    ("inbox", "FILE_UPLOAD"): "v_inbox_file~v2.",
    ("direct", "PULL_FROM_URL"): "v_pub_url~v2-1.",
    ("inbox", "PULL_FROM_URL"): "v_inbox_url~v2.",
}
MAX_PUBLISH_ID_CHARS, MAX_UPLOAD_URL_CHARS, MAX_TITLE_UTF16_UNITS = 64, 256, 2200
VIDEO_CONTENT_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})
VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9"})
MIN_FPS, MAX_FPS = 23.0, 60.0
MIN_SIDE_PX, MAX_SIDE_PX = 360, 4096
# Policy switches, named after the error code each one forces (all off by default).
BANNED, TOO_MANY_POSTS = "spam_risk_user_banned_from_posting", "spam_risk_too_many_posts"
USER_CAP, PENDING_SHARE = "reached_active_user_cap", "spam_risk_too_many_pending_share"
URL_UNVERIFIED = "url_ownership_unverified"
POLICY_GATES = (BANNED, TOO_MANY_POSTS, USER_CAP, PENDING_SHARE, URL_UNVERIFIED)
DONE = frozenset({"PUBLISH_COMPLETE", "SEND_TO_USER_INBOX"})
TERMINAL = DONE | {"FAILED"}
_UNDESCRIBED = {"grant_id", "upload_token", "hasher", "probing", "received", "path"}  # stats()
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
Headers = dict[str, str] | None


class SandboxError(Exception):
    """An API answer other than success: HTTP status, ``error.code``, message, extra headers."""

    def __init__(self, status: int, code: str, message: str = "", headers: Headers = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.http_status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class OAuthError(Exception):
    """An OAuth failure, answered in the flat ``{error, error_description, log_id}`` shape."""

    def __init__(self, http_status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.http_status, self.error, self.description = http_status, error, description


@dataclass
class SandboxConfig:
    """Everything fixed when the sandbox starts; faults and policies change later at runtime."""

    client_key: str = "reelflow-sandbox-client"
    client_secret: str = "reelflow-sandbox-secret"
    redirect_uri: str = REDIRECT_URI
    # [U] "MB" is undocumented; binary MiB by default, configurable (e.g. decimal) per test.
    min_chunk_bytes: int = 5 * MIB
    max_chunk_bytes: int = 64 * MIB
    max_final_chunk_bytes: int = 128 * MIB
    max_video_bytes: int = 4 * 1024 * MIB
    max_chunk_count: int = 1000
    # Older pages: 24 h / 365 d; newer pages: 2 h / 180 d with rotation. Both are configurable.
    access_expires_in: int = 86400
    refresh_expires_in: int = 31536000
    rotate_refresh: bool = True
    # [U] OA: refresh tokens last 365 d "after the initial issuance", so a refresh keeps the
    # original deadline unless this is set.
    refresh_resets_expiry: bool = False
    auth_code_ttl_s: float = 600.0
    upload_url_ttl_s: float = 3600.0
    processing_delay_s: float = 0.5
    rate_limits: dict[str, int] = field(
        default_factory=lambda: {"init": 6, "creator_info": 20, "status": 30}
    )
    rate_limit_window_s: float = 60.0
    # [U] OAuth error statuses are undocumented: None answers RFC 6749 statuses (400; 401 for
    # invalid_client); set e.g. 200 to check that a client keys on the body, not the status.
    oauth_error_status: int | None = None
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic


@dataclass
class Faults:
    """Runtime fault dice. One roll per request picks error, rate_limit, lost_response or none."""

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    # The request is processed normally but answered 5xx: the client must reconcile, not repeat.
    lost_response_rate: float = 0.0
    drop_rate: float = 0.0  # PUTs only: read part of the chunk, then abort the connection
    targets: tuple[str, ...] = ("api", "upload")  # add "oauth" to fault the token endpoints


@dataclass(frozen=True)
class InjectedFault:
    kind: str  # "error" | "rate_limit" | "lost_response"
    http_status: int
    retry_after_s: int | None = None


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


@dataclass
class Grant:
    grant_id: int
    open_id: str
    scopes: tuple[str, ...]
    refresh_token: str
    refresh_expires_at: float
    revoked: bool = False


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_at: float

    @property
    def open_id(self) -> str:
        return self.grant.open_id


@dataclass
class Publish:
    publish_id: str
    mode: str  # "direct" | "inbox"
    source: str  # "FILE_UPLOAD" | "PULL_FROM_URL"
    open_id: str
    grant_id: int
    created_at: float
    privacy_level: str | None = None
    title: str = ""
    video_size: int = 0
    chunk_size: int = 0
    total_chunk_count: int = 0
    upload_id: str = ""
    upload_token: str = ""
    upload_expires_at: float = 0.0
    path: Path | None = None
    received: int = 0
    puts_accepted: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    sha256: str | None = None
    ready_at: float | None = None  # set when the last byte arrived (+ processing delay)
    probing: bool = False
    status: str = "PROCESSING_UPLOAD"
    fail_reason: str | None = None
    post_ids: list[int] = field(default_factory=list)


@dataclass
class PutPlan:
    """A PUT that passed header validation: where its bytes go and the hash so far (a copy)."""

    publish_id: str
    path: Path
    start: int
    length: int
    hasher: Any


def validate_chunk_plan(video_size: Any, chunk_size: Any, count: Any, cfg: SandboxConfig) -> str:
    """The ``invalid_params`` message for a FILE_UPLOAD init, or "" when the numbers are valid."""
    for value, what in ((video_size, "video size"), (chunk_size, "chunk size")):
        if type(value) is not int or value <= 0:  # bool is an int subclass: reject it too
            return f"The {what} is invalid"
    if type(count) is not int or count <= 0:
        return "The total chunk count is invalid"
    if video_size > cfg.max_video_bytes:
        return "The video size is invalid"
    if video_size < cfg.min_chunk_bytes:  # small files go whole, in one chunk
        if chunk_size != video_size:
            return "The chunk size is invalid"
        return "" if count == 1 else "The total chunk count is invalid"
    if not cfg.min_chunk_bytes <= chunk_size <= cfg.max_chunk_bytes or chunk_size > video_size:
        return "The chunk size is invalid"
    expected = video_size // chunk_size  # floor: the remainder rides on the last chunk
    last = video_size - (expected - 1) * chunk_size
    # A single chunk above max_chunk, or a final chunk above its cap, is a chunk-size error
    # (AutoPromote report: a 158 MB single chunk got "The chunk size is invalid").
    if last > cfg.max_final_chunk_bytes or (expected == 1 and video_size > cfg.max_chunk_bytes):
        return "The chunk size is invalid"
    if count != expected or not 1 <= expected <= cfg.max_chunk_count:
        return "The total chunk count is invalid"
    return ""


def _rate(text: Any) -> float:
    num, _, den = str(text or "0/0").partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def check_media(probe: Mapping[str, Any], max_duration_s: float) -> str | None:
    """The documented ``fail_reason`` for a probed upload, or None when TikTok would accept it."""
    fmt = probe.get("format") or {}
    names = set(str(fmt.get("format_name", "")).split(","))
    video = next((s for s in probe.get("streams", []) if s.get("codec_type") == "video"), None)
    if video is None or not names & {"mov", "mp4", "webm"}:
        return "file_format_check_failed"
    codec = video.get("codec_name")
    # ffprobe names Matroska and WebM alike; a "webm" carrying H.264/HEVC is really MKV.
    if codec not in VIDEO_CODECS or ("webm" in names and codec not in {"vp8", "vp9"}):
        return "file_format_check_failed"
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        return "picture_size_check_failed"
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    if not MIN_FPS <= fps <= MAX_FPS:
        return "frame_rate_check_failed"
    duration = float(fmt.get("duration") or video.get("duration") or 0.0)
    if duration <= 0:
        return "file_format_check_failed"
    return "duration_check_failed" if duration > max_duration_s else None


def ffprobe_file(path: Path) -> Mapping[str, Any] | None:
    """ffprobe's JSON for ``path``, or None when ffprobe cannot read it as media."""
    try:
        result: Mapping[str, Any] = ffmpeg.probe(str(path))
    except ffmpeg.Error:
        return None
    return result


def new_log_id() -> str:
    """A log id shaped like TikTok's: UTC timestamp then 20 upper-case hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(10).upper()


def _invalid(message: str) -> SandboxError:
    return SandboxError(400, "invalid_params", message)


class SandboxState:
    """The sandbox's whole world, thread-safe (uvicorn's loop and the test thread share it)."""

    faults: Faults
    processing_delay_s: float
    upload_url_ttl_s: float

    def __init__(
        self,
        config: SandboxConfig,
        data_dir: Path,
        *,
        probe: Callable[[Path], Mapping[str, Any] | None] = ffprobe_file,
    ) -> None:
        self.config = config
        self.upload_dir = Path(data_dir) / "uploads"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._probe = probe
        self._lock = threading.RLock()
        self.reset()

    # ----- clock, stats, faults (mirrors of the /_sandbox/ admin routes) -----------------------

    def now(self) -> float:
        return self.config.clock() + self._offset_s

    def advance_clock(self, seconds: float) -> dict[str, float]:
        with self._lock:
            self._offset_s += float(seconds)
            return {"offset_s": self._offset_s}

    def record_call(self, key: str) -> None:
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1

    def set_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a partial fault dict (unknown keys are an error, so typos cannot pass silently)."""
        known = {f.name for f in fields(Faults)}
        extra = {"processing_delay_s", "upload_url_ttl_s", "seed", "expire_upload_urls_now"}
        if set(changes) - known - extra:
            raise _invalid(f"unknown fault keys: {sorted(set(changes) - known - extra)}")
        with self._lock:
            for key in known & set(changes):
                value = changes[key]
                setattr(self.faults, key, tuple(value) if isinstance(value, list) else value)
            if "processing_delay_s" in changes:
                self.processing_delay_s = float(changes["processing_delay_s"])
            if "upload_url_ttl_s" in changes:  # applies to URLs issued from now on
                self.upload_url_ttl_s = float(changes["upload_url_ttl_s"])
            if "seed" in changes:
                self._rng = random.Random(changes["seed"])
            if changes.get("expire_upload_urls_now"):
                for pub in self._publishes.values():
                    pub.upload_expires_at = min(pub.upload_expires_at, self.now())
            return {
                **asdict(self.faults),
                "processing_delay_s": self.processing_delay_s,
                "upload_url_ttl_s": self.upload_url_ttl_s,
            }

    def roll_fault(self, target: str) -> InjectedFault | None:
        """Which fault, if any, strikes this request (``target``: api, oauth or upload)."""
        with self._lock:
            f = self.faults
            if target not in f.targets:
                return None
            roll = self._rng.random()
            if roll < f.error_rate:
                fault = InjectedFault("error", self._rng.choice(f.error_statuses))
            elif roll < f.error_rate + f.rate_limit_rate:
                fault = InjectedFault("rate_limit", 429, f.retry_after_s)
            elif roll < f.error_rate + f.rate_limit_rate + f.lost_response_rate:
                fault = InjectedFault("lost_response", self._rng.choice(f.error_statuses))
            else:
                return None
            self._fault_counts[fault.kind] += 1
            return fault

    def roll_drop(self) -> bool:
        with self._lock:
            drop = "upload" in self.faults.targets and self._rng.random() < self.faults.drop_rate
            self._fault_counts["drop"] += drop
            return drop

    def stats(self) -> dict[str, Any]:
        self._settle_all()
        with self._lock:
            return {
                "calls": dict(self._calls),
                "inits": self._inits,
                "posts": sum(p.status in DONE for p in self._publishes.values()),
                "faults": dict(self._fault_counts),
                "publishes": {pid: self._describe(p) for pid, p in self._publishes.items()},
            }

    def reset(self) -> None:
        """Forget everything, remove uploaded files, and restore the configured faults/clock."""
        with self._lock:
            for path in self.upload_dir.glob("*.bin"):
                path.unlink(missing_ok=True)
            self._offset_s = 0.0
            self._rng = random.Random(self.config.seed)
            self.faults = Faults()
            self.processing_delay_s = self.config.processing_delay_s
            self.upload_url_ttl_s = self.config.upload_url_ttl_s
            self.accounts: dict[str, Account] = {}
            self._codes: dict[str, tuple[str, str, float]] = {}  # code -> open_id, uri, expiry
            self._grants: list[Grant] = []
            self._refresh: dict[str, Grant] = {}  # only the live refresh token of each grant
            self._access: dict[str, AccessToken] = {}
            self._publishes: dict[str, Publish] = {}
            self._uploads: dict[str, str] = {}  # upload_id -> publish_id
            self._windows: dict[tuple[str, str], deque[float]] = {}
            self._calls: dict[str, int] = {}
            self._fault_counts = {"error": 0, "rate_limit": 0, "lost_response": 0, "drop": 0}
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
        if privacy not in {"public", "private"}:
            raise _invalid("privacy must be 'public' or 'private'")
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
            tokens = self._issue_grant(account)
            return {**tokens, "auth_code": self.issue_auth_code(account.open_id)}

    def issue_auth_code(self, open_id: str, redirect_uri: str | None = None) -> str:
        with self._lock:
            self._account(open_id)
            code = secrets.token_urlsafe(24)
            uri = redirect_uri or self.config.redirect_uri
            self._codes[code] = (open_id, uri, self.now() + self.config.auth_code_ttl_s)
            return code

    def set_policy(self, open_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Flip policy gates and account settings (privacy, audited, caps, duration...)."""
        settable = {f.name for f in fields(Account)} - {"open_id", "name", "scopes", "gates"}
        if set(changes) - settable - set(POLICY_GATES):
            raise _invalid(f"unknown policy keys: {sorted(set(changes) - settable)}")
        if changes.get("privacy", "public") not in {"public", "private"}:
            raise _invalid("privacy must be 'public' or 'private'")
        with self._lock:
            account = self._account(open_id)
            for key, value in changes.items():
                if key in POLICY_GATES:
                    account.gates[key] = bool(value)
                else:
                    setattr(account, key, value)
            return asdict(account)

    def expire_access_token(self, token: str) -> dict[str, bool]:
        with self._lock:
            if token not in self._access:
                raise SandboxError(404, "invalid_params", "unknown access token")
            self._access[token].expires_at = self.now()
            return {"expired": True}

    def revoke_token(self, token: str) -> dict[str, bool]:
        """Revoke the grant behind an access or refresh token, as a user removing the app would."""
        with self._lock:
            grant = self._refresh.get(token) or getattr(self._access.get(token), "grant", None)
            if grant is None:
                return {"revoked": False}
            grant.revoked = True
            self._refresh.pop(grant.refresh_token, None)
            for pub in self._publishes.values():
                if pub.grant_id == grant.grant_id and pub.status not in TERMINAL:
                    self._finish(pub, "FAILED", "auth_removed")  # ST: revoked mid-flight
            return {"revoked": True}

    # ----- OAuth ------------------------------------------------------------------------------

    def oauth_token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``POST /v2/oauth/token/``: the authorization_code and refresh_token grants."""
        with self._lock:
            self._check_client(form)
            grant_type, now = form.get("grant_type", ""), self.now()
            if grant_type == "authorization_code":
                entry = self._codes.pop(form.get("code", ""), None)  # single use, even on failure
                if entry is None or entry[2] <= now:
                    raise self._oauth(400, "invalid_grant", "Authorization code is expired.")
                if form.get("redirect_uri", "") != entry[1]:
                    raise self._oauth(400, "invalid_grant", "Redirect URI does not match.")
                return self._issue_grant(self._account(entry[0]))
            if grant_type == "refresh_token":
                grant = self._refresh.get(form.get("refresh_token", ""))
                if grant is None or grant.revoked or grant.refresh_expires_at <= now:
                    raise self._oauth(400, "invalid_grant", "Refresh token is invalid or expired.")
                if self.config.refresh_resets_expiry:
                    grant.refresh_expires_at = now + self.config.refresh_expires_in
                if self.config.rotate_refresh:
                    # [U] whether the old token keeps working is undocumented; here it dies.
                    del self._refresh[grant.refresh_token]
                    grant.refresh_token = f"rft.{secrets.token_urlsafe(32)}"
                    self._refresh[grant.refresh_token] = grant
                return self._token_response(grant, self._new_access(grant))
            if not grant_type:
                raise self._oauth(400, "invalid_request", "grant_type is required.")
            raise self._oauth(400, "unsupported_grant_type", f"Unsupported grant {grant_type!r}.")

    def oauth_revoke(self, form: Mapping[str, str]) -> None:
        """``POST /v2/oauth/revoke/``; unknown tokens succeed silently, as RFC 7009 asks."""
        with self._lock:
            self._check_client(form)
            if not form.get("token"):
                raise self._oauth(400, "invalid_request", "token is required.")
            self.revoke_token(form["token"])

    # ----- API --------------------------------------------------------------------------------

    def authenticate(
        self, authorization: str | None, scopes_any: tuple[str, ...], bucket: str, route: str
    ) -> AccessToken:
        """The live token behind a Bearer header, after its scope and rate-limit checks."""
        scheme, _, value = (authorization or "").partition(" ")
        with self._lock:
            record = self._access.get(value.strip()) if scheme.lower() == "bearer" else None
            if record is None or record.expires_at <= self.now() or record.grant.revoked:
                raise SandboxError(401, "access_token_invalid", "The access token is invalid.")
            if not set(scopes_any) & set(record.grant.scopes):
                needed = " or ".join(scopes_any)
                raise SandboxError(401, "scope_not_authorized", f"The token lacks {needed}.")
            limit = self.config.rate_limits.get(bucket)
            if limit is not None:
                self._take_rate(record.token, route, limit)
            return record

    def creator_info(self, token: AccessToken) -> dict[str, Any]:
        with self._lock:
            account = self._account(token.open_id)
            for code in (TOO_MANY_POSTS, BANNED, USER_CAP):
                if account.gates[code]:  # CI: "200 (intentional)" for these three
                    raise SandboxError(200, code, "The creator cannot post right now.")
            return {
                "creator_avatar_url": f"https://sandbox.invalid/avatar/{account.open_id}.jpeg",
                "creator_username": account.name,
                "creator_nickname": account.name.title(),
                "privacy_level_options": list(self._privacy_options(account)),
                "comment_disabled": account.comment_disabled,
                "duet_disabled": account.duet_disabled,
                "stitch_disabled": account.stitch_disabled,
                "max_video_post_duration_sec": account.max_video_post_duration_sec,
            }

    def init_video(
        self, token: AccessToken, body: Any, *, mode: str, upload_base: str
    ) -> dict[str, Any]:
        """Direct Post (``mode="direct"``) or inbox (``"inbox"``) init; returns the ``data``."""
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object")
        with self._lock:
            account = self._account(token.open_id)
            self._check_gates(account, mode)
            privacy, title = None, ""
            if mode == "direct":  # inbox ignores post_info, as TikTok silently does
                post_info = body.get("post_info")
                post_info = post_info if isinstance(post_info, dict) else {}
                privacy, title = post_info.get("privacy_level"), post_info.get("title") or ""
                if privacy not in self._privacy_options(account):
                    message = "privacy_level is not among the creator's options"
                    raise SandboxError(403, "privacy_level_option_mismatch", message)
                if not isinstance(title, str):
                    raise _invalid("The title is invalid")
                if len(title.encode("utf-16-le")) // 2 > MAX_TITLE_UTF16_UNITS:
                    raise _invalid("The title is too long")
            src = body.get("source_info")
            src = src if isinstance(src, dict) else {}
            source = src.get("source")
            sizes = (src.get("video_size"), src.get("chunk_size"), src.get("total_chunk_count"))
            if source == "FILE_UPLOAD":
                message = validate_chunk_plan(*sizes, self.config)
                if message:
                    raise _invalid(message)
            elif source == "PULL_FROM_URL":
                url = src.get("video_url")
                if not isinstance(url, str) or not url.startswith("https://"):
                    raise _invalid("The video url is invalid")
                if account.gates[URL_UNVERIFIED]:
                    raise SandboxError(403, URL_UNVERIFIED, "Verify the URL's domain first")
            else:
                raise _invalid("The source is invalid")
            pub = self._new_publish(token, mode, source, privacy, title)
            data: dict[str, Any] = {"publish_id": pub.publish_id}
            if source == "FILE_UPLOAD":
                pub.video_size, pub.chunk_size, pub.total_chunk_count = (int(v or 0) for v in sizes)
                pub.upload_id = str(self._rng.randrange(10**11, 10**12))
                pub.upload_token = secrets.token_urlsafe(24)
                pub.upload_expires_at = self.now() + self.upload_url_ttl_s
                pub.path = self.upload_dir / f"{pub.upload_id}.bin"
                pub.path.write_bytes(b"")
                self._uploads[pub.upload_id] = pub.publish_id
                query = f"upload_id={pub.upload_id}&upload_token={pub.upload_token}"
                data["upload_url"] = f"{upload_base.rstrip('/')}/upload/video/?{query}"
                assert len(data["upload_url"]) <= MAX_UPLOAD_URL_CHARS, "upload_url too long"
            else:
                pub.status = "PROCESSING_DOWNLOAD"
            self._inits += 1
            return data

    def fetch_status(self, token: AccessToken, body: Any) -> dict[str, Any]:
        pub = self._owned_publish(token, body)
        self._settle(pub)
        with self._lock:
            data: dict[str, Any] = {"status": pub.status}
            if pub.status == "FAILED":
                data["fail_reason"] = pub.fail_reason
            data["publicaly_available_post_id"] = list(pub.post_ids)  # sic: TikTok's spelling
            pull = pub.source == "PULL_FROM_URL"
            data["downloaded_bytes" if pull else "uploaded_bytes"] = pub.received
            return data

    def cancel(self, token: AccessToken, body: Any) -> dict[str, Any]:
        """MT: only ongoing PULL_FROM_URL downloads can be cancelled."""
        pub = self._owned_publish(token, body)
        with self._lock:
            if pub.status != "PROCESSING_DOWNLOAD":
                raise SandboxError(400, "publish_not_cancellable", "The publish is not cancellable")
            self._finish(pub, "FAILED", "publish_cancelled")
            return {}

    # ----- uploads ----------------------------------------------------------------------------

    def begin_put(self, upload_id: str, upload_token: str, headers: Mapping[str, str]) -> PutPlan:
        """Validate a chunk PUT's URL and headers against the session; nothing is recorded yet."""
        with self._lock:
            pub = self._publishes.get(self._uploads.get(upload_id, ""))
            if pub is None or not secrets.compare_digest(pub.upload_token, upload_token):
                raise SandboxError(404, "invalid_params", "No upload task matches this URL")
            progress = {"Content-Range": self.content_range(pub)}

            def bad(message: str, status: int = 400) -> SandboxError:
                return SandboxError(status, "invalid_file_upload", message, progress)

            if self.now() >= pub.upload_expires_at:
                raise bad("The upload URL has expired", 403)
            if pub.status == "FAILED":  # e.g. auth_removed mid-upload: the task is gone
                raise bad("The upload task has ended", 403)
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in VIDEO_CONTENT_TYPES:
                raise bad("Content-Type must be video/mp4, video/quicktime or video/webm")
            length_text = headers.get("content-length", "")
            match = _RANGE_RE.match(headers.get("content-range", "").strip())
            if not length_text.isdigit():
                raise bad("Content-Length is missing or invalid")
            if match is None:
                raise bad("Content-Range must be 'bytes FIRST-LAST/TOTAL'")
            first, last, total = (int(g) for g in match.groups())
            if total != pub.video_size or not first <= last < total:
                raise bad("Content-Range does not fit the declared video_size")
            if last - first + 1 != int(length_text):
                raise bad("Content-Length does not match Content-Range")
            if first != pub.received:  # uploads are strictly sequential
                raise bad("Content-Range does not match the upload progress", 416)
            final = first // pub.chunk_size == pub.total_chunk_count - 1
            expected = pub.video_size - first if final else pub.chunk_size
            if last - first + 1 != expected:
                # [U] an off-plan chunk size has no documented code; 400 ("malformed") is chosen.
                raise bad(f"This chunk must be {expected} bytes")
            assert pub.path is not None
            return PutPlan(pub.publish_id, pub.path, first, expected, pub.hasher.copy())

    def commit_put(self, plan: PutPlan, hasher: Any) -> tuple[int, str]:
        """Record a fully received chunk; returns (206 or 201, the progress Content-Range)."""
        with self._lock:
            pub = self._publishes[plan.publish_id]
            if pub.received != plan.start or pub.status in TERMINAL:
                raise SandboxError(416, "invalid_file_upload", "The upload moved on meanwhile")
            pub.received += plan.length
            pub.hasher = hasher
            pub.puts_accepted += 1
            if pub.received < pub.video_size:
                return 206, self.content_range(pub)
            pub.sha256 = hasher.hexdigest()
            pub.ready_at = self.now() + self.processing_delay_s
            return 201, self.content_range(pub)

    @staticmethod
    def content_range(pub: Publish) -> str:
        # [U] MT's "bytes 0-{UPLOADED_BYTES}/{TOTAL}" is read as the last received byte index;
        # with nothing received there is no such index, so RFC 9110's "bytes */TOTAL" is sent.
        if pub.received == 0:
            return f"bytes */{pub.video_size}"
        return f"bytes 0-{pub.received - 1}/{pub.video_size}"

    # ----- internals --------------------------------------------------------------------------

    def _account(self, open_id: str) -> Account:
        if open_id not in self.accounts:
            raise SandboxError(404, "invalid_params", f"unknown account {open_id}")
        return self.accounts[open_id]

    @staticmethod
    def _privacy_options(account: Account) -> tuple[str, ...]:
        return PUBLIC_OPTIONS if account.privacy == "public" else PRIVATE_OPTIONS

    def _oauth(self, status: int, error: str, description: str) -> OAuthError:
        return OAuthError(self.config.oauth_error_status or status, error, description)

    def _check_client(self, form: Mapping[str, str]) -> None:
        secret_ok = secrets.compare_digest(form.get("client_secret", ""), self.config.client_secret)
        if form.get("client_key") != self.config.client_key or not secret_ok:
            raise self._oauth(401, "invalid_client", "Client key or secret is invalid.")

    def _issue_grant(self, account: Account) -> dict[str, Any]:
        refresh = f"rft.{secrets.token_urlsafe(32)}"
        expires_at = self.now() + self.config.refresh_expires_in
        grant = Grant(len(self._grants) + 1, account.open_id, account.scopes, refresh, expires_at)
        self._grants.append(grant)
        self._refresh[refresh] = grant
        return self._token_response(grant, self._new_access(grant))

    def _new_access(self, grant: Grant) -> AccessToken:
        token = f"act.{secrets.token_urlsafe(32)}"
        record = AccessToken(token, grant, self.now() + self.config.access_expires_in)
        self._access[token] = record
        return record

    def _token_response(self, grant: Grant, access: AccessToken) -> dict[str, Any]:
        now = self.now()
        return {
            "access_token": access.token,
            "expires_in": round(access.expires_at - now),
            "open_id": grant.open_id,
            "refresh_expires_in": max(0, round(grant.refresh_expires_at - now)),
            "refresh_token": grant.refresh_token,
            "scope": ",".join(grant.scopes),
            "token_type": "Bearer",
        }

    def _take_rate(self, token: str, route: str, limit: int) -> None:
        now, window = self.now(), self.config.rate_limit_window_s
        hits = self._windows.setdefault((token, route), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:  # rejected calls are not counted, so waiting always recovers
            retry_after = {"Retry-After": str(max(1, int(hits[0] + window - now + 0.999)))}
            message = "API rate limit was exceeded, please try again later."
            raise SandboxError(429, "rate_limit_exceeded", message, retry_after)
        hits.append(now)

    def _check_gates(self, account: Account, mode: str) -> None:
        gates, since = account.gates, self.now() - DAY_S
        recent = sum(  # failed posts are neither posted nor pending
            p.open_id == account.open_id and p.mode == mode and p.created_at > since
            for p in self._publishes.values()
            if p.status != "FAILED"
        )
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

    def _new_publish(
        self, token: AccessToken, mode: str, source: str, privacy: str | None, title: str
    ) -> Publish:
        publish_id = ""
        while not publish_id or publish_id in self._publishes:
            publish_id = PREFIXES[(mode, source)] + str(self._rng.randrange(10**17, 10**18))
        assert len(publish_id) <= MAX_PUBLISH_ID_CHARS
        pub = Publish(publish_id, mode, source, token.open_id, token.grant.grant_id, self.now())
        pub.privacy_level, pub.title = privacy, title
        self._publishes[publish_id] = pub
        return pub

    def _owned_publish(self, token: AccessToken, body: Any) -> Publish:
        publish_id = body.get("publish_id") if isinstance(body, dict) else None
        with self._lock:
            pub = self._publishes.get(publish_id) if isinstance(publish_id, str) else None
            if pub is None:
                raise SandboxError(400, "invalid_publish_id", "The publish_id does not exist")
            if pub.open_id != token.open_id:
                code = "token_not_authorized_for_specified_publish_id"
                raise SandboxError(400, code, "The token may not read this publish_id")
            return pub

    def _finish(self, pub: Publish, status: str, fail_reason: str | None = None) -> None:
        pub.status, pub.fail_reason = status, fail_reason
        if status == "PUBLISH_COMPLETE" and pub.privacy_level == "PUBLIC_TO_EVERYONE":
            # ST: ids exceed 2**53 (clients must parse losslessly); TikTok ids start with 7.
            pub.post_ids = [7 * 10**18 + self._rng.randrange(10**17, 10**18)]

    def _settle_all(self) -> None:
        with self._lock:
            publishes = list(self._publishes.values())
        for pub in publishes:
            self._settle(pub)

    def _settle(self, pub: Publish) -> None:
        """Move a finished upload (or a timed-out pull) to its terminal status once it is due."""
        with self._lock:
            now = self.now()
            pull_deadline = pub.created_at + self.upload_url_ttl_s
            if pub.status == "PROCESSING_DOWNLOAD" and now >= pull_deadline:
                # The sandbox never fetches remote URLs: pulls hit MT's one-hour download timeout.
                self._finish(pub, "FAILED", "video_pull_failed")
            if pub.status in TERMINAL or pub.ready_at is None or now < pub.ready_at or pub.probing:
                return
            pub.probing = True  # ffprobe runs outside the lock so other requests are not held
            path, max_s = pub.path, self._account(pub.open_id).max_video_post_duration_sec
        assert path is not None
        probe = self._probe(path)
        reason = "file_format_check_failed" if probe is None else check_media(probe, max_s)
        with self._lock:
            pub.probing = False
            if pub.status in TERMINAL:  # revoked while probing
                return
            success = "PUBLISH_COMPLETE" if pub.mode == "direct" else "SEND_TO_USER_INBOX"
            self._finish(pub, "FAILED" if reason else success, reason)

    @staticmethod
    def _describe(pub: Publish) -> dict[str, Any]:
        described = {
            f.name: getattr(pub, f.name) for f in fields(pub) if f.name not in _UNDESCRIBED
        }
        path = str(pub.path) if pub.path else None
        return {**described, "uploaded_bytes": pub.received, "path": path}
