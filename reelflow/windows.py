"""Pure planning of upload windows: runs of consecutive parts of a chunk plan, one task run each.

A Prefect task run costs the client ~5.6 ms of CPU, the server ~1.5 ms and a few state events
(README); one per 8 MiB part is ~640 000 task runs a day at 10 000 videos of 500 MB. A window
groups consecutive parts up to a byte budget, so the task unit is the window while the ledger,
the fence check and the progress stay per part.

Boundaries come from the plan alone (never from which parts are missing), so a window's
identity, and with it its cache key, is the same in every run of the same upload session.

Nothing here does I/O or imports boto3, prefect or threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from reelflow.planning import Chunk, ChunkPlan


@dataclass(frozen=True)
class Window:
    """Parts ``first_part..last_part`` (1-based, inclusive) of a plan, ``index`` 0-based."""

    index: int
    chunks: tuple[Chunk, ...]

    @property
    def first_part(self) -> int:
        return self.chunks[0].part_number

    @property
    def last_part(self) -> int:
        return self.chunks[-1].part_number

    @property
    def size_bytes(self) -> int:
        return sum(c.length for c in self.chunks)

    def __contains__(self, part_number: object) -> bool:
        return isinstance(part_number, int) and self.first_part <= part_number <= self.last_part


def plan_windows(plan: ChunkPlan, window_bytes: int) -> tuple[Window, ...]:
    """Cut ``plan`` into windows of consecutive parts of at most ``window_bytes`` each.

    A part larger than ``window_bytes`` is a window of its own, so a budget at or below the
    chunk size gives one part per window (the per-part task unit, which the bench compares).
    Greedy in plan order: every window but the last is as full as the budget allows.
    """
    if window_bytes < 1:
        raise ValueError(f"window_bytes must be >= 1, not {window_bytes}")
    windows: list[Window] = []
    run: list[Chunk] = []
    size = 0
    for chunk in plan.chunks:
        if run and size + chunk.length > window_bytes:
            windows.append(Window(len(windows), tuple(run)))
            run, size = [], 0
        run.append(chunk)
        size += chunk.length
    if run:
        windows.append(Window(len(windows), tuple(run)))
    return tuple(windows)
