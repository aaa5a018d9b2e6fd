"""Pure planning of upload windows: which consecutive chunks of a plan one task sends.

One Prefect task per chunk cost ~26 task runs (and their state events) per 256 MiB on the
server and on the client's cores, which the TikTok leg paid inside its PUTs (issue 12). A window
groups consecutive chunks up to a byte budget into one task; the ledger stays per chunk (the
task writes each acknowledged position), so a window changes how often Prefect is told, never
what TikTok or the ledger hold.

Rules (checked by ``tests/unit/test_tiktok_windows.py``):

* a window starts at the chunk holding the given position (:func:`first_unacknowledged_chunk`)
  and holds at least that chunk, however large it is;
* it takes the following chunks while their total stays within ``window_bytes``;
* ``window_bytes`` at most one chunk gives one chunk per window: the earlier design, kept so
  both can be measured.

Must not: do I/O or know about Prefect; it only slices the plan.
"""

from __future__ import annotations

from reelflow.tiktok.plan import PlannedChunk, TikTokUploadPlan, first_unacknowledged_chunk

DEFAULT_WINDOW_BYTES = 64 * 1024 * 1024


def window_at(plan: TikTokUploadPlan, position: int, window_bytes: int) -> tuple[PlannedChunk, ...]:
    """The window that starts at the chunk holding ``position``; empty once all is sent."""
    first = first_unacknowledged_chunk(plan, position)
    stop, size = first, 0
    # Bounded by the plan's chunk count (at most 1000).
    while stop < plan.total_chunk_count:
        length = plan.chunks[stop].length
        if stop > first and size + length > window_bytes:
            break
        size += length
        stop += 1
    return plan.chunks[first:stop]


def chunk_starting_at(window: tuple[PlannedChunk, ...], position: int) -> int | None:
    """Index in ``window`` of the chunk whose first byte is ``position`` (None: not a boundary
    of this window, so the window has nothing to send from there)."""
    if not window or not window[0].first_byte <= position <= window[-1].last_byte:
        return None
    offset = (position - window[0].first_byte) // window[0].length
    if offset < len(window) and window[offset].first_byte == position:
        return offset
    return None
