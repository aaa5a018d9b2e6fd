"""Leases in the catalog: at most one live run works on a given source at a time, fenced.

Two runs for the same content at the same moment (a duplicate bucket event, a double click in
the UI) must upload it once. The first run takes the lease row for (source fingerprint, store);
the other waits, then finds the media stored (deduplicated) or takes over a lease whose owner
died. Liveness: a heartbeat thread renews the lease; an expired lease is free, and a lease whose
process is provably gone (same kernel boot, same PID namespace, that PID not running with the
recorded start time) is free at once, so a SIGKILLed run does not block a re-run.

Fencing: every acquisition increments the row's ``token``. The holder gets a :class:`Fence`
(name, owner, token); the catalog refuses ledger writes whose token is no longer the row's, in
the same transaction as the write, and the completion steps check it first. A run whose
heartbeat finds the lease taken (or cannot renew it for a whole TTL) marks its fence lost and
stops with :class:`LeaseLostError`, retryable by a later run.

Owner identity is (boot id or machine id, PID namespace, pid, process start time), not
hostname + pid: containers share hostnames and PID numbers, so a holder in another container is
never judged dead (or "us") from this one; only its TTL frees it.

Works on SQLite and PostgreSQL: every change is one conditional UPDATE (compare-and-swap).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col
from sqlmodel import select as sm_select

from reelflow.errors import LeaseLostError, TransientStorageError
from reelflow.logging import get_logger
from storage.clock import aware, utcnow

LEASE_TTL_S = 60.0
POLL_INTERVAL_S = 1.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
MACHINE_ID_PATH = Path("/etc/machine-id")


class Lease(SQLModel, table=True):
    name: str = Field(primary_key=True)
    owner: str | None = None
    host: str | None = None  # for people reading the table; liveness never uses it
    pid: int | None = None
    machine: str | None = None  # boot id (or machine id) + PID namespace of the holder
    pid_start: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    token: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    session_id: str | None = None
    expires_at: datetime | None = Field(default=None, sa_column_kwargs={})
    note: str | None = None


# Columns added after the first release: make_engine adds them to an existing lease table.
ADDED_COLUMNS = {
    "machine": "VARCHAR",
    "pid_start": "BIGINT",
    "token": "INTEGER NOT NULL DEFAULT 0",
}


def live_session_ids(engine: Engine, now: datetime) -> set[str]:
    """The upload sessions a live run holds: owned leases that have not expired at ``now``."""
    with Session(engine) as s:
        leases = s.exec(sm_select(Lease).where(col(Lease.owner).is_not(None))).all()
    return {
        lease.session_id
        for lease in leases
        if lease.session_id and lease.expires_at and aware(lease.expires_at) > now
    }


def lease_name(source_fingerprint: str, store_url: str) -> str:
    return "src_" + hashlib.sha256(f"{source_fingerprint}|{store_url}".encode()).hexdigest()[:32]


# --- process identity ----------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def process_start(pid: int, *, proc: Path = Path("/proc")) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None
    when no such process is visible here. Parsed after the last ``)``: the command name inside
    the parentheses may hold spaces and parentheses itself."""
    stat = _read(proc / str(pid) / "stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def _machine() -> str:
    """This kernel boot (or machine) and PID namespace: where a pid means one process."""
    base = _read(BOOT_ID_PATH) or _read(MACHINE_ID_PATH) or f"host:{socket.gethostname()}"
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{base}/{ns}" if ns else base


@dataclass(frozen=True)
class ProcessIdentity:
    """Which process holds a lease, unique across hosts and containers."""

    machine: str
    pid: int
    start: int | None
    host: str = ""

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(_machine(), pid, process_start(pid), socket.gethostname())

    def same(self, machine: str | None, pid: int | None, start: int | None) -> bool:
        """The recorded holder is this very process (every part equal, none unknown)."""
        return (
            machine is not None
            and machine == self.machine
            and pid == self.pid
            and start is not None
            and start == self.start
        )

    def knows_dead(self, machine: str | None, pid: int | None, start: int | None) -> bool:
        """The recorded holder provably no longer runs: it lived where our pids mean the same
        processes, and that pid is gone or now belongs to a process started at another time.
        Anything we cannot see (another host, container or PID namespace) is not dead."""
        if machine is None or machine != self.machine or pid is None or start is None:
            return False
        return process_start(pid) != start


# --- the fence -----------------------------------------------------------------------------------


class Fence:
    """The lease one run holds: its name, owner and fencing token, and whether it is lost.

    ``check()`` is the cheap in-memory test for hot loops (set by the heartbeat); the catalog
    checks the token against the row itself in each write's transaction (:func:`fence_holds`).
    """

    def __init__(self, name: str, owner: str, token: int) -> None:
        self.name = name
        self.owner = owner
        self.token = token
        self.reason = ""
        self._lost = threading.Event()

    def __repr__(self) -> str:
        return f"Fence({self.name!r}, token={self.token}, lost={self.lost})"

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()

    def error(self) -> LeaseLostError:
        return LeaseLostError(
            f"this run lost the lease on its source ({self.reason or 'token is stale'}); "
            "the upload is left to the run that holds it",
            lease=self.name,
            token=self.token,
        )

    def check(self) -> None:
        if self.lost:
            raise self.error()


def fence_holds(conn: Connection, fence: Fence) -> bool:
    """Inside a write's transaction: is ``fence`` still the lease row's holder and token?

    Run after the write: on SQLite the write took the database's write lock, so no takeover can
    commit before ours; on PostgreSQL ``FOR SHARE`` makes a concurrent takeover (an UPDATE of
    the row) wait for this transaction, and one that committed first is seen here.
    """
    stmt: Any = select(col(Lease.token)).where(
        col(Lease.name) == fence.name,
        col(Lease.owner) == fence.owner,
        col(Lease.token) == fence.token,
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(read=True)
    return conn.execute(stmt).first() is not None


def guard(conn: Connection, fence: Fence | None) -> None:
    """Refuse (roll back) the enclosing write when ``fence`` is stale."""
    if fence is None:
        return
    if not fence_holds(conn, fence):
        fence.lose("another run took over the lease")
        raise fence.error()


@dataclass(frozen=True)
class Held:
    """What ``Leases.hold`` yields: the fence when this run took the lease, else what
    ``on_wait`` found (the other run's result) and no fence."""

    fence: Fence | None
    found: object | None = None


class Leases:
    def __init__(
        self,
        engine: Engine,
        *,
        ttl_s: float = LEASE_TTL_S,
        identity: ProcessIdentity | None = None,
    ) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.me = identity or ProcessIdentity.current()
        self.host = self.me.host

    def acquire(self, name: str, owner: str) -> Fence | None:
        """Take the lease if it is free, expired, ours, or held by a provably dead process.

        Returns the fence (with a token one above the previous holder's), or None.
        """
        with Session(self.engine) as s:
            row = s.get(Lease, name)
            if row is None:
                s.add(Lease(name=name))
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                row = s.get(Lease, name)
            assert row is not None
            holder, token, expires = row.owner, row.token or 0, aware(row.expires_at)
            now = utcnow()
            held_by = (row.machine, row.pid, row.pid_start)
            if holder is None:
                cond: Any = col(Lease.owner).is_(None)
            elif holder == owner and self.me.same(*held_by):
                cond = col(Lease.owner) == owner
            elif expires is None or expires < now:
                # Still expired when the UPDATE runs: a holder that renewed meanwhile keeps it.
                cond = or_(col(Lease.expires_at).is_(None), col(Lease.expires_at) < now)
            elif self.me.knows_dead(*held_by):
                cond = col(Lease.pid_start) == row.pid_start
            else:
                return None
            stmt = (
                update(Lease)
                .where(Lease.name == name, Lease.token == token, cond)  # type: ignore[arg-type]
                .values(
                    owner=owner,
                    host=self.me.host,
                    pid=self.me.pid,
                    machine=self.me.machine,
                    pid_start=self.me.start,
                    token=token + 1,
                    expires_at=now + timedelta(seconds=self.ttl_s),
                    note=None,
                )
            )
            got = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
            s.commit()
        if not got:
            return None
        get_logger(lease=name).debug("lease_acquired", token=token + 1, previous_owner=holder)
        return Fence(name, owner, token + 1)

    def try_acquire(self, name: str, owner: str) -> bool:
        return self.acquire(name, owner) is not None

    def renew(
        self, name: str, owner: str, *, session_id: str | None = None, token: int | None = None
    ) -> bool:
        """Push the expiry out; False when ``owner`` (with ``token``, if given) no longer holds it."""
        values: dict[str, object] = {"expires_at": utcnow() + timedelta(seconds=self.ttl_s)}
        if session_id is not None:
            values["session_id"] = session_id
        with Session(self.engine) as s:
            stmt = update(Lease).where(Lease.name == name, Lease.owner == owner)  # type: ignore[arg-type]
            if token is not None:
                stmt = stmt.where(Lease.token == token)  # type: ignore[arg-type]
            ok = s.execute(stmt.values(**values)).rowcount == 1  # type: ignore[attr-defined]
            s.commit()
            return ok

    def attach_session(self, fence: Fence, session_id: str) -> None:
        """Record which upload session the fence's run works on (cancel hooks, cleanup read it)."""
        if not self.renew(fence.name, fence.owner, session_id=session_id, token=fence.token):
            fence.lose("another run took over the lease")
            raise fence.error()

    def release(
        self, name: str, owner: str, *, note: str | None = None, token: int | None = None
    ) -> None:
        with Session(self.engine) as s:
            stmt = update(Lease).where(Lease.name == name, Lease.owner == owner)  # type: ignore[arg-type]
            if token is not None:
                stmt = stmt.where(Lease.token == token)  # type: ignore[arg-type]
            s.execute(
                stmt.values(
                    owner=None,
                    host=None,
                    pid=None,
                    machine=None,
                    pid_start=None,
                    expires_at=None,
                    note=note,
                )
            )
            s.commit()

    def held_by(self, owner: str) -> list[Lease]:
        with Session(self.engine) as s:
            return list(s.exec(sm_select(Lease).where(Lease.owner == owner)).all())

    def _heartbeat(self, fence: Fence, stop: threading.Event) -> None:
        """Renew every TTL/3. A failed renewal (the catalog unreachable, a dropped connection)
        is retried every second until the lease would have lapsed; then, or as soon as a renewal
        finds the lease taken, the fence is lost and the run's next step stops it."""
        log = get_logger(lease=fence.name)
        renewed = time.monotonic()
        wait = self.ttl_s / 3
        while not stop.wait(wait):
            attempt = time.monotonic()
            try:
                ok = self.renew(fence.name, fence.owner, token=fence.token)
            # The heartbeat must never die silently: any failure is retried, then reported.
            except Exception as exc:
                if time.monotonic() - renewed >= self.ttl_s:
                    fence.lose(f"could not renew it for {self.ttl_s:g} s: {type(exc).__name__}")
                    log.error("lease_lapsed", error=str(exc)[:300])
                    return
                log.warning("lease_renew_failed", error=str(exc)[:300])
                wait = min(POLL_INTERVAL_S, self.ttl_s / 10)
                continue
            if not ok:
                fence.lose("another run took over the lease")
                log.error("lease_lost", token=fence.token)
                return
            renewed, wait = attempt, self.ttl_s / 3

    @contextmanager
    def hold(
        self,
        name: str,
        owner: str,
        *,
        wait_s: float,
        on_wait: Callable[[], object | None] = lambda: None,
    ) -> Iterator[Held]:
        """Hold ``name`` for the block, renewing it from a daemon thread; yields :class:`Held`.

        While another live run holds it, call ``on_wait`` every POLL_INTERVAL_S; a non-None
        result (e.g. "the other run finished and stored the media") ends the wait and is yielded
        (``Held(None, found)``) without taking the lease. Gives up with a retryable error after
        ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while (fence := self.acquire(name, owner)) is None:
            found = on_wait()
            if found is not None:
                yield Held(None, found)
                return
            if time.monotonic() > deadline:
                raise TransientStorageError(f"another run is still working on this source ({name})")
            time.sleep(POLL_INTERVAL_S)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(fence, stop), name=f"lease-{name[:12]}", daemon=True
        )
        beat.start()
        try:
            yield Held(fence)
        except Exception:
            stop.set()
            beat.join(timeout=5)
            self.release(name, owner, token=fence.token)  # a no-op once another run took it
            raise
        except BaseException:
            # A signal (Prefect's TerminationSignal when the runner cancels, KeyboardInterrupt):
            # keep the lease for the runner's on_cancellation/on_crashed hook, which records the
            # interruption on the session and releases it. Unreleased, it is free as soon as this
            # process is gone (same machine and PID namespace) or after the TTL.
            stop.set()
            beat.join(timeout=5)
            raise
        stop.set()
        beat.join(timeout=5)
        self.release(name, owner, token=fence.token)
