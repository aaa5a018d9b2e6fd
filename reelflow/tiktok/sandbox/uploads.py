"""Init validation and the upload sessions: what an init must say, and which chunk PUTs land.

This module owns the ``post_info``/``source_info`` rules of a video init (title length, privacy
option, the interaction and commercial-disclosure booleans, the FILE_UPLOAD chunk maths, PULL_FROM_URL's URL), upload URLs and their lifetime, the
upload files on disk, and the PUT ledger (strictly sequential ranges, on-plan chunk sizes, the
running SHA-256, the progress ``Content-Range``). It must not speak HTTP (``app`` streams the
body) or decide statuses after the last byte (``status``), and it keeps its own chunk rules,
never ``reelflow.tiktok.plan``'s: an emulator that shares the client's rules shares its bugs.
"""

from __future__ import annotations

import random
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelflow.tiktok.sandbox.accounts import URL_UNVERIFIED
from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import SandboxError, invalid
from reelflow.tiktok.sandbox.ledger import TERMINAL, Ledger, Publish

MAX_UPLOAD_URL_CHARS, MAX_TITLE_UTF16_UNITS = 256, 2200
# post_info booleans (DP). The sandbox's own spelling, never the client's constants.
POST_INFO_FLAGS = (
    "disable_comment",
    "disable_duet",
    "disable_stitch",
    "brand_content_toggle",
    "brand_organic_toggle",
    "is_aigc",
)
# Which of the creator's creator_info settings each interaction flag answers to.
CREATOR_LOCKS = {
    "disable_comment": "comment_disabled",
    "disable_duet": "duet_disabled",
    "disable_stitch": "stitch_disabled",
}
VIDEO_CONTENT_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


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


@dataclass(frozen=True)
class InitRequest:
    """A video init that passed validation: its source, post options and (uploads) sizes."""

    source: str  # "FILE_UPLOAD" | "PULL_FROM_URL"
    privacy: str | None
    title: str
    sizes: tuple[Any, Any, Any]  # video_size, chunk_size, total_chunk_count as sent
    flags: dict[str, bool] | None = None  # the post_info booleans, absent ones false


def validate_post_flags(
    post_info: Mapping[str, Any], privacy: str, creator: Mapping[str, bool]
) -> dict[str, bool]:
    """The post_info booleans, checked; absent ones are false (the [U] lenient reading of
    ``brand_content_toggle``'s "required").

    400 ``invalid_params`` for a non-boolean, for an interaction the creator turned off
    (``creator``: creator_info's ``*_disabled``) sent as allowed, and for branded content
    posted ``SELF_ONLY``; how TikTok itself answers the last two is not documented, so the
    sandbox takes the strict reading a client must satisfy anyway (TikTok's UX rules).
    """
    flags: dict[str, bool] = {}
    for key in POST_INFO_FLAGS:
        value = post_info.get(key, False)
        if not isinstance(value, bool):
            raise invalid(f"The {key} is invalid")
        flags[key] = value
    for key, lock in CREATOR_LOCKS.items():
        if creator.get(lock) and not flags[key]:
            raise invalid(f"The {key} is invalid: the creator has {lock}")
    if flags["brand_content_toggle"] and privacy == "SELF_ONLY":
        raise invalid("Branded content visibility cannot be set to private")
    return flags


