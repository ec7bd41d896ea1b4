"""The one reconciliation every fault case ends with.

Given what a case sent (one :class:`Sent` per message to a rejecting recipient) it
reads the store the way an operator would (plain SQL, no product code; the SQLite file
or a ``postgresql://`` URL) and, when a
webhook receiver is given, what that receiver accepted. It reports:

* ``lost``: a sent message with no stored bounce event for its recipient;
* ``duplicated``: more than one bounce event for one sent recipient;
* ``misattributed``: an event whose token is not valid, or whose message (by
  ``message_pk`` and ``original_message_id``) is not the one sent to that recipient,
  or whose recipient is not among that message's recipients;
* ``unforwarded``: an event that should reach the webhook but never was accepted;
* ``foreign_deliveries``: webhook ids the receiver accepted that name no expected event;
* ``bad_retries``: the same webhook id accepted with different bodies or with an
  ``Idempotency-Key`` other than the id (a duplicate is allowed only as a retry of
  the same key, byte-identical).

:func:`assert_reconciled` fails with all of it at once. Recipients must be unique per
case (each message has exactly one rejecting recipient).
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

from bouncetrack.harness.webhook_receiver import WebhookReceiver


@dataclass(frozen=True)
class Sent:
    """One message a case sent: its rejecting recipient and its Message-ID header."""

    recipient: str
    message_id: str
    forward: bool = True  # its event must reach the webhook receiver (when one is checked)


@dataclass
class Reconciliation:
    expected: int
    stored: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    misattributed: list[str] = field(default_factory=list)
    unforwarded: list[str] = field(default_factory=list)
    foreign_deliveries: list[str] = field(default_factory=list)
    bad_retries: list[str] = field(default_factory=list)
    webhook_duplicates: int = 0  # accepted more than once (same key, same body): allowed

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.misattributed or self.unforwarded
                    or self.foreign_deliveries or self.bad_retries)

    def summary(self) -> str:
        return (f"expected {self.expected}, stored {self.stored}, lost {len(self.lost)}, "
                f"duplicated {len(self.duplicated)}, misattributed {len(self.misattributed)}, "
                f"unforwarded {len(self.unforwarded)}, foreign {len(self.foreign_deliveries)}, "
                f"bad retries {len(self.bad_retries)}, webhook duplicates {self.webhook_duplicates}")

    def details(self) -> str:
        parts = [self.summary()]
        for name in ("lost", "duplicated", "misattributed", "unforwarded", "foreign_deliveries", "bad_retries"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}: {list(value)[:20]!r}")
        return "\n".join(parts)


def _query(db_path: Path | str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
    """Rows by column name; ``db_path`` is the SQLite file or a ``postgresql://`` URL."""
    if isinstance(db_path, str):
        return _query_pg(db_path, sql, args)
    if not db_path.exists():
        return []
    db = sqlite3.connect(db_path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # schema not there yet
        return []
    finally:
        db.close()


def _query_pg(url: str, sql: str, args: Sequence[Any]) -> list[Any]:
    import psycopg
    from psycopg.rows import dict_row

    try:
        with psycopg.connect(url, connect_timeout=10, row_factory=dict_row) as conn:
            return conn.execute(sql.replace("?", "%s").encode(), args).fetchall()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return []  # server down or schema not there yet: nothing stored as far as we can see


def bounce_events(db_path: Path | str, recipients: Iterable[str], event_type: str = "bounce") -> list[Any]:
    wanted = {r.lower() for r in recipients}
    return [e for e in _query(db_path, "SELECT * FROM events WHERE type = ? ORDER BY id", (event_type,))
            if (e["recipient"] or "").lower() in wanted]


def stored_count(db_path: Path | str, sent: Sequence[Sent], event_type: str = "bounce") -> int:
    """How many of ``sent`` have at least one event (for waiting)."""
    have = {(e["recipient"] or "").lower() for e in bounce_events(db_path, (s.recipient for s in sent), event_type)}
    return sum(1 for s in sent if s.recipient.lower() in have)


def reconcile(db_path: Path | str, sent: Sequence[Sent], receiver: WebhookReceiver | None = None,
              event_type: str = "bounce", other_cases: Collection[str] = ()) -> Reconciliation:
    """``other_cases``: webhook ids a shared receiver accepted for earlier cases."""
    by_rcpt = {s.recipient.lower(): s for s in sent}
    assert len(by_rcpt) == len(sent), "recipients must be unique within a case"
    result = Reconciliation(expected=len(sent))
    events = bounce_events(db_path, by_rcpt, event_type)
    result.stored = len(events)
    grouped: dict[str, list[sqlite3.Row]] = defaultdict(list)
    for e in events:
        grouped[e["recipient"].lower()].append(e)
    messages = {m["id"]: m for m in _query(db_path, "SELECT id, message_id FROM messages")}
    recipients: dict[int, set[str]] = defaultdict(set)
    for r in _query(db_path, "SELECT message_pk, address FROM recipients"):
        recipients[r["message_pk"]].add(r["address"].lower())
    for rcpt, s in by_rcpt.items():
        got = grouped.get(rcpt, [])
        if not got:
            result.lost.append(s.recipient)
            continue
        if len(got) > 1:
            result.duplicated[s.recipient] = len(got)
        for e in got:
            message = messages.get(e["message_pk"])
            if (e["token_status"] != "valid" or message is None or message["message_id"] != s.message_id
                    or e["original_message_id"] != s.message_id or rcpt not in recipients[e["message_pk"]]):
                result.misattributed.append(
                    f"{s.recipient}: token {e['token_status']}, message_pk {e['message_pk']}, "
                    f"message-id {e['original_message_id']!r} (sent {s.message_id!r})")
    if receiver is not None:
        expected_ids = {e["event_id"] for e in events if by_rcpt[e["recipient"].lower()].forward}
        accepted = set(receiver.accepted_ids())
        result.unforwarded = sorted(
            f"{e['recipient']} ({e['event_id']})" for e in events
            if e["event_id"] in expected_ids and e["event_id"] not in accepted)
        foreign = accepted - expected_ids - set(other_cases)
        result.foreign_deliveries = sorted(foreign)
        bodies: dict[str, bytes] = {}
        for req in (r for r in receiver.accepted() if r.webhook_id not in other_cases):
            wid = req.webhook_id or ""
            if req.idempotency_key != wid:
                result.bad_retries.append(f"{wid}: Idempotency-Key {req.idempotency_key!r}")
            if wid in bodies and bodies[wid] != req.body:
                result.bad_retries.append(f"{wid}: a retry with a different body")
            bodies.setdefault(wid, req.body)
            if req.duplicate:
                result.webhook_duplicates += 1
    return result


def wait_stored(stack: Any, sent: Sequence[Sent], timeout: float = 60.0, event_type: str = "bounce",
                db: Path | str | None = None) -> None:
    """Wait (flushing Postfix's deferred queue) until every sent recipient has an event,
    then until Postfix's queue is empty, so late duplicates would have arrived too.
    ``db``: the store to read when it is not the stack's SQLite file (a PostgreSQL URL)."""
    where = db if db is not None else stack.db_path
    try:
        stack.wait_for(lambda: stored_count(where, sent, event_type) >= len(sent), timeout)
        stack.wait_for(lambda: not stack.postfix.queue(), timeout)
    except TimeoutError:
        pass  # the reconciliation below says what is missing
    time.sleep(0.5)


def assert_reconciled(db_path: Path | str, sent: Sequence[Sent], receiver: WebhookReceiver | None = None,
                      event_type: str = "bounce", other_cases: Collection[str] = ()) -> Reconciliation:
    result = reconcile(db_path, sent, receiver, event_type, other_cases)
    assert result.ok, result.details()
    return result
