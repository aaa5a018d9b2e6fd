"""The CLI's live board (reelflow.cli_batch.LiveBoard) on a real catalog: part progress becomes
bytes of the source, a ``pipeline_stage`` row of the run's flow run (written by any process)
becomes its stage, and the outcome ends it. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from reelflow.batch import Result
from reelflow.cli_batch import LiveBoard
from reelflow.settings import Settings
from storage import stages
from storage.catalog import make_engine
from tests.support.waiting import wait_for


@dataclass
class _Run:
    id: uuid.UUID


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    return Settings(home=tmp_path / "home", database_url=request.getfixturevalue("pg_url"))


def test_bytes_then_stage_rows_then_the_outcome(settings: Settings) -> None:
    """3 of 4 parts of a 4 MB source show as 3.0 MB; a stage row of its flow run shows; another
    run's row does not; the outcome replaces the stage."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=150, color_system=None)
    run = _Run(uuid.uuid4())
    with LiveBoard(settings, console=console) as board:
        board.add("s3://b/clip.mp4", 4_000_000)
        task = board.progress.tasks[0]
        board.listener("s3://b/clip.mp4")(3, 4)
        assert task.completed == 3_000_000 and task.fields["stage"] == "uploading"
        board.on_running("s3://b/clip.mp4")(None, run, None)
        engine = make_engine(settings.resolved_database_url)
        stages.record(engine, "u_other", "published", flow_run_id=str(uuid.uuid4()))
        stages.record(engine, "u_1", "scanning", flow_run_id=str(run.id))
        wait_for(lambda: task.fields["stage"] == "scanning", "the stage row on the board", 10)
        stages.record(engine, "u_1", "storing", flow_run_id=str(run.id))
        wait_for(lambda: task.fields["stage"] == "storing", "the next stage row", 10)
        board.progress.refresh()
        assert "3.0 MB/4.0 MB" in buf.getvalue()
        board.finish("s3://b/clip.mp4", Result("s3://b/clip.mp4", "stored", media_id="m_1"))
        assert task.fields["stage"] == "stored" and task.completed == 4_000_000
    engine.dispose()
