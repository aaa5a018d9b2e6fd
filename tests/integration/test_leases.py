"""Leases fence (issue 8 §5): tokens, refused stale writes, heartbeat faults, owner identity.

On a SQLite file and on the machine's PostgreSQL. The "other container" is a second Leases
with another process identity (what a second host or container would record), not a mock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from reelflow.errors import LeaseLostError, retry_if_retryable
from storage.base import PartReceipt
from storage.catalog import Catalog, make_engine
from storage.clock import utcnow
from storage.leases import Fence, Lease, Leases, ProcessIdentity, process_start
from tests.support.rows import upload_session
from tests.support.waiting import wait_for

WAIT_S = 30.0


def _name(tag: str) -> str:
    return f"src_{tag}_{time.monotonic_ns()}"


def _session(catalog: Catalog, sid: str) -> None:
    catalog.save_session(upload_session(sid, 2))


def _expire(catalog: Catalog, name: str) -> None:
    with Session(catalog.engine) as s:
        s.execute(
            update(Lease)
            .where(Lease.name == name)  # type: ignore[arg-type]
            .values(expires_at=utcnow() - timedelta(seconds=5))
        )
        s.commit()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_each_acquisition_raises_the_token_and_stale_writes_are_refused(catalog: Catalog) -> None:
    """A takeover gets token+1; the old holder's part, session and media writes roll back."""
    leases = Leases(catalog.engine, ttl_s=600)
    name, sid = _name("fence"), f"u_{time.monotonic_ns()}"
    up = f"up_{time.monotonic_ns()}"  # the session database is shared by other test files
    first = leases.acquire(name, "run-a")
    assert first is not None
    _session(catalog, sid)
    catalog.fenced(first).record_part(sid, up, 0, PartReceipt(1, 10, '"e1"', "s1"))
    _expire(catalog, name)
    second = leases.acquire(name, "run-b")
    assert second is not None and second.token == first.token + 1
    stale = catalog.fenced(first)
    with pytest.raises(LeaseLostError) as err:
        stale.record_part(sid, up, 10, PartReceipt(2, 10, '"e2"', "s2"))
    assert err.value.retryable and first.lost
    with pytest.raises(LeaseLostError):
        stale.update_session(sid, status="assembled")
    with pytest.raises(LeaseLostError):
        stale.forget_parts(up)
    with pytest.raises(LeaseLostError):
        stale.verify_fence()
    assert sorted(catalog.ledger_parts(up)) == [1]  # refused writes left nothing behind
    assert catalog.get_session(sid).status == "open"  # type: ignore[union-attr]
    catalog.fenced(second).record_part(sid, up, 10, PartReceipt(2, 10, '"e2"', "s2"))
    catalog.fenced(second).verify_fence()
    assert sorted(catalog.ledger_parts(up)) == [1, 2]


def test_a_release_with_a_stale_token_leaves_the_new_holder_alone(catalog: Catalog) -> None:
    """The same owner re-acquiring supersedes its older fence; releasing that one frees nothing."""
    leases = Leases(catalog.engine, ttl_s=600)
    name = _name("rel")
    old = leases.acquire(name, "run-a")
    new = leases.acquire(name, "run-a")
    assert old is not None and new is not None and new.token == old.token + 1
    leases.release(name, "run-a", token=old.token)
    assert not leases.renew(name, "run-a", token=old.token)
    assert leases.renew(name, "run-a", token=new.token)
    assert not Leases(catalog.engine).try_acquire(name, "run-b")


def test_lease_lost_is_not_retried_inside_the_run() -> None:
    """LeaseLostError is retryable for a later run, but Prefect's task retry condition says no."""

    class _State:
        def result(self) -> None:
            raise Fence("n", "o", 1).error()

    assert LeaseLostError("x").retryable
    assert retry_if_retryable(None, None, _State()) is False


