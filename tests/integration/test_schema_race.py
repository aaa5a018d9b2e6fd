"""Workers that start at once on a new catalog (PostgreSQL or SQLite) all get the schema.

Found on CI: two ``reelflow ingest`` runs started together against an empty database; both ran
``CREATE TABLE`` for the same table and one failed with ``UniqueViolation`` on
``pg_class_relname_nsp_index``. The schema is now created under an advisory lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import inspect

from storage.catalog import make_engine
from storage.leases import ADDED_COLUMNS
from tests.conftest import PG_ADMIN_URL

WORKERS = 8


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test alone."""
    name = f"reelflow_race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A path where no SQLite catalog exists yet (the default catalog on a new machine)."""
    return f"sqlite:///{tmp_path / 'new' / 'catalog.db'}"


@pytest.mark.parametrize("round_", range(3))
@pytest.mark.parametrize("db", ["postgres", "sqlite"])
def test_simultaneous_first_starts_all_get_the_schema(
    request: pytest.FixtureRequest, db: str, round_: int
) -> None:
    """Eight engines made at the same instant on an empty database: none fails, all tables exist
    (on SQLite each engine is its own connection, as separate `reelflow ingest` processes are)."""
    url = request.getfixturevalue("empty_pg_url" if db == "postgres" else "empty_sqlite_url")
    gate = threading.Barrier(WORKERS)
    errors: list[BaseException] = []
    tables: list[set[str]] = []

    def start() -> None:
        gate.wait(timeout=30)
        try:
            engine = make_engine(url)
            tables.append(set(inspect(engine).get_table_names()))
            engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(tables) == WORKERS
    assert all({"uploadsession", "lease", "media"} <= t for t in tables), tables


def test_an_older_lease_table_gains_the_added_columns(tmp_path: Path) -> None:
    """A catalog from before fencing (lease table without machine/pid_start/token) is upgraded
    in place by the same locked schema step, on first start of the new version."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sqlalchemy.create_engine(url)
    with old.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE lease (name VARCHAR PRIMARY KEY, owner VARCHAR, host VARCHAR,"
            " pid INTEGER, session_id VARCHAR, expires_at DATETIME, note VARCHAR)"
        )
        conn.exec_driver_sql("INSERT INTO lease (name, owner) VALUES ('src_old', 'run-1')")
    old.dispose()
    engine = make_engine(url)
    columns = {c["name"] for c in inspect(engine).get_columns("lease")}
    assert set(ADDED_COLUMNS) <= columns
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT owner, token FROM lease").all() == [("run-1", 0)]
