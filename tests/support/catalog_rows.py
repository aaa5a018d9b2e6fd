"""A catalog row read with plain SQL, for tests and benchmarks that treat reelflow as a black box.

The gateway's end-to-end tests and its benchmark read the ``gateway_upload`` and ``media`` rows
a gateway process wrote, without its models or repository functions (the code under test).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from storage.catalog import make_engine

_NAME = re.compile(r"[a-z_]+")  # table and column names are the caller's constants


def catalog_row(database_url: str, table: str, column: str, value: str) -> dict[str, Any] | None:
    """The row of ``table`` whose ``column`` is ``value``, as a dict; None when there is none."""
    if not (_NAME.fullmatch(table) and _NAME.fullmatch(column)):
        raise ValueError(f"not a table/column name: {table!r}, {column!r}")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT * FROM {table} WHERE {column} = :value"), {"value": value}
            ).first()
            return dict(row._mapping) if row is not None else None
    finally:
        engine.dispose()
