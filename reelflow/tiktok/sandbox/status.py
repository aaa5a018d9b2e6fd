"""The publish status machine: PROCESSING_* to PUBLISH_COMPLETE, SEND_TO_USER_INBOX or FAILED.

This module owns every status move: the lazy settle of a finished upload (media checks once the
processing delay has passed, ffprobe run outside the lock), the pull timeout, cancel, failing a
revoked grant's publishes, post ids, and the ``status/fetch`` answer. It must not accept bytes
(``uploads``) or issue tokens (``oauth``), and must not share the client's status rules.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.errors import SandboxError
from reelflow.tiktok.sandbox.ledger import DONE, TERMINAL, Ledger, Publish
from reelflow.tiktok.sandbox.media import check_media

Probe = Callable[[Path], Mapping[str, Any] | None]


class StatusMachine:
    """Moves publishes of the ledger to their terminal statuses and answers status fetches."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_duration_s: Callable[[str], float],
        pull_timeout_s: Callable[[], float],
        probe: Probe,
        rng: random.Random,
        clock: Clock,
        lock: threading.RLock,
    ) -> None:
        self._ledger = ledger
        self._max_duration_s = max_duration_s  # open_id -> the creator's max post duration
        self._pull_timeout_s = pull_timeout_s
        self._probe = probe
        self._rng = rng
        self._clock = clock
        self._lock = lock

    def fetch(self, open_id: str, body: Any) -> dict[str, Any]:
        pub = self._ledger.owned(open_id, body)
        self.settle(pub)
        with self._lock:
            data: dict[str, Any] = {"status": pub.status}
            if pub.status == "FAILED":
                data["fail_reason"] = pub.fail_reason
            data["publicaly_available_post_id"] = list(pub.post_ids)  # sic: TikTok's spelling
            pull = pub.source == "PULL_FROM_URL"
            data["downloaded_bytes" if pull else "uploaded_bytes"] = pub.received
            return data

    def cancel(self, open_id: str, body: Any) -> dict[str, Any]:
        """MT: only ongoing PULL_FROM_URL downloads can be cancelled."""
        pub = self._ledger.owned(open_id, body)
        with self._lock:
            if pub.status != "PROCESSING_DOWNLOAD":
                raise SandboxError(400, "publish_not_cancellable", "The publish is not cancellable")
            self.finish(pub, "FAILED", "publish_cancelled")
            return {}

    def start_download(self, pub: Publish) -> None:
        """A PULL_FROM_URL init starts in PROCESSING_DOWNLOAD (never fetched; see ``settle``)."""
        with self._lock:
            pub.status = "PROCESSING_DOWNLOAD"

    def fail_grant(self, grant_id: int) -> None:
        """ST: a grant revoked mid-flight fails its unfinished publishes with ``auth_removed``."""
        with self._lock:
            for pub in self._ledger.publishes.values():
                if pub.grant_id == grant_id and pub.status not in TERMINAL:
                    self.finish(pub, "FAILED", "auth_removed")

    def posts(self) -> int:
        with self._lock:
            return sum(p.status in DONE for p in self._ledger.publishes.values())

    def finish(self, pub: Publish, status: str, fail_reason: str | None = None) -> None:
        pub.status, pub.fail_reason = status, fail_reason
        if status == "PUBLISH_COMPLETE" and pub.privacy_level == "PUBLIC_TO_EVERYONE":
            # ST: ids exceed 2**53 (clients must parse losslessly); TikTok ids start with 7.
            pub.post_ids = [7 * 10**18 + self._rng.randrange(10**17, 10**18)]

    def settle_all(self) -> None:
        for pub in self._ledger.all():
            self.settle(pub)

    def settle(self, pub: Publish) -> None:
        """Move a finished upload (or a timed-out pull) to its terminal status once it is due."""
        with self._lock:
            now = self._clock.now()
            pull_deadline = pub.created_at + self._pull_timeout_s()
            if pub.status == "PROCESSING_DOWNLOAD" and now >= pull_deadline:
                # The sandbox never fetches remote URLs: pulls hit MT's one-hour download timeout.
                self.finish(pub, "FAILED", "video_pull_failed")
            if pub.status in TERMINAL or pub.ready_at is None or now < pub.ready_at or pub.probing:
                return
            pub.probing = True  # ffprobe runs outside the lock so other requests are not held
            path, max_s = pub.path, self._max_duration_s(pub.open_id)
        assert path is not None
        probe = self._probe(path)
        reason = "file_format_check_failed" if probe is None else check_media(probe, max_s)
        with self._lock:
            pub.probing = False
            if pub.status in TERMINAL:  # revoked while probing
                return
            success = "PUBLISH_COMPLETE" if pub.mode == "direct" else "SEND_TO_USER_INBOX"
            self.finish(pub, "FAILED" if reason else success, reason)
