"""SQLite's CSV rendering: one ``printf`` a row, parsed back to the stored event.

:mod:`bouncetrack.store.sqlite_download` renders a CSV record with one
``printf`` a row. ``printf`` would cut a value at a NUL, so the store never
holds one in event text (sql.stored_text writes U+FFFD; migration 7 cleans
older rows). The record must parse back to event_to_json of the stored event
plus the CSV rules (quotes doubled, formula-looking text cells prefixed with an
apostrophe, NULL as an empty field).
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bouncetrack.core.events import event_to_json
from bouncetrack.store import sqlite_download as dl
from bouncetrack.store.base import BounceEvent
from bouncetrack.store.views import DownloadQuery
from bouncetrack.store.sqlite import SQLiteStore

TEXT_KEYS = [k for k, (kind, _) in dl._COLUMNS.items() if kind == "text"]
# Characters that matter to the rendering, and some others.
ALPHABET = st.sampled_from(['"', "'", "\x00", ",", "\r", "\n", "\t", "=", "+", "-", "@", "a", "é", "\u2028", "😀"])
VALUE = st.none() | st.text(ALPHABET, max_size=6)


def _event(**over: Any) -> BounceEvent:
    fields: dict[str, Any] = dict(
        event_id=uuid.uuid4().hex, type="bounce", hard=True, reason="userunknown", status="5.1.1",
        reply_code="550", diagnostic="d", recipient="u@x.test", reported_recipient="u@x.test",
        action="failed", remote_mta="dns; mx.x.test", domain="a.test", original_sender="n@a.test",
        original_message_id="<1@a.test>", token="t", token_status="valid", flagged=False,
        message_pk=None, received_at=1767225600.25, dedupe_key=uuid.uuid4().hex, sent_at=None,
    )
    fields.update(over)
    return BounceEvent(**fields)


def _expected_cells(event: BounceEvent) -> list[str]:
    cells = []
    for key, value in event_to_json(event).items():
        if value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        else:
            text = str(value)
            if dl._COLUMNS[key][0] == "text" and text[:1] in dl.CSV_FORMULA_PREFIXES:
                text = "'" + text
            cells.append(text)
    return cells


@settings(max_examples=300, deadline=None)
@given(values=st.fixed_dictionaries({k: VALUE for k in ("diagnostic", "recipient", "remote_mta", "status", "token")}),
       not_null=st.fixed_dictionaries({k: st.text(ALPHABET, max_size=4) for k in ("reason", "token_status")}))
def test_printf_record_parses_back_to_the_event(values: dict[str, Any], not_null: dict[str, str]) -> None:
    s = SQLiteStore(":memory:")
    try:
        e = _event(**values, **not_null)
        s.store_report([e], b"raw", [], uuid.uuid4().hex)
        stored = s.event(e.event_id)
        assert stored is not None
        # Text is stored without NUL (sql.stored_text), everything else as given.
        for key in (*values, *not_null):
            given_value = getattr(e, key)
            want = None if given_value is None else given_value.replace("\x00", "\ufffd")
            assert getattr(stored, key) == want
        q = DownloadQuery(domains=("a.test",), start=-1e12, end=1e12)
        [(_, record)] = s.rendered_page(q, "csv")
        [row] = list(csv.reader(io.StringIO(record, newline="")))
        assert row == _expected_cells(stored)
    finally:
        s.close()


def test_a_nul_is_stored_and_exported_as_the_replacement_character() -> None:
    s = SQLiteStore(":memory:")
    try:
        e = _event(diagnostic='a\x00"b', remote_mta="=\x00")
        s.store_report([e], b"raw", [], uuid.uuid4().hex)
        [(_, record)] = s.rendered_page(DownloadQuery(domains=("a.test",), start=-1e12, end=1e12), "csv")
        assert ',"a\ufffd""b",' in record and ",\"'=\ufffd\"," in record
    finally:
        s.close()


def test_migration_7_replaces_nul_in_events_stored_before(tmp_path: Any) -> None:
    """Rows written by an older release may hold a NUL; migration 7 cleans them."""
    import sqlite3

    from bouncetrack.store import migrations
    from bouncetrack.store.sql import EVENT_FIELDS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrations.migrate(conn, tuple(m for m in migrations.MIGRATIONS if m[0] < 7))
    e = _event(diagnostic="x", feedback_type="abuse")
    fields = [f for f in EVENT_FIELDS if f != "queue_id"]  # the schema before migration 9
    conn.execute(
        f"INSERT INTO events (raw_pk, {', '.join(fields)}) VALUES (?{', ?' * len(fields)})",
        (None, *(getattr(e, f) for f in fields)),
    )
    conn.execute("UPDATE events SET diagnostic = 'a' || char(0) || 'b', feedback_type = char(0), "
                 "recipient = NULL")
    assert migrations.migrate(conn, tuple(m for m in migrations.MIGRATIONS if m[0] <= 7)) == [7]
    row = conn.execute("SELECT diagnostic, feedback_type, recipient, reason FROM events").fetchone()
    assert row == ("a\ufffdb", "\ufffd", None, "userunknown")
    conn.close()
