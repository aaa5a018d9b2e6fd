"""The kill-suite harness's pure parts: step discovery, point drawing, where a kill landed."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from tests.support.chaos import RunEvent, StepTimeline, draw_points, landed_in, task_of_run


def ev(t: float, state: str, run: str, name: str) -> RunEvent:
    return RunEvent(
        received=t, kind="task-run", state=state, run_id=run, name=name, flow_run_id="f"
    )


TIMELINE = StepTimeline.from_events(
    [
        ev(0, "Running", "a", "validate-video-1a2"),
        ev(1, "Completed", "a", "validate-video-1a2"),
        ev(2, "Running", "b", "upload-window-0ff"),
        ev(2, "Running", "c", "upload-window-abc"),
        ev(3, "Running", "d", "scan-video-77e"),
        ev(4, "Running", "e", "brand-new-step-123"),
    ]
)


def test_timeline_groups_tasks_into_steps_and_keeps_unknown_tasks() -> None:
    """Task runs map to the issue's steps in order of first start; an unmapped task is a step."""
    assert TIMELINE.order == ("validate", "chunk-upload", "scan", "brand-new-step")
    assert TIMELINE.starts == {"validate": 1, "chunk-upload": 2, "scan": 1, "brand-new-step": 1}
    assert task_of_run("store-media-9c1") == "store-media"


@given(seed=st.integers(0, 2**32), count=st.integers(1, 60))
def test_points_cover_every_step_before_any_repeats(seed: int, count: int) -> None:
    """Each step is drawn once before any is drawn twice; occurrences stay within the timeline."""
    points = draw_points(seed, count, TIMELINE, max_offset_s=0.03)
    per_step = Counter(p.step for p in points)
    assert len(points) == count
    assert max(per_step.values()) - min(per_step.get(s, 0) for s in TIMELINE.order) <= 1
    assert all(1 <= p.occurrence <= TIMELINE.starts[p.step] for p in points)
    assert all(0 <= p.offset_s <= 0.03 for p in points)
    assert draw_points(seed, count, TIMELINE, max_offset_s=0.03) == points


def test_landed_in_names_the_live_task_or_the_last_finished() -> None:
    """A kill lands in the step of the newest live task run, else after the last finished one."""
    live = [
        ev(0, "Running", "a", "assemble-upload-111"),
        ev(1, "Running", "b", "make-thumbnail-222"),
    ]
    assert landed_in(live) == "thumbnail"
    done = [
        ev(0, "Running", "a", "assemble-upload-111"),
        ev(1, "Completed", "a", "assemble-upload-111"),
    ]
    assert landed_in(done) == "after:assemble"
    assert landed_in([]) == "before:first-task"
