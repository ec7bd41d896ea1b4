"""SQL for the download API on SQLite: scoped keyset queries and rows rendered by SQLite.

Why render in SQL: a full export of a million events must run within 3x a bare
``SELECT *`` over the same rows (issue 5). Building a dataclass, a dict and a
``json.dumps`` per row in Python costs about 15 us a row, several times the
bare select. SQLite's ``json_object``/``strftime``/``replace`` do the same work
in C and hand Python one string per row, which it only joins and encodes.

The rendering is *generated* from :func:`bouncetrack.core.events.event_to_json`, the
one event schema shared with the webhook: its keys, in its order, each with an
SQL expression that produces the same value. :data:`SCHEMA_KEYS` is checked
against ``event_to_json`` at import, so a key added there and forgotten here
fails loudly; the tests compare rendered rows with ``event_to_json`` on
generated events, timestamps' millisecond rounding included.

The selection (keyset, filters) is :func:`bouncetrack.store.sql.download_select`,
the same on both engines. Imported lazily by the SQLite dialect (the pipe never
pays for it).
"""

from __future__ import annotations

from ..core.events import EVENT_TYPES, event_to_json
from .base import BounceEvent
from .sql import CSV_FORMULA_PREFIXES, EVENT_KINDS


def _iso(col: str) -> str:
    """SQL for :func:`bouncetrack.core.events.iso_utc` of a REAL column, bit for bit.

    iso_utc: ``whole = floor(ts)``, ``millis = round((ts - whole) * 1000)`` with
    Python's round-half-even, carry into the next second at 1000. SQLite's
    ``round`` rounds halves away from zero (after adding 0.5 in floating
    point), so the rounding is spelled out: ``f = trunc(x)``, ``d = x - f``
    (exact), ``f + (d > .5) + (d = .5 and f odd)``. The result is kept as
    integer milliseconds so the carry needs no branch. SQLite evaluates a
    repeated subexpression each time, and this runs twice a row: the common
    case (ts >= 0, where CAST truncation is the floor) is kept short.
    """

    def millis(whole: str) -> str:
        x = f"(({col} - {whole}) * 1000.0)"
        f = f"CAST({x} AS INTEGER)"
        # d < .5 and d > .5 first: the exact half (f odd or not) is the rare case.
        return (
            f"({whole} * 1000 + {f} + CASE WHEN {x} - {f} < 0.5 THEN 0 "
            f"WHEN {x} - {f} > 0.5 THEN 1 ELSE {f} % 2 END)"
        )

    trunc = f"CAST({col} AS INTEGER)"
    floor = f"({trunc} - ({col} < {trunc}))"  # CAST truncates toward zero
    # Integer ms back to seconds: m / 1000.0 * 1000 lands within far less than
    # half a millisecond of m, and strftime rounds to the nearest ms: %f shows
    # exactly m's milliseconds, with no second evaluation of m.
    return (
        f"CASE WHEN {col} IS NULL THEN NULL "
        f"WHEN {col} >= 0 THEN strftime('%Y-%m-%dT%H:%M:%fZ', {millis(trunc)} / 1000.0, 'unixepoch') "
        f"ELSE strftime('%Y-%m-%dT%H:%M:%fZ', {millis(floor)} / 1000.0, 'unixepoch') END"
    )


_KNOWN_TYPES = ", ".join(f"'{t}'" for t in EVENT_TYPES)
_TYPE = f"CASE WHEN type IN ({_KNOWN_TYPES}) THEN type ELSE 'unknown' END"

_SQL = {"type": _TYPE, "severity": "CASE WHEN hard THEN 'hard' ELSE 'soft' END",
        "received_at": _iso("received_at"), "sent_at": _iso("sent_at")}
# Key of event_to_json -> (kind, SQL); kinds: sql.EVENT_KINDS.
_COLUMNS: dict[str, tuple[str, str]] = {k: (kind, _SQL.get(k, k)) for k, kind in EVENT_KINDS.items()}


def _schema_keys() -> tuple[str, ...]:
    sample = BounceEvent(
        event_id="", type="bounce", hard=False, reason="", status=None, reply_code=None,
        diagnostic=None, recipient=None, reported_recipient=None, action=None, remote_mta=None,
        domain=None, original_sender=None, original_message_id=None, token=None,
        token_status="", flagged=False, message_pk=None, received_at=0.0, dedupe_key="",
    )
    return tuple(event_to_json(sample))


SCHEMA_KEYS: tuple[str, ...] = _schema_keys()
if tuple(_COLUMNS) != SCHEMA_KEYS:  # pragma: no cover - fails the whole test suite at once
    raise RuntimeError(
        "bouncetrack.store.sqlite_download is out of step with events.event_to_json: "
        f"render keys {tuple(_COLUMNS)} != schema keys {SCHEMA_KEYS}"
    )


def _json_value(kind: str, sql: str) -> str:
    if kind == "bool":
        # json('true') carries SQLite's JSON subtype through CASE: a JSON true.
        return f"CASE WHEN {sql} THEN json('true') ELSE json('false') END"
    return sql


_FORMULA_STARTS = ", ".join(str(ord(c)) for c in CSV_FORMULA_PREFIXES)


def _csv_row() -> str:
    """SQL for one CSV record: one ``printf`` a row.

    ``printf`` builds the record in one buffer (the ``||`` form costs an
    allocation per concatenation, about fifty a row), and its ``%w`` doubles
    the double quotes inside a value (RFC 4180 §2). It would cut a value at a
    NUL, but stored event text holds none (sql.stored_text, migration 7): that
    invariant is what lets a row go without a NUL check per cell. The formula
    guard and the quotes of a text cell are ``%s`` arguments: nothing for NULL
    (an empty field), ``"`` or ``"'`` before the value (OWASP "CSV Injection":
    a formula-looking cell gets a leading apostrophe), ``"`` after it.
    """
    fmt: list[str] = []
    args: list[str] = []
    for i, (kind, sql) in enumerate(_COLUMNS.values()):
        lead = "," if i else ""
        if kind == "bool":
            fmt.append(f"{lead}%s")
            args.append(f"CASE WHEN {sql} THEN 'true' ELSE 'false' END")
        elif kind in ("word", "time"):  # our own vocabulary / digits; NULL prints as nothing
            fmt.append(f"{lead}%s")
            args.append(sql)
        else:
            fmt.append(f"{lead}%s%w%s")
            args.append(
                f"CASE WHEN {sql} IS NULL THEN '' "
                f"WHEN unicode({sql}) IN ({_FORMULA_STARTS}) THEN '\"''' ELSE '\"' END"
            )
            args.append(f"coalesce({sql}, '')")
            args.append(f"CASE WHEN {sql} IS NULL THEN '' ELSE '\"' END")
    return f"printf('{''.join(fmt)}', {', '.join(args)})"


RENDER_SQL: dict[str, str] = {
    "json": "json_object(" + ", ".join(f"'{k}', {_json_value(kind, sql)}" for k, (kind, sql) in _COLUMNS.items()) + ")",
    "csv": _csv_row(),
}

__all__ = ["CSV_FORMULA_PREFIXES", "RENDER_SQL", "SCHEMA_KEYS"]
