"""The pipelined chunk PUTs' shared position: turns, release on close, ledger order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from reelflow.tiktok.cursor import UploadCursor

CHUNK = 10


def test_the_next_chunk_goes_when_the_position_reaches_it() -> None:
    cursor = UploadCursor(0)
    with ThreadPoolExecutor(2) as pool:
        second = pool.submit(cursor.wait_turn, CHUNK, 5.0)
        time.sleep(0.05)
        assert not second.done()  # chunk 1 is still on the wire
        cursor.advance(CHUNK)
        assert second.result(timeout=5) is True


def test_a_position_past_the_chunk_or_a_close_releases_it_unsent() -> None:
    ahead = UploadCursor(0)
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(ahead.wait_turn, CHUNK, 5.0)
        ahead.advance(3 * CHUNK)  # a 416 re-sync: TikTok already holds chunks 1-3
        assert waiting.result(timeout=5) is False
        behind = UploadCursor(0)
        stuck = pool.submit(behind.wait_turn, 2 * CHUNK, 5.0)
        behind.advance(CHUNK)  # not its turn yet
        time.sleep(0.05)
        assert not stuck.done()
        behind.close()
        assert stuck.result(timeout=5) is False
    assert UploadCursor(0).wait_turn(0, 0) is True
    assert UploadCursor(0).wait_turn(CHUNK, 0.01) is False  # the safety timeout


def test_reset_reopens_a_closed_cursor_at_a_new_position() -> None:
    cursor = UploadCursor(0)
    cursor.close()
    assert cursor.wait_turn(0, 0) is False
    cursor.reset(4 * CHUNK)
    assert cursor.position == 4 * CHUNK and cursor.wait_turn(4 * CHUNK, 0) is True


def test_ledger_writes_run_in_ticket_order_even_when_a_later_one_is_ready_first() -> None:
    cursor = UploadCursor(0)
    first, second = cursor.advance(CHUNK), cursor.advance(2 * CHUNK)
    order: list[int] = []
    first_may_write = threading.Event()

    def write(ticket: int, gate: threading.Event | None) -> None:
        if gate is not None:
            gate.wait(5)
        with cursor.in_order(ticket):
            order.append(ticket)

    with ThreadPoolExecutor(2) as pool:
        late = pool.submit(write, second, None)
        time.sleep(0.05)
        assert not late.done()  # waits for the earlier ticket's write
        early = pool.submit(write, first, first_may_write)
        first_may_write.set()
        early.result(timeout=5), late.result(timeout=5)
    assert order == [first, second]


def test_a_failed_ledger_write_does_not_block_the_next_one() -> None:
    cursor = UploadCursor(0)
    first, second = cursor.advance(CHUNK), cursor.advance(2 * CHUNK)
    try:
        with cursor.in_order(first):
            raise OSError("database is locked")
    except OSError:
        pass
    t0 = time.monotonic()
    with cursor.in_order(second, timeout=30):
        pass
    assert time.monotonic() - t0 < 10  # released by the failure, not by the 30 s safety timeout


def test_a_window_opens_its_first_body_once_the_chunk_before_it_is_sending() -> None:
    """wait_until: go at the byte (or past it), stop on close; bounded by its timeout."""
    cursor = UploadCursor(0)
    with ThreadPoolExecutor(2) as pool:
        opening = pool.submit(cursor.wait_until, 2 * CHUNK, 5.0)
        cursor.advance(CHUNK)
        time.sleep(0.05)
        assert not opening.done()
        cursor.advance(2 * CHUNK)
        assert opening.result(timeout=5) is True
        closed = pool.submit(cursor.wait_until, 5 * CHUNK, 5.0)
        cursor.close()
        assert closed.result(timeout=5) is False
    assert UploadCursor(0).wait_until(CHUNK, 0.01) is False


def test_unanswered_puts_are_remembered_by_first_byte() -> None:
    cursor = UploadCursor(0)
    assert not cursor.was_unanswered(CHUNK)
    cursor.note_unanswered(CHUNK)
    assert cursor.was_unanswered(CHUNK) and not cursor.was_unanswered(0)
