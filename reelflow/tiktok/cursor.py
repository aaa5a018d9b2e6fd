"""The upload position one run's pipelined chunk PUTs share (threads of one process).

TikTok takes a session's chunks strictly in order, so the PUTs themselves cannot overlap. What can
overlap is everything around them: while chunk N is on the wire, the task for chunk N+1 is
already started (Prefect's task-run bookkeeping) and has its body open, and once N's reply is in,
N writes the ledger while N+1's PUT is already going out. Measured, that bookkeeping was about
12 ms per chunk next to a 10 MB PUT of 20-45 ms on loopback; pipelined (and with N yielding the
GIL to N+1 before its ledger write), PUTs follow each other within 0.1 ms and the whole 26-chunk
leg spends 10-16 ms outside its PUTs: the first task's start and the last one's finish. The same
holds for windows of chunks (:mod:`tasks.tiktok_chunks`): the next window's task starts while
the current window's last PUT is on the wire, and the ledger writes run on a thread of their own.

* :meth:`UploadCursor.wait_turn` blocks a chunk until TikTok's next expected byte is its first
  byte (go), or the position moved elsewhere or the cursor was closed (skip: send nothing).
* :meth:`UploadCursor.advance` publishes the position a reply (206/201 or a 416 re-sync) revealed
  and hands out a ticket; :meth:`UploadCursor.in_order` runs the ledger writes in ticket order,
  so the ledger never steps backwards because two writes raced.
* :meth:`UploadCursor.wait_until` lets a window open (for S3: fetch) its first chunk once the
  chunk before it is on the wire, so a run holds at most one chunk ahead of the one sending.
* :meth:`UploadCursor.note_unanswered` / :meth:`UploadCursor.was_unanswered` remember PUTs that
  went out without a reply: a later 416 past such a chunk means this run's copy landed.
* :meth:`UploadCursor.close` releases every waiter (a failure or a re-sync the flow handles
  itself); :meth:`UploadCursor.reset` reopens it at a new position once nothing is in flight.

Must not: talk to TikTok or the catalog; decide where to resume (the flow and TikTok's
``uploaded_bytes`` do that).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# A waiter gives up (and sends nothing) after this long; the flow closes the cursor on every
# failure path, so this only bounds a bug. An upload URL is valid for an hour (UL).
TURN_TIMEOUT_S = 3600.0
LEDGER_ORDER_TIMEOUT_S = 120.0


class UploadCursor:
    def __init__(self, position: int) -> None:
        self._cond = threading.Condition()
        self._position = position
        self._closed = False
        self._issued = 0  # tickets handed out by advance()
        self._recorded = 0  # every ticket up to this one has finished its ledger write
        self._unanswered: set[int] = set()  # first bytes of PUTs that raised instead of replying

    @property
    def position(self) -> int:
        with self._cond:
            return self._position

    def wait_turn(self, first_byte: int, timeout: float = TURN_TIMEOUT_S) -> bool:
        """True when TikTok expects ``first_byte`` next; False once it never will in this lane."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._position >= first_byte, timeout)
            return not self._closed and self._position == first_byte

    def wait_until(self, byte: int, timeout: float = TURN_TIMEOUT_S) -> bool:
        """Block until TikTok's position reaches ``byte``; False once the cursor is closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._position >= byte, timeout)
            return not self._closed and self._position >= byte

    def note_unanswered(self, first_byte: int) -> None:
        with self._cond:
            self._unanswered.add(first_byte)

    def was_unanswered(self, first_byte: int) -> bool:
        with self._cond:
            return first_byte in self._unanswered

    def advance(self, next_byte: int) -> int:
        """Publish TikTok's next expected byte; returns the ticket for :meth:`in_order`."""
        with self._cond:
            self._position = next_byte
            self._issued += 1
            self._cond.notify_all()
            return self._issued

    @contextmanager
    def in_order(self, ticket: int, timeout: float = LEDGER_ORDER_TIMEOUT_S) -> Iterator[None]:
        """Run the block after every earlier ticket's block (a stuck one is waited out)."""
        with self._cond:
            self._cond.wait_for(lambda: self._recorded >= ticket - 1, timeout)
        try:
            yield
        finally:
            with self._cond:
                self._recorded = max(self._recorded, ticket)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reset(self, position: int) -> None:
        """Reopen at ``position``; only when no chunk of this cursor is in flight."""
        with self._cond:
            self._closed = False
            self._position = position
            self._cond.notify_all()
