"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.prefect_server import PrefectServer


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real ``prefect server start`` (SQLite, services on) for the tests that serve
    deployments with ``reelflow serve`` (test_cancel, test_event_path): starting one costs
    ~10 s. Each of those tests owns its buckets, catalog, sandbox and serve process, waits for
    its own serve process to have registered the deployments (``wait_until_served``), and reads
    back only its own runs (by id, or by a source no other test uses); none needs an empty
    server. The scale-out test keeps a server of its own (PostgreSQL, its own work pool)."""
    with PrefectServer(log_dir=tmp_path_factory.mktemp("prefect-server")) as server:
        yield server
