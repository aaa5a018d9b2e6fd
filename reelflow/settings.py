"""Typed settings (env prefix ``REELFLOW_``), built once at an entry point and passed down.

Nothing here opens a connection; storage/ and reelflow.tiktok turn these values into clients.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024
DEFAULT_CHUNK_BYTES = 8 * MIB
DEFAULT_MAX_DURATION_S = 600.0  # TikTok's init endpoint accepts at most 10 minutes
GATEWAY_MAX_SIZE_BYTES = 4 * 1024 * MIB  # TikTok's limit: a larger upload could never be posted
MAX_SIZE_BYTES = GATEWAY_MAX_SIZE_BYTES  # the same limit, for every path in (CLI, S3 event, URL)


class Settings(BaseSettings):
    """Every REELFLOW_* setting, grouped by concern; each says what it does and its bounds."""

    model_config = SettingsConfigDict(env_prefix="REELFLOW_", extra="ignore")

    # --- Where state lives: working directory, object store, catalog
    home: Path = Field(default=Path(".reelflow"), description="Working directory for local state")
    store_url: str | None = Field(
        default=None, description="file:///abs/dir or s3://bucket/prefix (default: HOME/objects)"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    s3_max_attempts: int = Field(
        default=5, ge=1, le=20, description="botocore attempts per request before a task retry"
    )
    presign_ttl_s: int = Field(
        default=3600,
        ge=60,
        le=7 * 86400,
        description="Lifetime of the presigned S3 URLs ffprobe/ffmpeg read sources and stored "
        "objects through (S3 allows at most 7 days)",
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL of the catalog")
    public_base_url: str | None = Field(
        default=None,
        description="Base URL people open stored objects at (a CDN or public bucket); unset = "
        "summaries show the store URI, never a presigned URL",
    )

    # --- Ingest runs: parts, concurrency, memory, verification, leases
    chunk_size_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES,
        ge=1,
        description="Part size of a run's upload to the store (grown to S3's 5 MiB minimum and "
        "to fit 10 000 parts)",
    )
    upload_concurrency: int = Field(
        default=4, ge=1, le=64, description="UploadPart requests one run keeps on the wire"
    )
    task_window_bytes: int = Field(
        default=128 * MIB,
        ge=1,
        description="Bytes of consecutive parts one upload-window task run sends (a value at or "
        "below the chunk size means one part per task run)",
    )
    memory_budget_bytes: int = Field(
        default=1024 * MIB,
        ge=16 * MIB,
        description="Upper bound on chunk size x (concurrency + 1), the upload buffers of one run",
    )
    max_size_bytes: int = Field(
        default=MAX_SIZE_BYTES,
        ge=1,
        le=MAX_SIZE_BYTES,
        description="Largest video accepted on every path (CLI, S3 events, URLs, the gateway, "
        "whose Tus-Max-Size is the lower of this and REELFLOW_GATEWAY_MAX_SIZE_BYTES); a gateway "
        "token's max size may only lower it; at most TikTok's 4 GiB",
    )
    max_duration_s: float = Field(
        default=DEFAULT_MAX_DURATION_S,
        gt=0,
        description="Longest video accepted, in seconds (TikTok's init takes at most 600)",
    )
    verify_readback: bool | None = Field(
        default=None,
        description="Re-hash the assembled object (default: on for file://, off for s3://, "
        "where the server verifies every part's SHA-256 and the composite checksum)",
    )
    lease_wait_s: float = Field(
        default=3600, ge=0, description="How long a run waits for another run of the same source"
    )
    lease_ttl_s: float = Field(
        default=60.0,
        ge=1,
        description="A source lease lapses this long after its last heartbeat (renewed every "
        "third of it); a run that cannot renew it for this long stops (retryably)",
    )

    # --- Sources: which URL hosts, how long a read may take
    source_allowed_hosts: str = Field(
        default="",
        description="Comma-separated hosts or host:port that URL sources may reach even though "
        "they resolve to loopback, private, link-local or reserved addresses (tests, the demo)",
    )
    source_read_deadline_s: float = Field(
        default=3600.0,
        gt=0,
        description="Total time a run may spend reading one source before it fails (a slow "
        "or stalled source is not waited for forever)",
    )

    # --- Bucket events: the bridge (SQS or webhook) and what event-started runs may do
    sqs_endpoint_url: str | None = Field(
        default=None, description="SQS endpoint for the bucket-event bridge (default: the S3 one)"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Shared secret the S3 webhook bridge requires"
    )
    event_buckets: str = Field(
        default="",
        description="Comma-separated bucket or bucket/prefix list the event bridge accepts and "
        "event-started runs may read (s3:// only); empty = the bridge refuses to start",
    )
    event_accounts: str = Field(
        default="",
        description="Which TikTok accounts sidecars under a bucket/prefix may name: "
        "'bucket/prefix=acct1|acct2;bucket2=*' (unlisted = none)",
    )

    # --- Virus scanning (off unless clamd_url is set)
    clamd_url: str | None = Field(
        default=None,
        description="ClamAV daemon: unix:///path/clamd.ctl or tcp://host:port; unset = scanning off",
    )
    clamd_timeout_s: float = Field(default=120.0, gt=0, description="clamd socket timeout")

    # --- TikTok publishing: the app, its rate window, tokens at rest
    tiktok_api_base: str = Field(
        default="https://open.tiktokapis.com",
        description="TikTok's Open API (the project's sandbox in tests and the demo)",
    )
    tiktok_client_key: str = Field(
        default="reelflow-sandbox-client", description="The TikTok app's client key"
    )
    tiktok_client_secret: SecretStr = Field(
        default=SecretStr("reelflow-sandbox-secret"), description="The TikTok app's client secret"
    )
    tiktok_rate_window_s: float = Field(
        default=60.0,
        gt=0,
        description="TikTok's per-user rate-limit window (a sliding minute); change it only for "
        "a sandbox started with another window",
    )
    tiktok_window_bytes: int = Field(
        default=64 * MIB,
        ge=1,
        description="Bytes of consecutive chunks one Prefect task PUTs (at least one chunk; at "
        "most one chunk = one task per chunk); the ledger is written per chunk either way",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Key that encrypts tokens at rest (default: HOME/secret.key)"
    )

    # --- Upload gateway: `reelflow gateway`, tus 1.0 at /uploads/
    gateway_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs and verifies the gateway's bearer tokens (HS256); at least "
        "32 bytes, or the gateway refuses to start",
    )
    gateway_max_size_bytes: int = Field(
        default=GATEWAY_MAX_SIZE_BYTES,
        ge=1,
        le=GATEWAY_MAX_SIZE_BYTES,
        description="Largest upload the gateway accepts (Tus-Max-Size); a token's max size "
        "may only lower it",
    )
    gateway_upload_ttl_s: int = Field(
        default=86400,
        ge=60,
        le=30 * 86400,
        description="An unfinished upload expires this long after its creation "
        "(Upload-Expires); afterwards it answers 410 and the cleanup removes what is left",
    )
    gateway_cors_origins: str = Field(
        default="",
        description="Comma-separated browser origins allowed to upload (CORS), e.g. "
        "'https://app.example.com'; '*' allows any; empty = no CORS headers",
    )
    gateway_part_size_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES,
        ge=5 * MIB,
        le=512 * MIB,
        description="Part size the gateway stages uploads in; also each active upload's "
        "largest in-memory buffer (S3 needs at least 5 MiB)",
    )
    gateway_page_chunk_bytes: int = Field(
        default=50 * MIB,
        ge=64 * 1024,
        le=GATEWAY_MAX_SIZE_BYTES,
        description="Bytes per PATCH the upload page sends (tus-js-client chunkSize): under "
        "any proxy's body limit; a lost connection resends at most one chunk",
    )
    gateway_lock_ttl_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="A request's hold on an upload lapses this long after its last heartbeat, "
        "so another instance can resume an upload whose gateway was killed",
    )
    gateway_events_max_s: int = Field(
        default=3600,
        ge=1,
        le=86400,
        description="An upload's event stream (GET /uploads/{id}/events) is closed after this "
        "long with `event: timeout`; the client reconnects with Last-Event-ID",
    )

    @model_validator(mode="after")
    def _gateway_within_max_size(self) -> Settings:
        # One limit for every path: the gateway's own setting may only lower it.
        self.gateway_max_size_bytes = min(self.gateway_max_size_bytes, self.max_size_bytes)
        return self

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or (self.home / "objects").as_uri()

    def verify_readback_for(self, store_url: str) -> bool:
        if self.verify_readback is not None:
            return self.verify_readback
        return store_url.startswith("file:")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalog.db'}"
