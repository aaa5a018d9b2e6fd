"""What the tasks of one publish run share: :class:`PublishContext`, and how a run opens one.

The context holds the runtime, the TikTok client and the account's :class:`TokenManager`, the
secret box, the run's handle on the shared rate limits, and the session's upload URL once it is
decrypted. It is a plain class so Prefect never walks into it, and its ``repr`` (which appears in
Prefect's task-run logs) names the account only.

Must not: call TikTok itself, or put a token or an upload URL anywhere but in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from reelflow.errors import IntegrityCheckError
from reelflow.tiktok.client import TikTokClient
from reelflow.tiktok.plan import DEFAULT_PREFERRED_CHUNK_BYTES
from reelflow.tiktok.tokens import TokenManager
from storage.accounts import AccountTokenStore
from storage.clock import utcnow
from storage.crypto import SecretBox, secret_box
from storage.publishing import get_publish
from storage.runtime import Runtime
from tasks.tiktok_limits import RateLimits, guard_http_debug_logs


class PublishContext:
    """What the tasks of one publish run share; a plain class so Prefect never walks into it."""

    def __init__(
        self,
        rt: Runtime,
        client: TikTokClient,
        tokens: TokenManager,
        box: SecretBox,
        *,
        preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES,
    ) -> None:
        self.rt, self.client, self.tokens, self.box = rt, client, tokens, box
        self.preferred_chunk_bytes = preferred_chunk_bytes
        self.limits = RateLimits(rt.settings.tiktok_rate_window_s)
        self._upload_urls: dict[str, str] = {}
        guard_http_debug_logs()

    def take_rate_slot(self, kind: str) -> None:
        """Block until TikTok's ``kind`` limit for this account has room (shared by all runs)."""
        self.limits.take(kind, rate_key=self.tokens.rate_key, account=self.tokens.name)

    def upload_url(self, row_id: str, publish_id: str) -> str:
        """The session's upload URL, decrypted once per run (never a task parameter)."""
        url = self._upload_urls.get(publish_id)
        if url is None:
            row = get_publish(self.rt.catalog.engine, row_id)
            if row is None or row.publish_id != publish_id or not row.upload_url_enc:
                raise IntegrityCheckError(f"publish {row_id} is no longer session {publish_id}")
            url = self._upload_urls[publish_id] = self.box.open(row.upload_url_enc)
        return url

    def __repr__(self) -> str:  # appears in Prefect's task-run logs: no secrets
        return f"PublishContext(account={self.tokens.name!r})"


@contextmanager
def open_publish_context(
    rt: Runtime, account: str, *, preferred_chunk_bytes: int = DEFAULT_PREFERRED_CHUNK_BYTES
) -> Iterator[PublishContext]:
    """A context for ``account`` with its own TikTok client (closed on leaving).

    The client's own pooled session already streams chunk bodies in large blocks
    (:func:`reelflow.tiktok.client.build_session`), so a publish needs no session of its own.
    """
    settings = rt.settings
    box = secret_box(settings)
    with TikTokClient(
        settings.tiktok_api_base,
        client_key=settings.tiktok_client_key,
        client_secret=settings.tiktok_client_secret.get_secret_value(),
    ) as client:
        tokens = TokenManager(
            client, AccountTokenStore(rt.catalog.engine, box), account, clock=utcnow
        )
        yield PublishContext(rt, client, tokens, box, preferred_chunk_bytes=preferred_chunk_bytes)
