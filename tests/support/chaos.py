"""Kill-point harness: watch a real ``reelflow`` subprocess step by step and SIGKILL it at a
drawn point.

Owns: following a child's Prefect task runs live (the task-run state events the child sends to
the Prefect API, read back from the API's event stream), grouping task names into the pipeline
steps the issue names, drawing seeded kill points across the steps a reference run went through,
killing the child's process group when its drawn step is reached (+ a seeded small offset),
telling which step the kill really landed in, and the tally table (printed past pytest's capture
by :func:`print_past_capture`).

Steps are discovered, never listed by hand: any task a reference run executes is a step (a task
nobody mapped keeps its own name), so a new task such as ``scan`` is drawn as soon as it runs.

Must not: know what a step does, assert anything about the pipeline, or touch pipeline code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The step names, keyed by the Prefect task names that implement them today. A task
# missing here is still a step: it is drawn under its own name.
STEP_OF_TASK = {
    "validate-video": "validate",
    "open-upload-session": "chunk-upload",
    "upload-window": "chunk-upload",
    "assemble-upload": "assemble",
    "make-thumbnail": "thumbnail",
    "scan-video": "scan",
    "store-media": "store",
    "query-creator-info": "creator-info",
    "init-tiktok-upload": "init",
    "tiktok-upload-window": "chunk-puts",
    "fetch-tiktok-status": "poll",
    "poll-tiktok-status": "poll",
}
# Prefect names a task run "<task name>-<3 hex digits>".
_RUN_SUFFIX = re.compile(r"-[0-9a-f]{3}$")
TERMINAL_STATES = frozenset({"Completed", "Failed", "Crashed", "Cancelled", "Cached"})
LIVE_STATES = frozenset({"Running", "Retrying"})
SUBSCRIBE_TIMEOUT_S = 60.0
STRAGGLER_WAIT_S = 0.5  # events the child sent just before it died are still on their way


def task_of_run(run_name: str) -> str:
    return _RUN_SUFFIX.sub("", run_name)


def step_of(task: str) -> str:
    return STEP_OF_TASK.get(task, task)


@dataclass(frozen=True)
class RunEvent:
    """One Prefect state event of a flow or task run, as this process received it."""

    received: float  # time.monotonic() here
    kind: str  # "flow-run" | "task-run"
    state: str  # "Running", "Completed", ...
    run_id: str
    name: str
    flow_run_id: str | None

    @property
    def task(self) -> str:
        return task_of_run(self.name)


class RunEvents:
    """Every flow/task-run state event on a Prefect API, collected by a background thread.

    ``with RunEvents(api_url) as events: ...; events.wait(predicate, timeout_s)``.
    """

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self._events: list[RunEvent] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-events", daemon=True)

    def __enter__(self) -> RunEvents:
        self._thread.start()
        if not self._ready.wait(SUBSCRIBE_TIMEOUT_S) or self._error is not None:
            raise RuntimeError(f"could not subscribe to Prefect events: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self._listen())
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported to the waiting test thread
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        from prefect.events.clients import PrefectEventSubscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        wanted = EventFilter(
            event=EventNameFilter(prefix=["prefect.flow-run.", "prefect.task-run."])
        )  # type: ignore[call-arg]
        async with PrefectEventSubscriber(api_url=self.api_url, filter=wanted) as events:
            self._ready.set()
            async for event in events:
                _, kind, state = event.event.split(".", 2)
                flow_run = event.resource_in_role.get("flow-run")
                run_id = event.resource.id.rsplit(".", 1)[-1]
                record = RunEvent(
                    received=time.monotonic(),
                    kind=kind,
                    state=state,
                    run_id=run_id,
                    name=event.resource.get("prefect.resource.name") or "",
                    flow_run_id=(
                        run_id
                        if kind == "flow-run"
                        else flow_run.id.rsplit(".", 1)[-1]
                        if flow_run is not None
                        else None
                    ),
                )
                with self._cond:
                    self._events.append(record)
                    self._cond.notify_all()

    def snapshot(self) -> list[RunEvent]:
        with self._cond:
            return list(self._events)

    def wait(self, found: Callable[[list[RunEvent]], Any], timeout_s: float) -> Any:
        """Block until ``found(events)`` is truthy (returns it) or ``timeout_s`` passes (None)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = found(list(self._events))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def flow_run_named(self, name: str, since: float) -> str | None:
        """The flow run called ``name`` whose events began after ``since``; failing that (the
        pipeline renamed its runs), the first flow run that began after ``since``."""
        began: dict[str, float] = {}
        names: dict[str, set[str]] = {}
        for ev in self.snapshot():
            if ev.kind == "flow-run":
                began.setdefault(ev.run_id, ev.received)
                names.setdefault(ev.run_id, set()).add(ev.name)
        fresh = [run for run, t in began.items() if t >= since]
        named = [run for run in fresh if name in names[run]]
        chosen = named or fresh
        return chosen[0] if chosen else None

    def task_events(self, flow_run_id: str) -> list[RunEvent]:
        return [e for e in self.snapshot() if e.kind == "task-run" and e.flow_run_id == flow_run_id]


@dataclass(frozen=True)
class StepTimeline:
    """Which steps a run went through, in order, and how often each started a task run."""

    order: tuple[str, ...]
    starts: dict[str, int]
    tasks: dict[str, tuple[str, ...]]

    @classmethod
    def from_events(cls, events: Iterable[RunEvent]) -> StepTimeline:
        order: list[str] = []
        starts: Counter[str] = Counter()
        tasks: dict[str, list[str]] = {}
        for ev in events:
            if ev.kind != "task-run" or ev.state != "Running":
                continue
            step = step_of(ev.task)
            if step not in order:
                order.append(step)
            starts[step] += 1
            if ev.task not in tasks.setdefault(step, []):
                tasks[step].append(ev.task)
        return cls(tuple(order), dict(starts), {k: tuple(v) for k, v in tasks.items()})


