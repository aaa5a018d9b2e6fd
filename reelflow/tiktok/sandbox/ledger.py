"""The publish ledger: every publish the sandbox accepted, by ``publish_id``, and how it reads.

This module owns :class:`Publish` (one row per init, carrying its upload session and status),
the status vocabulary (:data:`DONE`, :data:`TERMINAL`), publish ids, ownership checks and the
``stats()`` description of a row. It must not move a publish between statuses (``status``) or
validate chunks (``uploads``); it only stores and finds rows.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.errors import SandboxError

PREFIXES = {  # (mode, source) -> publish_id prefix, as in the DP/UP/GS examples
    ("direct", "FILE_UPLOAD"): "v_pub_file~v2-1.",
    ("inbox", "FILE_UPLOAD"): "v_inbox_file~v2.",
    ("direct", "PULL_FROM_URL"): "v_pub_url~v2-1.",
    ("inbox", "PULL_FROM_URL"): "v_inbox_url~v2.",
}
MAX_PUBLISH_ID_CHARS = 64
DONE = frozenset({"PUBLISH_COMPLETE", "SEND_TO_USER_INBOX"})
TERMINAL = DONE | {"FAILED"}
_UNDESCRIBED = {"grant_id", "upload_token", "hasher", "probing", "received", "path"}  # stats()


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
    post_flags: dict[str, bool] | None = None  # Direct Post's post_info booleans, as accepted
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


def describe(pub: Publish) -> dict[str, Any]:
    """A publish as ``stats()`` shows it: no secrets or internals, bytes and path readable."""
    described = {f.name: getattr(pub, f.name) for f in fields(pub) if f.name not in _UNDESCRIBED}
    path = str(pub.path) if pub.path else None
    return {**described, "uploaded_bytes": pub.received, "path": path}


class Ledger:
    """The publishes by id; ids are drawn from the shared generator so a seed replays them."""

    def __init__(self, rng: random.Random, clock: Clock, lock: threading.RLock) -> None:
        self._rng = rng
        self._clock = clock
        self._lock = lock
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.publishes: dict[str, Publish] = {}

    def all(self) -> list[Publish]:
        with self._lock:
            return list(self.publishes.values())

    def new(
        self,
        *,
        open_id: str,
        grant_id: int,
        mode: str,
        source: str,
        privacy: str | None,
        title: str,
        post_flags: dict[str, bool] | None = None,
    ) -> Publish:
        with self._lock:
            publish_id = ""
            while not publish_id or publish_id in self.publishes:
                publish_id = PREFIXES[(mode, source)] + str(self._rng.randrange(10**17, 10**18))
            assert len(publish_id) <= MAX_PUBLISH_ID_CHARS
            pub = Publish(publish_id, mode, source, open_id, grant_id, self._clock.now())
            pub.privacy_level, pub.title = privacy, title
            pub.post_flags = dict(post_flags) if post_flags is not None else None
            self.publishes[publish_id] = pub
            return pub

    def owned(self, open_id: str, body: Any) -> Publish:
        """The publish a status/cancel body names, if ``open_id`` owns it."""
        publish_id = body.get("publish_id") if isinstance(body, dict) else None
        with self._lock:
            pub = self.publishes.get(publish_id) if isinstance(publish_id, str) else None
            if pub is None:
                raise SandboxError(400, "invalid_publish_id", "The publish_id does not exist")
            if pub.open_id != open_id:
                code = "token_not_authorized_for_specified_publish_id"
                raise SandboxError(400, code, "The token may not read this publish_id")
            return pub

    def recent(self, open_id: str, mode: str, since: float) -> int:
        """How many of ``open_id``'s ``mode`` publishes since ``since`` have not failed."""
        with self._lock:
            return sum(  # failed posts are neither posted nor pending
                p.open_id == open_id and p.mode == mode and p.created_at > since
                for p in self.publishes.values()
                if p.status != "FAILED"
            )

    def described(self) -> Mapping[str, dict[str, Any]]:
        with self._lock:
            return {pid: describe(p) for pid, p in self.publishes.items()}
