"""Wiring: turn ``Settings`` into the store, catalog and source reader one run uses.

Built once per flow run and passed to tasks (excluded from cache keys): no module-level clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reelflow.errors import ConfigurationError
from reelflow.settings import Settings
from reelflow.sources import SourceReader
from storage.base import ObjectStore
from storage.catalog import Catalog, make_engine
from storage.local import LocalStore
from storage.s3 import S3Store, make_s3_client


def open_store(url: str, *, s3_client: Any | None = None, presign_ttl_s: int = 3600) -> ObjectStore:
    if url.startswith("file:"):
        return LocalStore(url)
    if url.startswith("s3:"):
        if s3_client is None:
            raise ConfigurationError("an S3 store needs an S3 client")
        return S3Store(url, s3_client, presign_ttl_s=presign_ttl_s)
    raise ConfigurationError(f"unsupported REELFLOW_STORE_URL {url!r} (file:/// or s3://)")


@dataclass
class Runtime:
    settings: Settings
    store: ObjectStore
    catalog: Catalog
    sources: SourceReader

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        settings.home.mkdir(parents=True, exist_ok=True)
        pool = max(16, settings.upload_concurrency * 2)
        s3_client: Any = None

        def s3_factory() -> Any:
            nonlocal s3_client
            if s3_client is None:
                s3_client = make_s3_client(
                    endpoint_url=settings.s3_endpoint_url,
                    max_pool_connections=pool,
                    max_attempts=settings.s3_max_attempts,
                )
            return s3_client

        url = settings.resolved_store_url
        store = open_store(
            url,
            s3_client=s3_factory() if url.startswith("s3:") else None,
            presign_ttl_s=settings.presign_ttl_s,
        )
        catalog = Catalog(make_engine(settings.resolved_database_url))
        sources = SourceReader(
            s3_factory,
            presign_ttl_s=settings.presign_ttl_s,
            allowed_hosts=settings.source_allowed_hosts,
            read_deadline_s=settings.source_read_deadline_s,
        )
        return cls(settings=settings, store=store, catalog=catalog, sources=sources)

    def __repr__(self) -> str:  # shows in Prefect logs; keep it short and secret-free
        return f"Runtime(store={self.store.url!r})"
