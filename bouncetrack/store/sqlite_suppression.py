"""The suppression list's SQL for the SQLite store (issue 6; owner: suppression).

Functions take an open connection; :class:`~bouncetrack.store.sqlite.SQLiteStore`
wraps them in its transactions. Stdlib only: the pipe imports this module when a
report puts someone on the list (a few statements inside store_report's own
transaction, so the list and the events can never disagree).

``seq``: every write takes ``max(seq) + 1`` (one index probe on suppressions_seq)
inside its IMMEDIATE transaction, so change numbers grow in commit order and a
reader that saw seq N has seen every change up to N.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Generator, Sequence

from . import rows as _rows
from .base import SuppressionCandidate

if TYPE_CHECKING:
    from .views import Suppression, SuppressionChange
from .rows import ascii_lower  # lower-case the way SQLite's lower() does (ASCII only)

_COLUMNS = _rows.SUPPRESSION_COLUMNS
_NEXT_SEQ = "SELECT coalesce(max(seq), 0) + 1 FROM suppressions"

# The pipe's upsert. A conflicting row is replaced when it is not active any more
# (removed or expired): the address bounced again. An active row only ever gets a
# later expiry (and the newer event as its source); its created_at stays.
_UPSERT_AUTO = """
INSERT INTO suppressions
    (domain, address, reason, source_event_id, created_at, expires_at, removed_at, seq)
VALUES (:domain, :address, :reason, :source, :now, :expires, NULL, :seq)
ON CONFLICT (domain, address) DO UPDATE SET
    reason = excluded.reason,
    source_event_id = excluded.source_event_id,
    created_at = CASE WHEN suppressions.removed_at IS NULL
                       AND (suppressions.expires_at IS NULL OR suppressions.expires_at > :now)
                      THEN suppressions.created_at ELSE excluded.created_at END,
    expires_at = excluded.expires_at,
    removed_at = NULL,
    seq = excluded.seq
WHERE suppressions.removed_at IS NOT NULL
   OR (suppressions.expires_at IS NOT NULL
       AND (excluded.expires_at IS NULL OR excluded.expires_at > suppressions.expires_at))
"""

# By hand (CLI/API): what the operator says replaces what is there.
_UPSERT_MANUAL = """
INSERT INTO suppressions
    (domain, address, reason, source_event_id, created_at, expires_at, removed_at, seq)
VALUES (?, ?, ?, ?, ?, ?, NULL, ?)
ON CONFLICT (domain, address) DO UPDATE SET
    reason = excluded.reason,
    source_event_id = excluded.source_event_id,
    created_at = excluded.created_at,
    expires_at = excluded.expires_at,
    removed_at = NULL,
    seq = excluded.seq
"""

# Must repeat the partial index's WHERE (events_soft_bounces) to be able to use it.
_SOFT_COUNT = """
SELECT count(*) FROM events
WHERE type = 'bounce' AND hard = 0 AND flagged = 0
  AND domain = ? AND lower(recipient) = ? AND received_at >= ?
"""


def apply_candidates(conn: sqlite3.Connection, candidates: Sequence[SuppressionCandidate], now: float) -> int:
    """Write the pipe's candidates (inside the caller's transaction); returns rows written."""
    seq = int(conn.execute(_NEXT_SEQ).fetchone()[0])

    def soft_count(c: SuppressionCandidate) -> int:
        (count,) = conn.execute(_SOFT_COUNT, (c.domain, ascii_lower(c.address), c.soft_since)).fetchone()
        return int(count)

    def upsert(params: dict[str, Any]) -> int:
        return conn.execute(_UPSERT_AUTO, params).rowcount

    return _rows.apply_candidates(candidates, seq, soft_count, upsert)


def add(conn: sqlite3.Connection, entries: Sequence[Suppression]) -> int:
    seq = int(conn.execute(_NEXT_SEQ).fetchone()[0])
    conn.executemany(_UPSERT_MANUAL, _rows.suppression_manual_params(entries, seq))
    return len(entries)


def remove(
    conn: sqlite3.Connection, domains: Sequence[str] | None, addresses: Sequence[str], now: float
) -> list[tuple[str, str]]:
    """Tombstone the active entries; ``domains=None``: at every domain (a full scan, for the CLI)."""
    if domains is not None and not domains:
        return []
    seq = int(conn.execute(_NEXT_SEQ).fetchone()[0])
    active = "removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
    targets: list[tuple[str, str]] = []
    for address in addresses:
        if domains is None:
            rows = conn.execute(
                f"SELECT domain, address FROM suppressions WHERE address = ? AND {active}", (address, now)
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT domain, address FROM suppressions WHERE domain IN ({', '.join('?' for _ in domains)}) "
                f"AND address = ? AND {active}",
                (*domains, address, now),
            ).fetchall()
        targets.extend((r[0], r[1]) for r in rows)
    for i, (domain, address) in enumerate(targets):
        conn.execute(
            "UPDATE suppressions SET removed_at = ?, seq = ? WHERE domain = ? AND address = ?",
            (now, seq + i, domain, address),
        )
    return targets


def select(
    conn: sqlite3.Connection,
    domains: Sequence[str] | None,
    now: float,
    address: str | None,
    after_id: int,
    limit: int,
    include_inactive: bool,
) -> list[Suppression]:
    if (domains is not None and not domains) or limit <= 0:
        return []
    where = ["id > ?"]
    params: list[Any] = [after_id]
    if domains is not None:
        where.append(f"domain IN ({', '.join('?' for _ in domains)})")
        params.extend(domains)
    if address is not None:
        where.append("address = ?")
        params.append(address)
    if not include_inactive:
        where.append("removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
        params.append(now)
    params.append(limit)
    found = conn.execute(
        f"SELECT {_COLUMNS} FROM suppressions WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", params
    ).fetchall()
    return [_rows.suppression_from_row(r) for r in found]


def current_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM suppressions").fetchone()[0])


def keys(conn: sqlite3.Connection, now: float, batch: int) -> Generator[list[tuple[str, str]], None, None]:
    """Active (domain, address) pairs, ``batch`` at a time, from one statement."""
    cur = conn.execute(
        "SELECT domain, address FROM suppressions "
        "WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
        (now,),
    )
    try:
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield rows
    finally:
        cur.close()


def changes(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[SuppressionChange]:
    found = conn.execute(
        "SELECT seq, domain, address, removed_at IS NOT NULL, expires_at FROM suppressions "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [_rows.change_from_row(r) for r in found]


def expiring(conn: sqlite3.Connection, after: float, until: float) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT domain, address FROM suppressions "
        "WHERE expires_at IS NOT NULL AND removed_at IS NULL AND expires_at > ? AND expires_at <= ?",
        (after, until),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]
