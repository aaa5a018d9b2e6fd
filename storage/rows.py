"""What every catalog table shares: UTC timestamp columns and the one-row write transactions.

Must not: define a table or know any table's columns beyond ``updated_at``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import DateTime
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel

from storage.clock import utcnow

RowT = TypeVar("RowT", bound=SQLModel)


def timestamp_field() -> Any:
    """A timezone-aware column that defaults to now (UTC)."""
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


def optional_timestamp_field() -> Any:
    """A timezone-aware column that starts empty."""
    return Field(default=None, sa_type=DateTime(timezone=True))


def update_row(engine: Engine, model: type[RowT], row_id: str, **fields: Any) -> RowT:
    """Set ``fields`` (and ``updated_at``) on one row by primary key, in one transaction."""
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(model, row_id)
        if row is None:
            raise KeyError(row_id)
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = utcnow()  # type: ignore[attr-defined]  # every catalog table has it
        return commit_row(s, row)


def commit_row(s: Session, row: RowT) -> RowT:
    """Add ``row`` to ``s``, commit, and return it as the database now holds it."""
    s.add(row)
    s.commit()
    s.refresh(row)
    return row
