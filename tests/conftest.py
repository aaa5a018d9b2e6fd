"""Shared fixtures: a real Prefect API, moto's S3 server on 127.0.0.1, PostgreSQL, clips.

Nothing here mocks a server: S3 is moto's HTTP server, Prefect is a real (ephemeral) API
server, the catalog runs on SQLite files and on the machine's PostgreSQL.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Before prefect is imported anywhere: an isolated Prefect home, no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="reelflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("REELFLOW_RUNNER", "off")  # in process, as tested; tests/e2e/test_runner.py

import pytest  # noqa: E402

if TYPE_CHECKING:
    from storage.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]
CLIP_CACHE = REPO / ".cache" / "clips"
PG_ADMIN_URL = os.environ.get(
    "REELFLOW_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API server for the session (temporary SQLite database)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    from tests.support.s3server import S3TestServer

    with S3TestServer() as server:
        yield server


@pytest.fixture(scope="session")
def clamd() -> Iterator[object]:
    """A real clamd (Debian clamav-daemon) with the tests' own signature database, on a unix
    socket and 127.0.0.1 TCP; see tests/support/clamd.py for the marker it detects."""
    from tests.support.clamd import ClamdDaemon

    with ClamdDaemon() as daemon:
        yield daemon


@pytest.fixture
def bucket(s3_server: object) -> str:
    name = f"rf-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    import psycopg

    name = f"reelflow_test_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:  # pragma: no cover - CI starts PostgreSQL
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    """A catalog on a fresh SQLite file, then on the session's PostgreSQL database."""
    from storage.catalog import Catalog, make_engine  # lazy, like the fixtures above

    if request.param == "sqlite":
        return Catalog(make_engine(f"sqlite:///{tmp_path / 'c.db'}"))
    return Catalog(make_engine(request.getfixturevalue("pg_url")))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated REELFLOW_HOME (local store + SQLite catalog) for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("REELFLOW_HOME", str(h))
    for var in (
        "REELFLOW_STORE_URL",
        "REELFLOW_DATABASE_URL",
        "REELFLOW_S3_ENDPOINT_URL",
        "REELFLOW_CHUNK_SIZE_BYTES",
        "REELFLOW_UPLOAD_CONCURRENCY",
        "REELFLOW_MAX_DURATION_S",
        "REELFLOW_SOURCE_ALLOWED_HOSTS",
        "REELFLOW_SOURCE_READ_DEADLINE_S",
    ):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def s3_env(home: Path, s3_server: object, bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point reelflow at the moto S3 server; returns the store URL."""
    url = f"s3://{bucket}/media"
    monkeypatch.setenv("REELFLOW_STORE_URL", url)
    monkeypatch.setenv("REELFLOW_S3_ENDPOINT_URL", s3_server.endpoint_url)  # type: ignore[attr-defined]
    # Presigned moto URLs used as http sources point at 127.0.0.1: allowed by name, this port only.
    monkeypatch.setenv(
        "REELFLOW_SOURCE_ALLOWED_HOSTS",
        s3_server.endpoint_url.split("://", 1)[1],  # type: ignore[attr-defined]
    )
    return url


@pytest.fixture(scope="session")
def clip_dir() -> Path:
    CLIP_CACHE.mkdir(parents=True, exist_ok=True)
    return CLIP_CACHE


@pytest.fixture(scope="session")
def clips(clip_dir: Path) -> object:
    """Clips made by the real ffmpeg, cached across sessions in .cache/clips."""
    from tests.support.clips import ClipCache

    return ClipCache(clip_dir)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """reelflow's TikTok sandbox over HTTP on 127.0.0.1; REELFLOW_TIKTOK_API_BASE points at it."""
    from reelflow.tiktok.sandbox import start_sandbox
    from tests.support.tiktok import SANDBOX_CONFIG

    with start_sandbox(SANDBOX_CONFIG, data_dir=tmp_path / "sandbox") as sb:
        monkeypatch.setenv("REELFLOW_TIKTOK_API_BASE", sb.base_url)
        yield sb