@dataclass(frozen=True)
class KillPoint:
    """Kill at the ``occurrence``-th task-run start of ``step``, ``offset_s`` after it."""

    index: int
    step: str
    occurrence: int
    offset_s: float

    def describe(self, seed: int) -> str:
        return (
            f"seed={seed} point={self.index} step={self.step} "
            f"occurrence={self.occurrence} offset={self.offset_s * 1000:.0f}ms"
        )


def draw_points(
    seed: int, count: int, timeline: StepTimeline, *, max_offset_s: float
) -> list[KillPoint]:
    """``count`` points: every step once (shuffled) before any step twice, then uniform."""
    rng = random.Random(seed)
    steps = list(timeline.order)
    chosen: list[str] = []
    while len(chosen) < count:
        rnd = steps[:]
        rng.shuffle(rnd)
        chosen.extend(rnd)
    return [
        KillPoint(
            index=i,
            step=step,
            occurrence=rng.randint(1, timeline.starts[step]),
            offset_s=round(rng.uniform(0.0, max_offset_s), 4),
        )
        for i, step in enumerate(chosen[:count])
    ]


@dataclass
class KillOutcome:
    """What happened to one child: killed (and where) or it ended on its own first."""

    killed: bool
    returncode: int | None
    flow_run_id: str | None
    landed_in: str  # the step of the task run live at the kill, or "after:<step>"
    events: list[RunEvent] = field(default_factory=list)
    log: str = ""


def landed_in(task_events: Sequence[RunEvent]) -> str:
    """The step whose task run was live when the events stop; else ``after:<last step>``."""
    last: dict[str, RunEvent] = {}
    for ev in task_events:
        last[ev.run_id] = ev
    live = [ev for ev in last.values() if ev.state not in TERMINAL_STATES]
    if live:
        return step_of(max(live, key=lambda e: e.received).task)
    done = [ev for ev in last.values() if ev.state in TERMINAL_STATES]
    if done:
        return "after:" + step_of(max(done, key=lambda e: e.received).task)
    return "before:first-task"


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and whatever it started, like a dead box
    proc.wait(timeout=30)


def run_and_kill(
    cmd: list[str],
    env: dict[str, str],
    events: RunEvents,
    *,
    flow_run_name: str,
    point: KillPoint,
    log_path: Path,
    timeout_s: float,
) -> KillOutcome:
    """Start ``cmd``; when its flow run starts ``point.step`` for the ``point.occurrence``-th
    time, wait ``point.offset_s`` and SIGKILL its process group."""
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    flow_run_id: str | None = None
    try:

        def reached(evs: list[RunEvent]) -> bool:
            nonlocal flow_run_id
            if proc.poll() is not None:
                return True
            flow_run_id = flow_run_id or events.flow_run_named(flow_run_name, started)
            if flow_run_id is None:
                return False
            starts = [
                e
                for e in evs
                if e.kind == "task-run"
                and e.flow_run_id == flow_run_id
                and e.state == "Running"
                and step_of(e.task) == point.step
            ]
            return len(starts) >= point.occurrence

        events.wait(reached, timeout_s)
        if proc.poll() is None:
            time.sleep(point.offset_s)
    finally:
        was_running = proc.poll() is None
        kill_group(proc)
    time.sleep(STRAGGLER_WAIT_S)
    flow_run_id = flow_run_id or events.flow_run_named(flow_run_name, started)
    task_evs = events.task_events(flow_run_id) if flow_run_id else []
    return KillOutcome(
        killed=was_running and proc.returncode == -signal.SIGKILL,
        returncode=proc.returncode,
        flow_run_id=flow_run_id,
        landed_in=landed_in(task_evs) if was_running else "finished",
        events=task_evs,
        log=log_path.read_text(errors="replace")[-3000:],
    )


@dataclass
class Tally:
    """Kill points per drawn step: how many, how many survived, where the kills landed."""

    rows: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    steps: tuple[str, ...] = ()  # as a reference run went through them

    def add(self, point: KillPoint, outcome: KillOutcome, survived: bool, note: str = "") -> None:
        row = self.rows.setdefault(point.step, Counter())
        row["points"] += 1
        row["survived"] += survived
        row["landed in step"] += outcome.landed_in == point.step
        if not survived:
            self.failures.append(f"{point.step}: {note}")

    def table(self, title: str) -> str:
        lines = [
            title,
            "steps: " + " > ".join(self.steps),
            f"{'step':<14}{'points':>8}{'survived':>10}{'landed in step':>16}",
        ]
        total: Counter[str] = Counter()
        for step, row in self.rows.items():
            total.update(row)
            lines.append(
                f"{step:<14}{row['points']:>8}{row['survived']:>10}{row['landed in step']:>16}"
            )
        lines.append(
            f"{'total':<14}{total['points']:>8}{total['survived']:>10}{total['landed in step']:>16}"
        )
        lines.extend(f"FAILED {f}" for f in self.failures)
        return "\n".join(lines)


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ (for in-process flows such as ``cleanup``), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def print_past_capture(request: Any, text: str) -> None:
    """Print ``text`` to the terminal even under pytest's output capture (a suite's tally)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + text)
