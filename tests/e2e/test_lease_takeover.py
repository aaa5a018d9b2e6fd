"""A run that loses its lease stops and fails retryably while a second run takes over (§5).

Two real ingest runs (the flow's own ``_ingest``: validate, lease, chunk-upload, assemble,
thumbnail, store) in two threads against one local store and one catalog (SQLite / PostgreSQL).
Run A is held after two parts (its source waits on a gate); then its heartbeat either fails
(renew raises until the lease lapses) or stalls past the expiry so that run B takes over and A's
next renewal is refused. Only the heartbeat's catalog call is faulted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from flows.ingest import _ingest, summarize
from reelflow.errors import LeaseLostError
from reelflow.planning import MIB
from reelflow.settings import Settings
from storage.clock import utcnow
from storage.leases import Fence, Lease, Leases
from storage.runtime import Runtime
from tests.support.waiting import wait_for

CHUNK = 5 * MIB
WAIT_S = 120.0

pytestmark = pytest.mark.usefixtures("prefect_api")


class GatedSource:
    """The real source reader, held before part ``after + 1`` until the gate opens."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after = inner, after
        self.paused, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def iter_chunks(self, ref: Any, chunks: Any, buffers: Any = None) -> Iterator[Any]:
        for chunk, data in self.inner.iter_chunks(ref, chunks, buffers):
            if chunk.part_number > self.after:
                self.paused.set()
                assert self.gate.wait(WAIT_S)
            yield chunk, data


class CountingStore:
    """The real store; counts the parts this run sent."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.puts = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upload_part(self, *args: Any, **kwargs: Any) -> Any:
        self.puts += 1
        return self.inner.upload_part(*args, **kwargs)


def _in_thread(label: str, source: str, rt: Runtime, out: dict[str, Any]) -> threading.Thread:
    @flow(name=f"lease-takeover-{label}")
    def run() -> dict[str, Any]:
        return summarize(_ingest(source, rt, CHUNK, 1), rt)

    def target() -> None:
        try:
            out[label] = run()
        except BaseException as exc:  # the test inspects what the run raised
            out[label] = exc

    thread = threading.Thread(target=target, name=f"run-{label}", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
@pytest.mark.parametrize("fault", ["renew_raises", "renew_refused"])
def test_run_that_lost_its_lease_stops_and_fails_retryably_while_another_takes_over(
    db: str,
    fault: str,
    home: Path,
    clips: Any,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stops sending at once and fails with a retryable LeaseLostError; B completes the same
    upload; the stored video is the source; nothing is left staged."""
    clip = clips.medium(20 * MIB)
    db_url = request.getfixturevalue("pg_url") if db == "postgres" else None
    settings = Settings(home=home, database_url=db_url, lease_ttl_s=2, lease_wait_s=WAIT_S)
    base = Runtime.from_settings(settings)
    gated = GatedSource(base.sources, after=2)
    a_store = CountingStore(base.store)
    rt_a = dataclasses.replace(base, sources=gated, store=a_store)  # type: ignore[arg-type]
    rt_b = Runtime.from_settings(settings)

    a_owner: list[str] = []
    down, stall, stalled, unstall = (threading.Event() for _ in range(4))
    lost: list[Fence] = []
    real_renew, real_lose = Leases.renew, Fence.lose

    def renew(self: Leases, name: str, owner: str, **kw: Any) -> bool:
        if a_owner and owner == a_owner[0]:
            if down.is_set():
                raise OperationalError("UPDATE lease", {}, ConnectionResetError("catalog gone"))
            if stall.is_set():
                stalled.set()
                assert unstall.wait(WAIT_S)
        return real_renew(self, name, owner, **kw)

    def lose(self: Fence, reason: str) -> None:
        lost.append(self)
        real_lose(self, reason)

    monkeypatch.setattr(Leases, "renew", renew)
    monkeypatch.setattr(Fence, "lose", lose)

    out: dict[str, Any] = {}
    thread_a = _in_thread("a", str(clip), rt_a, out)
    wait_for(gated.paused.is_set, "run A to send two parts", timeout_s=WAIT_S, poll_s=0.05)
    assert a_store.puts == 2

    def lease_row() -> Lease:
        with Session(base.catalog.engine) as s:
            rows = s.exec(select(Lease).where(Lease.owner.is_not(None))).all()  # type: ignore[union-attr]
            assert len(rows) == 1, rows
            return rows[0]

    a_owner.append(str(lease_row().owner))
    if fault == "renew_raises":
        down.set()  # the heartbeat's catalog calls fail until the lease lapses
    else:
        stall.set()  # the next renewal hangs past the lease's expiry
        wait_for(stalled.is_set, "A's heartbeat to stall", timeout_s=WAIT_S, poll_s=0.05)
        with Session(base.catalog.engine) as s:
            s.execute(
                update(Lease)
                .where(Lease.owner == a_owner[0])  # type: ignore[arg-type]
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            s.commit()
    thread_b = _in_thread("b", str(clip), rt_b, out)
    wait_for(
        lambda: lease_row().owner != a_owner[0],
        "run B to take the lease over",
        timeout_s=WAIT_S,
        poll_s=0.05,
    )
    unstall.set()
    wait_for(
        lambda: any(f.owner == a_owner[0] for f in lost),
        "run A to notice",
        timeout_s=WAIT_S,
        poll_s=0.05,
    )

    thread_b.join(WAIT_S)
    assert isinstance(out.get("b"), dict), out.get("b")
    gated.gate.set()
    thread_a.join(WAIT_S)
    error = out.get("a")
    assert isinstance(error, LeaseLostError), repr(error)
    assert error.retryable
    assert a_store.puts == 2  # not one part sent after the lease was lost

    summary = out["b"]
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert summary["sha256"] == sha  # B resumed A's upload: only the parts A had not sent
    assert summary["chunks_uploaded_this_run"] == summary["chunks_total"] - 2
    assert base.store.list_uploads() == []
    done = base.catalog.completed_session_for(
        rt_b.sources.resolve(str(clip)).fingerprint, base.store.url
    )
    assert done is not None and done.media_id == summary["media_id"]
    # Where this store holds it (the upload's final key): the session's catalog may be shared
    # with earlier tests' stores, whose media row of the same content names their own key.
    stored = Path(base.store.read_url(done.staging_key))
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    with Session(base.catalog.engine) as s:
        assert [r.owner for r in s.exec(select(Lease)).all() if r.owner] == []