def validate_init(
    body: dict[str, Any],
    *,
    mode: str,
    privacy_options: tuple[str, ...],
    gates: Mapping[str, bool],
    config: SandboxConfig,
    creator: Mapping[str, bool] | None = None,
) -> InitRequest:
    """Check an init body (``mode`` "direct" or "inbox"): ``post_info`` first, then the source.

    ``creator``: the account's creator_info ``*_disabled`` settings (Direct Post checks them).
    """
    privacy, title, flags = None, "", None
    if mode == "direct":  # inbox ignores post_info, as TikTok silently does
        post_info = body.get("post_info")
        post_info = post_info if isinstance(post_info, dict) else {}
        privacy, title = post_info.get("privacy_level"), post_info.get("title") or ""
        if privacy not in privacy_options:
            message = "privacy_level is not among the creator's options"
            raise SandboxError(403, "privacy_level_option_mismatch", message)
        if not isinstance(title, str):
            raise invalid("The title is invalid")
        if len(title.encode("utf-16-le")) // 2 > MAX_TITLE_UTF16_UNITS:
            raise invalid("The title is too long")
        flags = validate_post_flags(post_info, privacy, creator or {})
    src = body.get("source_info")
    src = src if isinstance(src, dict) else {}
    source = src.get("source")
    sizes = (src.get("video_size"), src.get("chunk_size"), src.get("total_chunk_count"))
    if source == "FILE_UPLOAD":
        message = validate_chunk_plan(*sizes, config)
        if message:
            raise invalid(message)
    elif source == "PULL_FROM_URL":
        url = src.get("video_url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise invalid("The video url is invalid")
        if gates[URL_UNVERIFIED]:
            raise SandboxError(403, URL_UNVERIFIED, "Verify the URL's domain first")
    else:
        raise invalid("The source is invalid")
    return InitRequest(source, privacy, title, sizes, flags)


@dataclass
class PutPlan:
    """A PUT that passed header validation: where its bytes go and the hash so far (a copy)."""

    publish_id: str
    path: Path
    start: int
    length: int
    hasher: Any


def content_range(pub: Publish) -> str:
    """The progress header: which bytes of ``pub`` the sandbox holds."""
    # [U] MT's "bytes 0-{UPLOADED_BYTES}/{TOTAL}" is read as the last received byte index;
    # with nothing received there is no such index, so RFC 9110's "bytes */TOTAL" is sent.
    if pub.received == 0:
        return f"bytes */{pub.video_size}"
    return f"bytes 0-{pub.received - 1}/{pub.video_size}"


class UploadSessions:
    """Upload URLs by ``upload_id``, their files in ``upload_dir``, and the chunk PUT rules."""

    processing_delay_s: float
    url_ttl_s: float

    def __init__(
        self,
        config: SandboxConfig,
        upload_dir: Path,
        ledger: Ledger,
        *,
        rng: random.Random,
        clock: Clock,
        lock: threading.RLock,
    ) -> None:
        self._config = config
        self.upload_dir = upload_dir
        self._ledger = ledger
        self._rng = rng
        self._clock = clock
        self._lock = lock
        self.reset()

    def reset(self) -> None:
        """Forget every session, remove the uploaded files, restore the configured timings."""
        with self._lock:
            for path in self.upload_dir.glob("*.bin"):
                path.unlink(missing_ok=True)
            self.processing_delay_s = self._config.processing_delay_s
            self.url_ttl_s = self._config.upload_url_ttl_s  # applies to URLs issued from then on
            self.uploads: dict[str, str] = {}  # upload_id -> publish_id

    def open(self, pub: Publish, sizes: tuple[Any, Any, Any], upload_base: str) -> str:
        """Start ``pub``'s upload: an empty file and the upload URL the init answers with."""
        with self._lock:
            pub.video_size, pub.chunk_size, pub.total_chunk_count = (int(v or 0) for v in sizes)
            pub.upload_id = str(self._rng.randrange(10**11, 10**12))
            pub.upload_token = secrets.token_urlsafe(24)
            pub.upload_expires_at = self._clock.now() + self.url_ttl_s
            pub.path = self.upload_dir / f"{pub.upload_id}.bin"
            pub.path.write_bytes(b"")
            self.uploads[pub.upload_id] = pub.publish_id
            query = f"upload_id={pub.upload_id}&upload_token={pub.upload_token}"
            upload_url = f"{upload_base.rstrip('/')}/upload/video/?{query}"
            assert len(upload_url) <= MAX_UPLOAD_URL_CHARS, "upload_url too long"
            return upload_url

    def expire_all_now(self) -> None:
        with self._lock:
            now = self._clock.now()
            for pub in self._ledger.publishes.values():
                pub.upload_expires_at = min(pub.upload_expires_at, now)

    def begin_put(self, upload_id: str, upload_token: str, headers: Mapping[str, str]) -> PutPlan:
        """Validate a chunk PUT's URL and headers against the session; nothing is recorded yet."""
        with self._lock:
            pub = self._ledger.publishes.get(self.uploads.get(upload_id, ""))
            if pub is None or not secrets.compare_digest(pub.upload_token, upload_token):
                raise SandboxError(404, "invalid_params", "No upload task matches this URL")
            progress = {"Content-Range": content_range(pub)}

            def bad(message: str, status: int = 400) -> SandboxError:
                return SandboxError(status, "invalid_file_upload", message, progress)

            if self._clock.now() >= pub.upload_expires_at:
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
            pub = self._ledger.publishes[plan.publish_id]
            if pub.received != plan.start or pub.status in TERMINAL:
                raise SandboxError(416, "invalid_file_upload", "The upload moved on meanwhile")
            pub.received += plan.length
            pub.hasher = hasher
            pub.puts_accepted += 1
            if pub.received < pub.video_size:
                return 206, content_range(pub)
            pub.sha256 = hasher.hexdigest()
            pub.ready_at = self._clock.now() + self.processing_delay_s
            return 201, content_range(pub)
