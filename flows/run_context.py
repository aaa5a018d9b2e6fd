"""What a flow knows about its own run: the owner string its leases and claims carry, its tags.

Owns the one run-owner rule every flow uses (ingest, publish, scheduling) and the Prefect API
call that tags a run. Must not: take leases, read the catalog, or decide anything about a run's
work (the flows do).
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run as current_flow_run


def run_owner() -> str:
    """The owner of this run's leases and claims: the flow run's id (the cancellation and crash
    hooks find a run's leases by it), or, outside a flow run, this process and thread: two
    threads of one process are two owners, so one never takes over the other's lease."""
    run_id = current_flow_run.get_id()
    return str(run_id) if run_id else f"pid-{os.getpid()}-{threading.get_ident()}"


def tag_run(account: str | None, mode: str) -> None:
    """Tag this run with its account and mode (a deployment run cannot be tagged per event)."""
    run_id = current_flow_run.get_id()
    if not run_id:
        return
    wanted = {f"mode:{mode}"} | ({f"account:{account}"} if account else set())
    with get_client(sync_client=True) as client:
        current = set(client.read_flow_run(UUID(run_id)).tags or [])
        if not wanted <= current:
            client.update_flow_run(UUID(run_id), tags=sorted(current | wanted))
