"""The catalog ledger on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

from storage.base import PartReceipt
from storage.catalog import Catalog
from tests.support.rows import upload_session


def test_ledger_records_reconciles_and_forgets(catalog: Catalog) -> None:
    """Parts are upserted by (upload, part number); forget drops exactly the named parts."""
    sid = f"u_{id(catalog)}"
    catalog.save_session(upload_session(sid, 3, staging_key="staging/x"))
    for n in (1, 2, 3):
        catalog.record_part(sid, "up1", (n - 1) * 10, PartReceipt(n, 10, f'"e{n}"', f"s{n}"))
    catalog.record_part(sid, "up1", 10, PartReceipt(2, 10, '"e2b"', "s2b"))  # re-sent part
    parts = catalog.ledger_parts("up1")
    assert sorted(parts) == [1, 2, 3] and parts[2].etag == '"e2b"'
    catalog.forget_parts("up1", {1, 3})
    assert sorted(catalog.ledger_parts("up1")) == [2]
    row = catalog.update_session(sid, status="completed", media_id="m_1")
    assert row.status == "completed"
    assert catalog.completed_session_for("fp", "file:///s").media_id == "m_1"  # type: ignore[union-attr]
    assert catalog.completed_session_for("fp", "file:///other") is None