def test_heartbeat_survives_a_failed_renewal_and_keeps_the_lease(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that raises once is retried: the fence stays valid, nobody else gets the lease."""
    calls: list[bool] = []
    real_renew = Leases.renew

    def flaky(self: Leases, name: str, owner: str, **kw: Any) -> bool:
        calls.append(True)
        if len(calls) == 1:
            raise OperationalError("UPDATE lease", {}, ConnectionResetError("catalog dropped"))
        return real_renew(self, name, owner, **kw)

    monkeypatch.setattr(Leases, "renew", flaky)
    leases = Leases(catalog.engine, ttl_s=1.5)
    name = _name("beat")
    with leases.hold(name, "run-a", wait_s=0) as held:
        assert held.fence is not None
        # Four renewals span more than the TTL: a dead heartbeat would have let it lapse.
        wait_for(lambda: len(calls) >= 4, "four heartbeats", timeout_s=WAIT_S, poll_s=0.05)
        assert not held.fence.lost
        assert not Leases(catalog.engine, ttl_s=1.5).try_acquire(name, "run-b")
        catalog.fenced(held.fence).verify_fence()


def test_heartbeat_that_cannot_renew_for_a_ttl_gives_the_lease_up(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals failing for a whole TTL: the run's fence is lost (it stops), another run takes
    over after expiry, and the old run's exit does not release the new holder's lease."""
    real_renew = Leases.renew

    def down(self: Leases, name: str, owner: str, **kw: Any) -> bool:
        if owner == "run-a" and kw.get("token") is not None and "session_id" not in kw:
            raise OperationalError("UPDATE lease", {}, ConnectionRefusedError("catalog down"))
        return real_renew(self, name, owner, **kw)

    monkeypatch.setattr(Leases, "renew", down)
    name = _name("lapse")
    other = Leases(catalog.engine, ttl_s=1.5)
    a = Leases(catalog.engine, ttl_s=1.5)
    with pytest.raises(LeaseLostError), a.hold(name, "run-a", wait_s=0) as held:
        assert held.fence is not None
        wait_for(
            lambda: held.fence is not None and held.fence.lost,
            "the fence to lapse",
            timeout_s=WAIT_S,
            poll_s=0.05,
        )
        wait_for(
            lambda: other.try_acquire(name, "run-b"),
            "run-b to take over",
            timeout_s=WAIT_S,
            poll_s=0.05,
        )
        catalog.fenced(held.fence).verify_fence()
    assert [x.name for x in other.held_by("run-b") if x.name == name] == [name]


def test_heartbeat_whose_renewal_is_refused_loses_the_fence(catalog: Catalog) -> None:
    """Another run took the lease (the holder stalled past its expiry): renew returns False,
    the fence is lost at once, and the holder's next ledger write is refused."""
    stall, stalled = threading.Event(), threading.Event()
    real_renew = Leases.renew

    class Stalling(Leases):
        def renew(self, name: str, owner: str, **kw: Any) -> bool:
            if stall.is_set():
                stalled.set()
                assert stall.wait(0) and _released.wait(WAIT_S)
            return real_renew(self, name, owner, **kw)

    _released = threading.Event()
    name = _name("refused")
    a = Stalling(catalog.engine, ttl_s=1.5)
    with a.hold(name, "run-a", wait_s=0) as held:
        fence = held.fence
        assert fence is not None
        stall.set()
        wait_for(stalled.is_set, "the heartbeat to stall", timeout_s=WAIT_S, poll_s=0.05)
        _expire(catalog, name)  # the stall outlived the lease
        b = Leases(catalog.engine, ttl_s=600).acquire(name, "run-b")
        assert b is not None
        _released.set()
        wait_for(
            lambda: fence.lost,
            "the refused renewal to lose the fence",
            timeout_s=WAIT_S,
            poll_s=0.05,
        )
        assert "took over" in fence.reason
        with pytest.raises(LeaseLostError):
            fence.check()
    with Session(catalog.engine) as s:
        row = s.get(Lease, name)
        assert row is not None and (row.owner, row.token) == ("run-b", b.token)


def test_a_holder_in_another_container_is_neither_dead_nor_us(catalog: Catalog) -> None:
    """Same hostname and pid, other boot id / start time (another container): its live lease is
    not taken, whether that pid is gone here, alive here, or the owner string is the same."""
    me = ProcessIdentity.current()
    for pid in (_dead_pid(), os.getpid()):
        other = ProcessIdentity("another-boot-id/pid:[4026531836]", pid, 12345, me.host)
        name = _name("ctr")
        assert Leases(catalog.engine, ttl_s=600, identity=other).try_acquire(name, f"pid-{pid}")
        ours = Leases(catalog.engine, ttl_s=600)
        assert not ours.try_acquire(name, "run-b")  # not judged dead from here
        assert not ours.try_acquire(name, f"pid-{pid}")  # same owner string: not judged "us"
        _expire(catalog, name)  # only its TTL frees it
        assert ours.try_acquire(name, "run-b")


def test_a_holder_here_is_dead_when_its_pid_is_gone_or_reused(catalog: Catalog) -> None:
    """Same machine and PID namespace: a gone pid, or our pid with another start time (a
    recycled pid), is a dead holder whose lease is taken at once; a live one is kept."""
    me = ProcessIdentity.current()
    assert me.start is not None
    for pid, start in ((_dead_pid(), me.start), (me.pid, me.start - 1)):
        ghost = ProcessIdentity(me.machine, pid, start, me.host)
        name = _name("here")
        first = Leases(catalog.engine, ttl_s=600, identity=ghost).acquire(name, "run-a")
        taken = Leases(catalog.engine, ttl_s=600).acquire(name, "run-b")
        assert first is not None and taken is not None and taken.token == first.token + 1
    name = _name("alive")
    assert Leases(catalog.engine, ttl_s=600).try_acquire(name, "run-a")
    assert not Leases(catalog.engine, ttl_s=600).try_acquire(name, "run-b")


def test_an_old_lease_table_gets_the_new_columns(tmp_path: Path) -> None:
    """A catalog made before fencing (lease without token/machine/pid_start) is upgraded."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE lease (name VARCHAR PRIMARY KEY, owner VARCHAR, host VARCHAR, "
            "pid INTEGER, session_id VARCHAR, expires_at DATETIME, note VARCHAR)"
        )
        db.execute("INSERT INTO lease (name, owner) VALUES ('src_old', NULL)")
    leases = Leases(make_engine(f"sqlite:///{path}"), ttl_s=600)
    fence = leases.acquire("src_old", "run-a")
    assert fence is not None and fence.token == 1


@given(
    comm=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n"),
        max_size=16,
    ),
    start=st.integers(min_value=0, max_value=2**62),
)
def test_process_start_reads_field_22_whatever_the_command_name(comm: str, start: int) -> None:
    """/proc/<pid>/stat's command name may hold spaces and ')': the start time is still found."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "7").mkdir()
        rest = " ".join(["S"] + [str(i) for i in range(4, 22)] + [str(start), "99", "100"])
        (Path(d) / "7" / "stat").write_text(f"7 ({comm}) {rest}\n")
        assert process_start(7, proc=Path(d)) == start
        assert process_start(8, proc=Path(d)) is None


def test_this_process_identity_is_complete() -> None:
    """On Linux the identity has a boot id, a PID namespace and a start time."""
    me = ProcessIdentity.current()
    assert me.start is not None and me.start == process_start(os.getpid())
    assert "/pid:[" in me.machine and me.same(me.machine, me.pid, me.start)
    assert not me.same(me.machine, me.pid, None) and not me.knows_dead(me.machine, me.pid, me.start)
