"""``forget_address`` on SQLite (issue 16): everything the store holds about one address.

The contract is in :meth:`bouncetrack.store.interfaces.Store.forget_address`; this
runs inside the caller's write transaction. Events are found by a scan of the
events table (no index on the recipient: forgetting is rare, a scan of a million
events takes about a second).
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Sequence

from .base import REASON_FORGOTTEN
from .views import ForgetCounts

_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[object]) -> list[Sequence[object]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def forget(
    conn: sqlite3.Connection,
    address: str,
    domains: Sequence[str] | None,
    now: float,
    pseudonym: Callable[[str, str], str],
) -> ForgetCounts:
    if domains is not None and not domains:
        return ForgetCounts()
    in_scope = "" if domains is None else f" AND domain IN ({_marks(len(domains))})"
    scope: list[object] = [] if domains is None else list(domains)
    found = conn.execute(
        f"SELECT id, event_id, raw_pk FROM events WHERE (lower(recipient) = ? OR lower(reported_recipient) = ?)"
        f"{in_scope}",
        [address, address, *scope],
    ).fetchall()
    events = jobs = raw = 0
    for part in _chunks([r[1] for r in found]):
        jobs += conn.execute(f"DELETE FROM outbox WHERE event_id IN ({_marks(len(part))})", part).rowcount
        events += conn.execute(f"DELETE FROM events WHERE event_id IN ({_marks(len(part))})", part).rowcount
    for part in _chunks(sorted({r[2] for r in found if r[2] is not None})):
        raw += conn.execute(
            f"UPDATE raw_reports SET compressed = NULL WHERE id IN ({_marks(len(part))}) AND compressed IS NOT NULL",
            part,
        ).rowcount
    # Suppression entries become tombstones under a pseudonym: milters (which key
    # their index by a hash of domain and address) follow the change feed and drop
    # the entry; the address itself is gone from the row.
    listed = conn.execute(f"SELECT id, domain FROM suppressions WHERE address = ?{in_scope}",
                          [address, *scope]).fetchall()
    if listed:
        seq = int(conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM suppressions").fetchone()[0])
        for i, (row_id, domain) in enumerate(listed):
            alias = pseudonym(domain, address)
            conn.execute("DELETE FROM suppressions WHERE domain = ? AND address = ?", (domain, alias))
            conn.execute(
                "UPDATE suppressions SET address = ?, reason = ?, source_event_id = NULL, removed_at = ?, seq = ? "
                "WHERE id = ?",
                (alias, REASON_FORGOTTEN, now, seq + i, row_id),
            )
    msg_scope = "" if domains is None else (
        f" AND message_pk IN (SELECT id FROM messages WHERE sender_domain IN ({_marks(len(domains))}))")
    recipients = conn.execute(
        f"DELETE FROM recipients WHERE (lower(address) = ? OR lower(orcpt) = ?){msg_scope}",
        [address, "rfc822;" + address, *scope],
    ).rowcount
    return ForgetCounts(events=events, outbox_jobs=jobs, raw_reports=raw, suppressions=len(listed),
                        recipients=recipients)
