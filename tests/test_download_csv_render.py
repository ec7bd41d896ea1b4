"""SQLite's CSV rendering: the ``printf`` form and the ``||`` form give the same bytes.

:mod:`bouncetrack.store.sqlite_download` renders a CSV record with one
``printf`` a row (fast), and with per-cell concatenation when a text value
holds a NUL (``printf`` would cut it there). Both must agree byte for byte
with each other and with event_to_json plus the CSV rules (quotes doubled,
formula-looking text cells prefixed with an apostrophe, NULL as an empty field).
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bouncetrack.events import event_to_json
from bouncetrack.store import sqlite_download as dl
from bouncetrack.store.base import BounceEvent, DownloadQuery
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
def test_printf_and_concatenation_render_the_same_bytes(values: dict[str, Any], not_null: dict[str, str]) -> None:
    s = SQLiteStore(":memory:")
    try:
        e = _event(**values, **not_null)
        s.store_report([e], b"raw", [], uuid.uuid4().hex)
        q = DownloadQuery(domains=("a.test",), start=-1e12, end=1e12)
        [(_, record)] = s.rendered_page(q, "csv")
        concatenated = " || ".join(dl._csv_cell("," if i else "", kind, sql)
                                   for i, (kind, sql) in enumerate(dl._COLUMNS.values()))
        with s._read("test") as conn:
            [(reference,)] = conn.execute(f"SELECT {concatenated} FROM events").fetchall()
        assert record == reference
        [row] = list(csv.reader(io.StringIO(record, newline="")))
        assert row == _expected_cells(s.event(e.event_id))  # type: ignore[arg-type]
    finally:
        s.close()


def test_a_nul_anywhere_keeps_the_whole_value() -> None:
    s = SQLiteStore(":memory:")
    try:
        e = _event(diagnostic='a\x00"b', remote_mta="=\x00")
        s.store_report([e], b"raw", [], uuid.uuid4().hex)
        [(_, record)] = s.rendered_page(DownloadQuery(domains=("a.test",), start=-1e12, end=1e12), "csv")
        assert ',"a\x00""b",' in record and ",\"'=\x00\"," in record
    finally:
        s.close()
