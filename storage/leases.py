"""Leases in the catalog: at most one live run works on a given source at a time.

Two runs for the same content at the same moment (a duplicate bucket event, a double click in
the UI) must upload it once. The first run takes the lease row for (source fingerprint, store);
the other waits, then finds the media stored (deduplicated) or takes over a lease whose owner
died. Liveness: a heartbeat thread renews the lease; an expired lease is free, and on the same
host a lease whose process is gone is free at once (a SIGKILLed run does not block a re-run).
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
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlmodel import Field, Session, SQLModel

from reelflow.errors import TransientStorageError
from storage.clock import aware, utcnow

LEASE_TTL_S = 60.0
POLL_INTERVAL_S = 1.0


class Lease(SQLModel, table=True):
    name: str = Field(primary_key=True)
    owner: str | None = None
    host: str | None = None
    pid: int | None = None
    session_id: str | None = None
    expires_at: datetime | None = Field(default=None, sa_column_kwargs={})
    note: str | None = None


def lease_name(source_fingerprint: str, store_url: str) -> str:
    return "src_" + hashlib.sha256(f"{source_fingerprint}|{store_url}".encode()).hexdigest()[:32]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Leases:
    def __init__(self, engine: Engine, *, ttl_s: float = LEASE_TTL_S) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.host = socket.gethostname()

    def try_acquire(self, name: str, owner: str) -> bool:
        """Take the lease if it is free, expired, ours, or held by a dead process on this host."""
        with Session(self.engine) as s:
            row = s.get(Lease, name)
            if row is None:
                s.add(Lease(name=name))
                try:
                    s.commit()
                except DbIntegrityError:
                    s.rollback()
                row = s.get(Lease, name)
            assert row is not None
            holder, expires = row.owner, aware(row.expires_at)
            dead_here = row.host == self.host and row.pid is not None and not _pid_alive(row.pid)
            now = utcnow()
            free = holder is None or holder == owner or expires is None or expires < now
            if not (free or dead_here):
                return False
            stmt = (
                update(Lease)
                .where(Lease.name == name)  # type: ignore[arg-type]
                .where(
                    or_(Lease.owner == holder, Lease.owner.is_(None))  # type: ignore[arg-type,union-attr]
                    if holder is not None
                    else Lease.owner.is_(None)  # type: ignore[union-attr]
                )
                .values(
                    owner=owner,
                    host=self.host,
                    pid=os.getpid(),
                    expires_at=now + timedelta(seconds=self.ttl_s),
                )
            )
            got = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
            s.commit()
            return got

    def renew(self, name: str, owner: str, *, session_id: str | None = None) -> bool:
        values: dict[str, object] = {"expires_at": utcnow() + timedelta(seconds=self.ttl_s)}
        if session_id is not None:
            values["session_id"] = session_id
        with Session(self.engine) as s:
            stmt = update(Lease).where(Lease.name == name, Lease.owner == owner).values(**values)  # type: ignore[arg-type]
            ok = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
            s.commit()
            return ok

    def release(self, name: str, owner: str, *, note: str | None = None) -> None:
        with Session(self.engine) as s:
            stmt = (
                update(Lease)
                .where(Lease.name == name, Lease.owner == owner)  # type: ignore[arg-type]
                .values(owner=None, host=None, pid=None, expires_at=None, note=note)
            )
            s.execute(stmt)
            s.commit()

    def held_by(self, owner: str) -> list[Lease]:
        from sqlmodel import select

        with Session(self.engine) as s:
            return list(s.exec(select(Lease).where(Lease.owner == owner)).all())

    @contextmanager
    def hold(
        self,
        name: str,
        owner: str,
        *,
        wait_s: float,
        on_wait: Callable[[], object | None] = lambda: None,
    ) -> Iterator[object | None]:
        """Hold ``name`` for the block, renewing it from a daemon thread.

        While another live run holds it, call ``on_wait`` every POLL_INTERVAL_S; a non-None
        result (e.g. "the other run finished and stored the media") ends the wait and is yielded
        without taking the lease. Gives up with a retryable error after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while not self.try_acquire(name, owner):
            found = on_wait()
            if found is not None:
                yield found
                return
            if time.monotonic() > deadline:
                raise TransientStorageError(f"another run is still working on this source ({name})")
            time.sleep(POLL_INTERVAL_S)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.ttl_s / 3):
                self.renew(name, owner)

        beat = threading.Thread(target=heartbeat, name=f"lease-{name[:12]}", daemon=True)
        beat.start()
        try:
            yield None
        except Exception:
            stop.set()
            beat.join(timeout=5)
            self.release(name, owner)
            raise
        except BaseException:
            # A signal (Prefect's TerminationSignal when the runner cancels, KeyboardInterrupt):
            # keep the lease for the runner's on_cancellation/on_crashed hook, which records the
            # interruption on the session and releases it. Unreleased, it is free as soon as this
            # process is gone (same host) or after the TTL.
            stop.set()
            beat.join(timeout=5)
            raise
        stop.set()
        beat.join(timeout=5)
        self.release(name, owner)
