"""The store, once for both engines: every query, in :class:`SQLStore` (callers
name it ``Store``, :mod:`.interfaces`), whose docstrings state the contracts.

SQL is written once, with ``?`` and ``:name`` parameters; what differs between
SQLite and PostgreSQL (parameter marks, a few functions, row locks, booleans,
transactions, connections, errors, rendering, exports) is asked of the store's
:class:`Dialect`, one small object per engine (:mod:`.sqlite`,
:mod:`.postgres`). The schema is the single list of :mod:`.migrations`.

Guarantees every method keeps on both engines:

* one connection per store object behind a lock, so the threaded milter may
  share it; a write is one transaction (SQLite ``BEGIN IMMEDIATE``: the write
  lock up front), committed on success and rolled back on any error;
* every failure that means "not now" (locked, busy, disk full, connection lost,
  timeouts) becomes :class:`StoreUnavailable`, which the pipe turns into exit 75
  so that Postfix retries; anything else is a bug and propagates;
* readers never hold the lock while a caller holds a yielded row (streams are
  keyset batches, or a connection of their own).

The SQLite pipe imports this module once per bounce: stdlib and ``.base``
only; the read-side records are imported where built.
"""

from __future__ import annotations

# Lazy imports: the read-side records (views) and the download's vocabulary (events) are built by
# the API's queries only, never on the pipe's path.

import hashlib
import json
import threading
import time
import zlib
from contextlib import contextmanager
import math
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Generator, Iterator, Mapping, Sequence

from .base import (
    DAY_SECONDS,
    REASON_FORGOTTEN,
    SEND_API_MESSAGE_ID_PREFIX,
    UNTRUSTED_OVER_QUOTA,
    BounceEvent,
    MessageRecord,
    OutboxJob,
    RecipientRecord,
    StoreOutcome,
    StoreUnavailable,
    SuppressionCandidate,
    UntrustedQuota,
    pipe_bucket,
)

if TYPE_CHECKING:  # read-side records: not built on the pipe's path (HACKING.md)
    from .views import (
        DailyCount,
        DownloadQuery,
        EventQuery,
        ForgetCounts,
        JobView,
        MetricCounts,
        PurgeCounts,
        Suppression,
        SuppressionChange,
    )


# --- records <-> rows: column lists, the parameters bound for a record, the record built
# from a row (the int() casts: PostgreSQL drivers may hand back other integer types).

RAW_COMPRESSION_LEVEL = 6
NEVER = -1.0e300  # a retention cutoff older than any row: "keep this kind"
FETCH_BATCH = 500
MAX_ERROR_LEN = 4000

EVENT_FIELDS = tuple(
    "event_id type hard reason status reply_code diagnostic recipient reported_recipient action remote_mta domain "
    "original_sender original_message_id token token_status flagged message_pk received_at dedupe_key "
    "feedback_type sent_at queue_id".split()
)
EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
# When the store was created: its first migration (metric_counts.created_at).
STORE_CREATED_SQL = "SELECT min(applied_at) FROM schema_migrations"
JOB_COLUMNS = (
    "id, event_id, channel, target, state, attempts, next_attempt_at, "
    "last_error, created_at, updated_at, lease_until"
)
_job_values = attrgetter("event_id", "channel", "target", "state", "attempts", "next_attempt_at", "last_error")
MESSAGE_COLUMNS = (
    "id, token_id, token, queue_id, message_id, sender_domain, envelope_sender, "
    "verp_sender, dsn_ret, dsn_envid, created_at"
)
# INSERT INTO messages (...) takes MESSAGE_COLUMNS without id, in message_params' order.
MESSAGE_INSERT_COLUMNS = MESSAGE_COLUMNS.removeprefix("id, ")
_message_values = attrgetter(*MESSAGE_INSERT_COLUMNS.split(", "))
RECIPIENT_COLUMNS = "id, address, orcpt, notify"
# The predicate of migration 11's partial index messages_send_api, verbatim: a query that
# names it may use the index (SQLite and PostgreSQL match it by its text).
SEND_API_MESSAGE = f"substr(message_id, 1, {len(SEND_API_MESSAGE_ID_PREFIX)}) = '{SEND_API_MESSAGE_ID_PREFIX}'"
# One message (message_params) and one recipient (recipient_params), in SQLite's parameter style.
MESSAGE_INSERT = f"INSERT INTO messages ({MESSAGE_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
RECIPIENT_INSERT = "INSERT INTO recipients (message_pk, address, orcpt, notify, position) VALUES (?, ?, ?, ?, ?)"
SUPPRESSION_COLUMNS = "id, domain, address, reason, source_event_id, created_at, expires_at, removed_at"

# Outbox jobs as the dashboard lists them (keys of SQLStore.dashboard_jobs).
DASH_JOB_KINDS = {
    "pending": "o.state = 'pending' AND o.attempts = 0",
    "failed": "o.state = 'pending' AND o.attempts > 0",
    "dead": "o.state = 'dead'",
    "delivered": "o.state = 'delivered'",
}
DASH_JOB_KIND_CASE = "CASE " + " ".join(f"WHEN {c} THEN '{k}'" for k, c in DASH_JOB_KINDS.items()) + " END"

# --- dashboard sent counts (message_days, rolled up by the worker) -------------


def day_start(t: float) -> int:
    """The UTC day that holds ``t``, as the epoch second it starts at."""
    return int(t // DAY_SECONDS) * DAY_SECONDS


def sent_windows(start: float, end: float, rolled_until: float) -> tuple[tuple[int, int] | None, list[tuple[float, float]]]:
    """Split ``[start, end)`` into whole rolled-up days and the ranges counted live.

    Returns (the ``[first day, end day)`` to read from message_days, or None; the
    ``[lo, hi)`` created_at ranges to count from the messages). Only whole UTC days
    before ``rolled_until`` come from the roll-up, so any bounds give exact counts;
    the dashboard's (whole days) need one live range at most, from the roll-up on.
    """
    first = math.ceil(start / DAY_SECONDS) * DAY_SECONDS
    last = min(day_start(end), day_start(rolled_until))
    if first >= last:
        return None, [(start, end)] if start < end else []
    live = [(lo, hi) for lo, hi in ((start, float(first)), (float(last), end)) if lo < hi]
    return (first, last), live


def roll_up_step(rolled: float, oldest: float | None, target: int) -> int:
    """Where one roll-up transaction stops: past one day of messages, at most ``target``.

    ``oldest`` is the first message at or after ``rolled``; a gap without
    messages is crossed in the same step.
    """
    if oldest is None or oldest >= target:
        return target
    return min(target, day_start(oldest) + DAY_SECONDS)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (as SQLite's lower() and domain names fold)."""
    return text.translate(_ASCII_LOWER)


def job_columns(alias: str) -> str:
    """JOB_COLUMNS qualified by a table alias (``o.id, o.event_id, …``)."""
    return ", ".join(f"{alias}.{c.strip()}" for c in JOB_COLUMNS.split(","))


# ------------------------------------------------------------ record -> params


def message_params(message: MessageRecord) -> tuple[Any, ...]:
    """The values of MESSAGE_INSERT_COLUMNS for ``message``."""
    return _message_values(message)


def recipient_params(message_pk: int, message: MessageRecord) -> list[tuple[Any, ...]]:
    """(message_pk, address, orcpt, notify, position) per recipient, in RCPT order."""
    return [(message_pk, r.address, r.orcpt, r.notify, i) for i, r in enumerate(message.recipients)]


NUL = "\x00"
REPLACEMENT_CHARACTER = "\ufffd"


def stored_text(value: Any) -> Any:
    """``value`` with every NUL replaced by U+FFFD; any other value unchanged.

    A stored event's text never holds a NUL: PostgreSQL's ``text`` cannot hold
    one (psycopg refuses the insert, and the pipe would tempfail that bounce
    forever), and SQLite's CSV rendering relies on it (``printf`` stops at a
    NUL; sqlite_download.py). A bounce whose diagnostic carries a NUL is mail
    from the wild, not a reason to lose it. The webhook and the SMTP forward
    read the stored event, so every output shows the same U+FFFD.
    """
    if type(value) is str and NUL in value:
        return value.replace(NUL, REPLACEMENT_CHARACTER)
    return value


def event_params(event: BounceEvent, raw_pk: int | None) -> tuple[Any, ...]:
    """(raw_pk, *EVENT_FIELDS) for ``event``, text without NUL (:func:`stored_text`)."""
    return (raw_pk, *(stored_text(getattr(event, f)) for f in EVENT_FIELDS))


def job_params(job: OutboxJob, now: float) -> tuple[Any, ...]:
    """Values of a new outbox row (event_id … updated_at); times unset (0) become ``now``."""
    return (*_job_values(job), job.created_at or now, job.updated_at or now)


# --------------------------------------------------------------- row -> record


def message_from_row(row: Sequence[Any], rcpts: Sequence[Sequence[Any]]) -> MessageRecord:
    """A MESSAGE_COLUMNS row with its RECIPIENT_COLUMNS rows (RCPT order)."""
    values = dict(zip(MESSAGE_COLUMNS.split(", "), row))
    values.update(id=int(row[0]), token_id=int(row[1]))
    recipients = tuple(RecipientRecord(id=int(r[0]), address=r[1], orcpt=r[2], notify=r[3]) for r in rcpts)
    return MessageRecord(**values, recipients=recipients)


def event_from_row(row: Sequence[Any]) -> BounceEvent:
    """An EVENT_FIELDS row."""
    values = dict(zip(EVENT_FIELDS, row))
    values["hard"] = bool(values["hard"])
    values["flagged"] = bool(values["flagged"])
    if values["message_pk"] is not None:
        values["message_pk"] = int(values["message_pk"])
    return BounceEvent(**values)


def job_from_row(row: Sequence[Any]) -> OutboxJob:
    """A JOB_COLUMNS row."""
    return OutboxJob(row[1], row[2], row[3], int(row[0]), row[4], int(row[5]), *row[6:11])


def job_view_from_row(row: Sequence[Any]) -> JobView:
    """JOB_COLUMNS then the event's domain, recipient and type."""
    from .views import JobView
    return JobView(job=job_from_row(row[:11]), domain=row[11], recipient=row[12], event_type=row[13])


def suppression_from_row(r: Sequence[Any]) -> Suppression:
    """A SUPPRESSION_COLUMNS row."""
    from .views import Suppression

    return Suppression(domain=r[1], address=r[2], reason=r[3], source_event_id=r[4], created_at=r[5],
                       expires_at=r[6], removed_at=r[7], id=int(r[0]))


# ------------------------------------------------------------- result assembly


def pending_age(now: float, oldest: float | None) -> float:
    """Seconds since the oldest pending job was created; 0 when none."""
    return max(0.0, now - oldest) if oldest is not None else 0.0


def keyed_events(found: Sequence[Sequence[Any]]) -> list[tuple[int, BounceEvent]]:
    """(id, event) per ``id, *EVENT_FIELDS`` row."""
    return [(int(r[0]), event_from_row(r[1:])) for r in found]


def job_kind_counts(found: Sequence[Sequence[Any]]) -> dict[str, int]:
    """dashboard_job_counts from (kind, count) rows of DASH_JOB_KIND_CASE; every kind present."""
    counts = {kind: 0 for kind in DASH_JOB_KINDS}
    for kind, n in found:
        if kind in counts:
            counts[kind] = int(n)
    return counts


class Dialect:
    """What differs between the engines. SQL fragments are attributes; the rest methods."""

    name = ""  # "SQLite" / "PostgreSQL", in error messages
    false = "0"  # a boolean literal: SQLite stores 0/1 (the partial indexes say `hard = 0`)
    real = "REAL"  # the float type, for casts of a bare parameter
    skip_locked = ""  # after a SELECT whose rows the statement updates: skip rows others hold
    for_update = ""  # after a SELECT whose rows the transaction then changes
    binary = ""  # collation of a ranking's tie-break: code points on both engines
    render_sql: dict[str, str] | None = None  # SQL rendering an event as json/csv, or None (Python)
    one_statement_record = False  # record_message is one statement (no transaction needed)

    def q(self, sql: str) -> Any:
        """``sql`` in the driver's parameter style (``?``/``:name`` are SQLite's own)."""
        return sql

    def fold(self, expr: str) -> str:
        """``expr`` with ASCII letters lower-cased (as SQLite's lower() does)."""
        return f"lower({expr})"

    def instr(self, haystack: str, needle: str) -> str:
        return f"instr({haystack}, {needle})"

    def utc_day(self, col: str) -> str:
        """The UTC day ``YYYY-MM-DD`` of an epoch-seconds column."""
        return f"strftime('%Y-%m-%d', {col}, 'unixepoch')"

    def int_floor(self, expr: str) -> str:
        """``expr`` (>= 0) truncated to an integer."""
        return f"CAST({expr} AS INTEGER)"

    def fold_param(self, text: str) -> str:
        """An address lower-cased the way the engine's lower() does (the soft-bounce count)."""
        return ascii_lower(text)

    # --- connections and transactions (every engine implements these)
    def connect(self, store: SQLStore) -> Any:
        """A new connection to the store (:meth:`configure` sets it up)."""
        raise NotImplementedError

    def configure(self, store: SQLStore, conn: Any) -> None:
        """Per-connection settings of a new connection."""

    def usable(self, conn: Any) -> bool:
        return True

    def unavailable(self, store: SQLStore, what: str, exc: BaseException) -> StoreUnavailable | None:
        """The StoreUnavailable that ``exc`` means, or None when it is a bug."""
        raise NotImplementedError

    def transaction(self, conn: Any) -> ContextManager[Any]:
        raise NotImplementedError

    def snapshot(self, conn: Any) -> ContextManager[Any]:
        """One read-only snapshot for several statements."""
        raise NotImplementedError

    def lock_suppressions(self, conn: Any) -> None:
        """Serialise suppression writes until commit, so change numbers grow in commit order."""

    def many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(self.q(sql), rows)

    def record_message(self, conn: Any, message: MessageRecord) -> int:
        """Insert the message and its recipients (inside a write transaction); messages.id."""
        raise NotImplementedError

    def record_messages(self, conn: Any, messages: Sequence[MessageRecord]) -> int:
        """Insert the messages not stored yet (by token_id) with their recipients; how many were new."""
        added = 0
        for message in messages:
            row = conn.execute(
                self.q(MESSAGE_INSERT + " ON CONFLICT (token_id) DO NOTHING RETURNING id"),
                message_params(message),
            ).fetchone()
            if row is not None:
                added += 1
                self.many(conn, RECIPIENT_INSERT, recipient_params(int(row[0]), message))
        return added

    def export_cursor(self, conn: Any, sql: str, params: Sequence[Any], batch: int) -> Any:
        """A cursor over one statement's rows, in one read-only snapshot, on ``conn``."""
        raise NotImplementedError

    def export(self, store: SQLStore, sql: str, params: Sequence[Any], batch: int) -> Iterator[list[Any]]:
        """Batches of one statement's rows, hence one snapshot, through a connection of
        its own, closed when the generator finishes or is closed: a long export neither
        holds the store's lock nor shares its connection (Starlette iterates in a
        thread pool)."""
        conn = store._connect("exporting events")
        try:
            with store._guard("exporting events"):
                cur = self.export_cursor(conn, sql, params, batch)
            yield from store._drain(cur, batch, locked=False)
        finally:
            conn.close()  # ends the transaction and the cursor with it


# --- retention (issue 6; owner: retention) ----------------------------------
_MAX_BATCH = 10000  # ids bound per statement (SQLite allows 32766 variables)
_CHUNK = 500  # ids per IN (...) list of forget
_INSERT_CHUNK = 1000  # events per INSERT statement (bind parameters stay within both engines' limits)
# One count per PurgeCounts field, in field order. An event *remains* after a
# purge if it is not older than :ecut or has a pending job; messages and raw
# report rows go only when no remaining event references them.
_PENDING = "EXISTS (SELECT 1 FROM outbox p WHERE p.event_id = e.event_id AND p.state = 'pending')"
_REMAINS = f"(e.received_at >= :ecut OR {_PENDING})"
_GONE_MESSAGES = (
    "SELECT m.id FROM messages m WHERE m.created_at < :mcut AND NOT EXISTS "
    f"(SELECT 1 FROM events e WHERE e.message_pk = m.id AND {_REMAINS})"
)
_RETENTION_COUNTS = (
    f"SELECT count(*) FROM events e WHERE e.received_at < :ecut AND NOT {_PENDING}",
    "SELECT count(*) FROM outbox o JOIN events e ON e.event_id = o.event_id "
    f"WHERE e.received_at < :ecut AND NOT {_PENDING}",
    "SELECT count(*) FROM raw_reports r WHERE r.received_at < :ecut AND NOT EXISTS "
    f"(SELECT 1 FROM events e WHERE e.raw_pk = r.id AND {_REMAINS})",
    f"SELECT count(*) FROM ({_GONE_MESSAGES}) g",
    f"SELECT count(*) FROM recipients WHERE message_pk IN ({_GONE_MESSAGES})",
    "SELECT count(*) FROM raw_reports WHERE compressed IS NOT NULL AND received_at < :rcut",
    f"SELECT count(*) FROM events e WHERE e.received_at < :ecut AND {_PENDING}",
)

_EVENT_ROW = "(?, " + ", ".join("?" for _ in EVENT_FIELDS) + ")"
_RECEIVED_AT = 1 + EVENT_FIELDS.index("received_at")  # in (id, *fields) rows
_JOB_INSERT = (
    "INSERT INTO outbox (event_id, channel, target, state, attempts, next_attempt_at, last_error, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, channel, target) DO NOTHING"
)
_PENDING_JOBS = (
    "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= :now), "
    "count(*) FILTER (WHERE lease_until > :now), min(created_at) FROM outbox WHERE state = 'pending'"
)
_ACTIVE = "removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
_DASH_JOB_COLUMNS = job_columns("o") + ", e.domain, e.recipient, e.type"
_SUP_SET = (
    "reason = excluded.reason, source_event_id = excluded.source_event_id, {created}"
    "expires_at = excluded.expires_at, removed_at = NULL, seq = excluded.seq"
)
_SUP_INSERT = (
    "INSERT INTO suppressions (domain, address, reason, source_event_id, created_at, expires_at, removed_at, seq) "
)
# The pipe's upsert. A conflicting row is replaced when it is not active any more
# (removed or expired): the address bounced again. An active row only ever gets a
# later expiry (and the newer event as its source); its created_at stays.
_SUP_UPSERT_AUTO = (
    _SUP_INSERT + "VALUES (:domain, :address, :reason, :source, :now, :expires, NULL, :seq) "
    "ON CONFLICT (domain, address) DO UPDATE SET "
    + _SUP_SET.format(
        created="created_at = CASE WHEN suppressions.removed_at IS NULL AND (suppressions.expires_at IS NULL "
        "OR suppressions.expires_at > :now) THEN suppressions.created_at ELSE excluded.created_at END, "
    )
    + " WHERE suppressions.removed_at IS NOT NULL OR (suppressions.expires_at IS NOT NULL AND "
    "(excluded.expires_at IS NULL OR excluded.expires_at > suppressions.expires_at))"
)
# By hand (CLI/API): what the operator says replaces what is there.
_SUP_UPSERT_MANUAL = (
    _SUP_INSERT + "VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (domain, address) DO UPDATE SET "
    + _SUP_SET.format(created="created_at = excluded.created_at, ")
)


def marks(values: Sequence[object]) -> str:
    """``?, ?, …`` for an IN list of ``values``."""
    return ", ".join("?" * len(values))


class SQLStore:
    """The store on SQL, for both engines (its :class:`Dialect` says what differs)."""

    dialect: Dialect
    timeout: float
    name: str  # the store as error messages name it (URL without password, or path)

    def __init__(self, dialect: Dialect, name: str, timeout: float) -> None:
        self.dialect = self.d = dialect
        self.name = name
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: Any = None

    # ----------------------------------------------------------------- plumbing

    def _open(self, migrate: Callable[[Any], object]) -> None:
        """Connect and migrate (the engine's constructor calls this once)."""
        with self._lock:
            conn = self._connect("opening")
            try:
                with self._guard("migrating"):
                    migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _connect(self, what: str) -> Any:
        with self._guard(what):
            conn = self.d.connect(self)
            try:
                self.d.configure(self, conn)
            except BaseException:
                conn.close()
                raise
            return conn

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = self.d.unavailable(self, what, exc)
            if mapped is not None:
                raise mapped from exc
            raise

    def _connection(self, what: str) -> Any:
        """The store's connection; a closed or broken one is replaced (fail-over, restart)."""
        conn = self._conn
        if conn is None or not self.d.usable(conn):
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = self._connect(what)
        return conn

    @contextmanager
    def _read(self, what: str) -> Iterator[Any]:
        with self._lock, self._guard(what):
            yield self._connection(what)

    @contextmanager
    def _write(self, what: str) -> Iterator[Any]:
        """One write transaction (committed on success, rolled back on any error)."""
        with self._lock, self._guard(what):
            conn = self._connection(what)
            with self.d.transaction(conn):
                yield conn

    def _x(self, conn: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        return conn.execute(self.d.q(sql), params)

    def _rows(self, what: str, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Every row of one read statement, under the store's lock."""
        with self._read(what) as conn:
            return list(self._x(conn, sql, params).fetchall())

    def _one(self, conn: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        row = conn.execute(self.d.q(sql), params).fetchone()
        assert row is not None
        return row[0]

    def _drain(self, cur: Any, batch: int, locked: bool) -> Iterator[list[Any]]:
        """``cur``'s rows, ``batch`` at a time, each fetch under the store's lock or only its guard."""
        while True:
            with self._read("exporting events") if locked else self._guard("exporting events"):
                found = cur.fetchmany(batch)
            if not found:
                return
            yield found

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------- milter side

    def record_message(self, message: MessageRecord) -> int:
        """Store the message and its recipients in one transaction; return messages.id."""
        # PostgreSQL records it in one statement, atomic without BEGIN/COMMIT round trips.
        with (self._read if self.d.one_statement_record else self._write)("recording a message") as conn:
            return self.d.record_message(conn, message)

    def record_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Store a batch of messages and their recipients in one transaction,
        idempotently: a token_id already stored is skipped (the milter journal's
        writer replays a segment after a crash). Returns how many were new."""
        if not messages:
            return 0
        with self._write("recording messages") as conn:
            return self.d.record_messages(conn, messages)

    def message_by_token_id(self, token_id: int) -> MessageRecord | None:
        return self._message(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE token_id = ?", (token_id,))

    def message_by_message_id(self, message_id: str, queue_id: str | None = None) -> MessageRecord | None:
        """The newest tracked message with this Message-ID (and queue id, if given).

        The send API generates a fresh Message-ID per request and looks its message
        up right after Postfix answered 250: the milter records it before that. Its
        Message-IDs (:data:`SEND_API_MESSAGE_ID_PREFIX`) are found through an index;
        any other is found by a scan of the table (no index taxes every message).
        """
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?"
        if message_id.startswith(SEND_API_MESSAGE_ID_PREFIX):
            sql += f" AND {SEND_API_MESSAGE}"  # the partial index's predicate: it serves the lookup
        args: tuple[str, ...] = (message_id,)
        if queue_id is not None:
            sql += " AND queue_id = ?"
            args += (queue_id,)
        return self._message(sql + " ORDER BY id DESC LIMIT 1", args)

    def _message(self, sql: str, args: Sequence[Any]) -> MessageRecord | None:
        with self._read("reading a message") as conn:
            row = self._x(conn, sql, args).fetchone()
            if row is None:
                return None
            rcpts = self._x(
                conn, f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_pk = ? ORDER BY position",
                (row[0],),
            ).fetchall()
        return message_from_row(row, rcpts)

    # ------------------------------------------------------------- pipe side

    def store_report(
        self, events: Sequence[BounceEvent], raw: bytes, jobs: Sequence[OutboxJob], dedupe_key: str, *,
        pipe_started: float | None = None, suppress: Sequence[SuppressionCandidate] = (),
        guards: Mapping[str, int] = {}, untrusted: UntrustedQuota | None = None,
    ) -> StoreOutcome:
        """Raw report, events and outbox jobs in ONE transaction, idempotently.

        A ``dedupe_key`` already stored means a retry of a report stored
        earlier (Postfix redelivering after a crash or a lost exit status):
        nothing is written and the first delivery's event ids are returned.
        Two pipes storing the same report at once (two nodes, or a redelivery
        racing the first run): the second one's insert of the dedupe key waits
        for the first one's commit, inserts nothing and returns its event ids.

        ``pipe_started`` (metrics): when the pipe began; the run is counted as
        ``stored`` or ``duplicate`` with its duration, in this transaction.
        ``suppress`` (issue 6): recipients to put on their domain's suppression
        list, written after the events (the soft-bounce rule counts them).
        ``guards`` (issue 16): the pipe's bounds that applied to this report,
        added to ``metric_pipe_guards``. ``untrusted``: the report has no valid
        token; when its host has used up its quota of the day, nothing of it is
        stored (``over_quota``, counted as a guard).
        """
        # Hash and compress before taking the write lock: keep it short.
        digest = hashlib.sha256(raw).hexdigest()
        compressed = zlib.compress(raw, RAW_COMPRESSION_LEVEL)
        now = time.time()
        received_at = events[0].received_at if events else now
        with self._write("storing a report") as conn:
            # A retry is told apart by the INSERT's ON CONFLICT below; looked up first only when
            # the untrusted quota counts the report (a retry must not count twice).
            row = (self._x(conn, "SELECT id FROM raw_reports WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
                   if untrusted is not None else None)
            if row is None:
                if untrusted is not None and not self._untrusted_allowed(conn, untrusted, received_at):
                    self._count_guards(conn, {**guards, UNTRUSTED_OVER_QUOTA: 1})
                    return StoreOutcome(stored=False, over_quota=True)
                row = self._x(
                    conn,
                    "INSERT INTO raw_reports (dedupe_key, sha256, size, compressed, received_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                    (dedupe_key, digest, len(raw), compressed, received_at),
                ).fetchone()
                if row is not None:
                    self._count_guards(conn, guards)
                    self._insert_report(conn, int(row[0]), events, jobs, suppress, now)
                    if pipe_started is not None:  # metrics (issue 5)
                        self._count_pipe_run(conn, "stored", pipe_started)
                    return StoreOutcome(stored=True, event_ids=tuple(e.event_id for e in events))
            ids = self._x(
                conn,
                "SELECT e.event_id FROM events e JOIN raw_reports r ON r.id = e.raw_pk "
                "WHERE r.dedupe_key = ? ORDER BY e.id",
                (dedupe_key,),
            ).fetchall()
            if pipe_started is not None:  # metrics (issue 5)
                self._count_pipe_run(conn, "duplicate", pipe_started)
            return StoreOutcome(stored=False, event_ids=tuple(r[0] for r in ids))

    def _insert_report(
        self, conn: Any, raw_pk: int, events: Sequence[BounceEvent], jobs: Sequence[OutboxJob],
        suppress: Sequence[SuppressionCandidate], now: float,
    ) -> None:
        # One INSERT per chunk: PostgreSQL's statement-level metrics trigger then
        # upserts the counter rows in key order (no deadlock between concurrent pipes).
        for start in range(0, len(events), _INSERT_CHUNK):
            chunk = events[start : start + _INSERT_CHUNK]
            self._x(
                conn,
                f"INSERT INTO events (raw_pk, {EVENT_COLUMNS}) VALUES " + ", ".join(_EVENT_ROW for _ in chunk),
                [v for e in chunk for v in event_params(e, raw_pk)],
            )
        if jobs:
            self.d.many(conn, _JOB_INSERT, [job_params(j, now) for j in jobs])
        if suppress:  # suppression list (issue 6): the candidates whose soft-bounce rule holds
            seq = self._next_seq(conn)  # a written row takes the next change number
            soft = (  # repeats the partial index's WHERE (events_soft_bounces): it is used
                "SELECT count(*) FROM events WHERE type = 'bounce' AND hard = {f} AND flagged = {f} "
                "AND domain = ? AND lower(recipient) = ? AND received_at >= ?"
            ).format(f=self.d.false)
            for c in suppress:
                if c.soft_bounce_limit > 0 and int(self._one(
                        conn, soft, (c.domain, self.d.fold_param(c.address), c.soft_since))) < c.soft_bounce_limit:
                    continue
                seq += bool(self._x(conn, _SUP_UPSERT_AUTO, {
                    "domain": c.domain, "address": c.address, "reason": c.reason, "source": c.source_event_id,
                    "now": c.created_at, "expires": c.expires_at, "seq": seq}).rowcount)

    def _count_guards(self, conn: Any, guards: Mapping[str, int]) -> None:
        # In key order: two pipes upserting the same rows never deadlock.
        counts = sorted((g, n) for g, n in guards.items() if n > 0)
        if counts:
            self.d.many(
                conn,
                "INSERT INTO metric_pipe_guards (guard, count) VALUES (?, ?) "
                "ON CONFLICT (guard) DO UPDATE SET count = metric_pipe_guards.count + excluded.count",
                counts,
            )

    def _untrusted_allowed(self, conn: Any, quota: UntrustedQuota, received_at: float) -> bool:
        """Count one more untrusted report of ``quota.host`` today; False past its quota.
        The upsert's row lock orders concurrent pipes."""
        day = int(received_at // DAY_SECONDS)
        self._x(conn, "DELETE FROM untrusted_reports WHERE day < ?", (day - 1,))
        count = self._one(
            conn,
            "INSERT INTO untrusted_reports (host, day, count) VALUES (?, ?, 1) ON CONFLICT (host, day) "
            "DO UPDATE SET count = untrusted_reports.count + 1 RETURNING count",
            (quota.host, day),
        )
        return int(count) <= quota.per_day

    def _count_pipe_run(self, conn: Any, outcome: str, started: float) -> None:
        seconds = max(0.0, time.time() - started)
        self._x(
            conn,
            "INSERT INTO metric_pipe_runs (outcome, le, count, seconds_sum) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (outcome, le) DO UPDATE SET count = metric_pipe_runs.count + 1, "
            "seconds_sum = metric_pipe_runs.seconds_sum + excluded.seconds_sum",
            (outcome, pipe_bucket(seconds), seconds),
        )

    def raw_report(self, event_id: str) -> bytes | None:
        """The raw report an event came from, decompressed; None if unknown or purged."""
        with self._read("reading a raw report") as conn:
            row = self._x(
                conn,
                "SELECT r.compressed FROM events e JOIN raw_reports r ON r.id = e.raw_pk WHERE e.event_id = ?",
                (event_id,),
            ).fetchone()
        return None if row is None or row[0] is None else zlib.decompress(bytes(row[0]))

    def event(self, event_id: str) -> BounceEvent | None:
        with self._read("reading an event") as conn:
            row = self._x(conn, f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else event_from_row(row)

    def events_between(
        self, start: float, end: float, domains: Sequence[str] | None = None
    ) -> Generator[BounceEvent, None, None]:
        """Events with ``start <= received_at < end``, ordered by (received_at, id).

        Keyset batches on (received_at, id): constant memory, the lock held per
        batch only, never while the caller holds a yielded event, and no
        transaction open between batches. ``domains=[]`` selects nothing;
        ``None`` every domain.
        """
        if domains is not None and not domains:
            return
        scope = "" if domains is None else f" AND domain IN ({marks(domains)})"
        last: tuple[float, int] | None = None
        while True:
            params: list[Any] = [start, end]
            keyset = ""
            if last is not None:
                keyset = " AND (received_at, id) > (?, ?)"
                params.extend(last)
            params.extend(domains or ())
            found = self._rows(
                "reading events",
                f"SELECT id, {EVENT_COLUMNS} FROM events WHERE received_at >= ? AND received_at < ?{keyset}"
                f"{scope} ORDER BY received_at, id LIMIT {FETCH_BATCH}",
                params,
            )
            for row in found:
                yield event_from_row(row[1:])
            if len(found) < FETCH_BATCH:
                return
            last = (float(found[-1][_RECEIVED_AT]), int(found[-1][0]))

    # --- Queries for the API (issue 5, download section; owner: download API).
    # Keyset on events.id; per domain one branch of a UNION ALL over the index
    # events_domain_id, merged in id order (no sort: a stream needs no temp
    # space). Rows rendered by the engine's SQL where it has some, else in Python.

    def events_page(self, query: DownloadQuery, after_id: int = 0, limit: int = 1000) -> list[tuple[int, BounceEvent]]:
        """Up to ``limit`` events with ``id > after_id`` in id order, as (id, event)."""
        if not query.domains or limit <= 0:
            return []
        sql, params = download_select(query, EVENT_COLUMNS, after_id, limit)
        return keyed_events(self._rows("reading a page of events", sql, params))

    def iter_events(self, query: DownloadQuery, after_id: int = 0) -> Iterator[tuple[int, BounceEvent]]:
        """Every event of the query after ``after_id``, in id order, streamed."""
        if not query.domains:
            return
        sql, params = download_select(query, EVENT_COLUMNS, after_id, None)
        for found in self.d.export(self, sql, params, FETCH_BATCH):
            yield from keyed_events(found)

    def rendered_page(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """Like :meth:`events_page`, each event rendered as ``fmt``: "json", the text of
        event_to_json(event); "csv", one record (no line end) of its keys, formula-safe."""
        if self.d.render_sql is None:
            return [(pk, RENDERERS[fmt](e)) for pk, e in self.events_page(query, after_id, limit)]
        if not query.domains or limit <= 0:
            return []
        sql, params = download_select(query, self.d.render_sql[fmt], after_id, limit)
        return [(int(r[0]), str(r[1])) for r in self._rows("reading a page of events", sql, params)]

    def iter_rendered(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, batch: int = 2000
    ) -> Iterator[list[tuple[int, str]]]:
        """Every event of the query after ``after_id``, rendered, in batches of ``batch`` rows.
        Constant memory whatever the range: one statement in id order, fetched in batches."""
        if not query.domains:
            return
        columns = EVENT_COLUMNS if self.d.render_sql is None else self.d.render_sql[fmt]
        sql, params = download_select(query, columns, after_id, None)
        for found in self.d.export(self, sql, params, batch):
            if self.d.render_sql is None:
                yield [(int(r[0]), RENDERERS[fmt](event_from_row(r[1:]))) for r in found]
            else:
                yield [(int(r[0]), str(r[1])) for r in found]

    # --- Retention (issue 6, retention section; owner: retention): keyset walks in
    # (time, id) order, each batch deleted by id in its own short transaction, so
    # pipes and the milter wait at most one batch. Cutoffs are epoch seconds (rows
    # strictly older go). An event with a pending outbox job is never deleted (nor
    # its job); its delivered/dead jobs go with it. A message goes only when no
    # remaining event references it (its recipients with it); a raw_reports row
    # only when no remaining event references it. No delete triggers exist, so the
    # metric counters (cumulative totals) are left as they are.

    def purge_raw_before(self, cutoff: float, batch: int = 1000) -> int:
        """Drop the compressed bodies of reports received before ``cutoff``; returns how many.

        Event rows stay, and so do the raw_reports rows (their dedupe keys keep
        deduplicating late retries); only the bodies go, in batches of short
        transactions (rows another transaction holds are left for the next run).
        """
        total = 0
        while True:
            with self._write("purging raw reports") as conn:
                n = self._x(
                    conn,
                    "UPDATE raw_reports SET compressed = NULL WHERE id IN (SELECT id FROM raw_reports "
                    f"WHERE compressed IS NOT NULL AND received_at < ? LIMIT ?{self.d.skip_locked})",
                    (cutoff, batch),
                ).rowcount
            total += int(n)
            if n < batch:
                return total

    def purge_counts(
        self, events_before: float | None, messages_before: float | None, raw_before: float | None
    ) -> PurgeCounts:
        """What a purge with these cutoffs would delete (dry run), in one read snapshot."""
        from .views import PurgeCounts

        p = {k: NEVER if cut is None else cut  # None: keep that kind
             for k, cut in (("ecut", events_before), ("mcut", messages_before), ("rcut", raw_before))}
        with self._read("counting what retention would purge") as conn, self.d.snapshot(conn):
            return PurgeCounts(*(int(self._one(conn, sql, p)) for sql in _RETENTION_COUNTS))

    def _keyset_walk(self, what: str, table: str, time_col: str, cutoff: float, batch: int) -> Iterator[tuple[Any, list[int]]]:
        """Ids of ``table`` with ``time_col < cutoff`` in (time, id) order, ``batch`` at a
        time (at most _MAX_BATCH), each batch yielded as ``(conn, ids)`` inside its own
        short write transaction (committed when the caller asks for the next)."""
        batch = max(1, min(batch, _MAX_BATCH))
        last: tuple[float, int] = (NEVER, 0)
        while True:
            with self._write(what) as conn:
                found = self._x(
                    conn,
                    f"SELECT id, {time_col} FROM {table} WHERE {time_col} < ? AND ({time_col}, id) > (?, ?) "
                    f"ORDER BY {time_col}, id LIMIT ?",
                    (cutoff, last[0], last[1], batch),
                ).fetchall()
                if found:
                    last = (float(found[-1][1]), int(found[-1][0]))
                    yield conn, [int(r[0]) for r in found]
            if len(found) < batch:
                return

    def purge_events_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete events received before ``cutoff`` with their settled jobs, then raw
        report rows received before ``cutoff`` that no event references.

        A job a concurrent ``replay_job`` turns pending is not deleted (the
        DELETE re-checks the row's state) and keeps its event (the events
        DELETE, a later statement, sees it).
        """
        from .views import PurgeCounts

        events = jobs = kept = reports = 0
        for conn, ids in self._keyset_walk("purging events", "events", "received_at", cutoff, batch):
            jobs += self._x(
                conn,
                "DELETE FROM outbox WHERE state <> 'pending' AND event_id IN (SELECT e.event_id FROM events e "
                f"WHERE e.id IN ({marks(ids)}) AND NOT {_PENDING})",
                ids,
            ).rowcount
            n = self._x(
                conn,
                f"DELETE FROM events WHERE id IN ({marks(ids)}) AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.event_id = events.event_id)",
                ids,
            ).rowcount
            events += n
            kept += len(ids) - n
        for conn, ids in self._keyset_walk("purging raw reports", "raw_reports", "received_at", cutoff, batch):
            reports += self._x(
                conn,
                f"DELETE FROM raw_reports WHERE id IN ({marks(ids)}) AND NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.raw_pk = raw_reports.id)",
                ids,
            ).rowcount
        return PurgeCounts(events=events, outbox_jobs=jobs, reports=reports, events_kept_pending=kept)

    def purge_messages_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete messages recorded before ``cutoff`` that no event references, with their recipients."""
        from .views import PurgeCounts

        messages = recipients = 0
        for conn, ids in self._keyset_walk("purging messages", "messages", "created_at", cutoff, batch):
            free = [int(r[0]) for r in self._x(
                conn,
                f"SELECT m.id FROM messages m WHERE m.id IN ({marks(ids)}) AND NOT EXISTS "
                f"(SELECT 1 FROM events e WHERE e.message_pk = m.id){self.d.for_update}",
                ids,
            ).fetchall()]
            if free:
                recipients += self._x(conn, f"DELETE FROM recipients WHERE message_pk IN ({marks(free)})", free).rowcount
                messages += self._x(conn, f"DELETE FROM messages WHERE id IN ({marks(free)})", free).rowcount
        return PurgeCounts(messages=messages, recipients=recipients)

    # ---------------------------------------------------------------- forget

    def forget_address(
        self, address: str, domains: Sequence[str] | None, now: float, pseudonym: Callable[[str, str], str]
    ) -> ForgetCounts:
        """Forget ``address`` (lower-case) in one transaction: delete the events
        naming it (recipient or reported recipient, case-insensitive) with their
        outbox jobs, drop the raw bodies of their reports, delete the recipient
        rows naming it, and turn its suppression entries into tombstones whose
        address is ``pseudonym(domain, address)`` (removed now, with a new change
        number, so milters learn of it). ``domains``: only within these sender
        domains; None: everywhere (the CLI).

        Events are found by a scan (no index on the recipient: forgetting is rare,
        a million events take about a second).
        """
        from .views import ForgetCounts

        if domains is not None and not domains:
            return ForgetCounts()
        in_scope = "" if domains is None else f" AND domain IN ({marks(domains)})"
        scope: list[Any] = list(domains or ())
        with self._write("forgetting an address") as conn:
            found = self._x(
                conn,
                f"SELECT event_id, raw_pk FROM events WHERE (lower(recipient) = ? OR lower(reported_recipient) = ?)"
                f"{in_scope}",
                [address, address, *scope],
            ).fetchall()
            events = jobs = raw = 0
            for part in _chunks([r[0] for r in found]):
                jobs += self._x(conn, f"DELETE FROM outbox WHERE event_id IN ({marks(part)})", part).rowcount
                events += self._x(conn, f"DELETE FROM events WHERE event_id IN ({marks(part)})", part).rowcount
            for part in _chunks(sorted({r[1] for r in found if r[1] is not None})):
                raw += self._x(
                    conn,
                    f"UPDATE raw_reports SET compressed = NULL WHERE id IN ({marks(part)}) AND compressed IS NOT NULL",
                    part,
                ).rowcount
            # Suppression entries become tombstones under a pseudonym, with new change
            # numbers: milters (which key their index by a hash of domain and address)
            # follow the change feed and drop the entry; the address is gone from the row.
            seq = self._next_seq(conn)
            listed = self._x(
                conn, f"SELECT id, domain FROM suppressions WHERE address = ?{in_scope} ORDER BY id{self.d.for_update}",
                [address, *scope],
            ).fetchall()
            for i, (row_id, domain) in enumerate(listed):
                alias = pseudonym(domain, address)
                self._x(conn, "DELETE FROM suppressions WHERE domain = ? AND address = ?", (domain, alias))
                self._x(
                    conn,
                    "UPDATE suppressions SET address = ?, reason = ?, source_event_id = NULL, removed_at = ?, seq = ? "
                    "WHERE id = ?",
                    (alias, REASON_FORGOTTEN, now, seq + i, row_id),
                )
            msg_scope = "" if domains is None else (
                f" AND message_pk IN (SELECT id FROM messages WHERE sender_domain IN ({marks(domains)}))")
            recipients = self._x(
                conn,
                f"DELETE FROM recipients WHERE (lower(address) = ? OR lower(orcpt) = ?){msg_scope}",
                [address, "rfc822;" + address, *scope],
            ).rowcount
        return ForgetCounts(events=events, outbox_jobs=jobs, raw_reports=raw, suppressions=len(listed),
                            recipients=recipients)

    # ----------------------------------------------------------------- outbox

    def claim_jobs(self, now: float, limit: int, lease_seconds: float) -> list[OutboxJob]:
        """Lease up to ``limit`` due jobs until ``now + lease_seconds``.

        One statement in one write transaction: two workers never claim the same
        job (SQLite: the write lock; PostgreSQL: ``FOR UPDATE SKIP LOCKED``, a job
        another worker is claiming is skipped, not waited for). A worker that dies
        lets its lease expire and the job becomes claimable again (at-least-once).
        """
        if limit <= 0:
            return []
        with self._write("claiming outbox jobs") as conn:
            found = self._x(
                conn,
                "UPDATE outbox SET lease_until = :until, updated_at = :now WHERE id IN (SELECT id FROM outbox "
                "WHERE state = 'pending' AND next_attempt_at <= :now AND (lease_until IS NULL OR lease_until <= :now) "
                f"ORDER BY next_attempt_at, id LIMIT :n{self.d.skip_locked}) RETURNING {JOB_COLUMNS}",
                {"now": now, "n": limit, "until": now + lease_seconds},
            ).fetchall()
        return sorted((job_from_row(r) for r in found), key=lambda j: (j.next_attempt_at, j.id or 0))

    def job_delivered(self, job_id: int, now: float) -> None:
        with self._write("marking a job delivered") as conn:
            self._x(conn, "UPDATE outbox SET state = 'delivered', lease_until = NULL, updated_at = ? WHERE id = ?",
                    (now, job_id))

    def job_failed(self, job_id: int, now: float, error: str, next_attempt_at: float | None) -> None:
        """Count a failed attempt; ``next_attempt_at=None`` dead-letters the job.

        Only a pending job changes: a late failure report never undoes a
        delivery or a dead-lettering recorded meanwhile.
        """
        nxt = f"CAST(:next AS {self.d.real})"
        with self._write("recording a job failure") as conn:
            self._x(
                conn,
                "UPDATE outbox SET attempts = attempts + 1, last_error = :err, lease_until = NULL, updated_at = :now, "
                f"state = CASE WHEN {nxt} IS NULL THEN 'dead' ELSE 'pending' END, "
                f"next_attempt_at = COALESCE({nxt}, next_attempt_at) WHERE id = :id AND state = 'pending'",
                {"err": error[: MAX_ERROR_LEN], "now": now, "next": next_attempt_at, "id": job_id},
            )

    def jobs(self, state: str | None = None, limit: int = 100) -> list[OutboxJob]:
        """Jobs, newest first, optionally of one state (for the CLI)."""
        where, params = ("", [limit]) if state is None else (" WHERE state = ?", [state, limit])
        found = self._rows("listing jobs", f"SELECT {JOB_COLUMNS} FROM outbox{where} ORDER BY id DESC LIMIT ?", params)
        return [job_from_row(r) for r in found]

    def replay_job(self, job_id: int, now: float) -> bool:
        """Make a job pending again, due now, attempts reset; False if no such job.

        A pending job keeps its lease (a worker may be delivering it right now).
        """
        with self._write("replaying a job") as conn:
            n = self._x(
                conn,
                "UPDATE outbox SET lease_until = CASE WHEN state = 'pending' THEN lease_until ELSE NULL END, "
                "state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (now, now, job_id),
            ).rowcount
        return int(n) > 0

    def outbox_stats(self, now: float) -> dict[str, float]:
        """Counts per state, due/leased pending jobs, age of the oldest pending job.

        Keys: ``pending``, ``delivered``, ``dead``, ``due`` (pending and due
        now), ``leased`` (pending, held by a worker), ``oldest_pending_age``
        (seconds since the oldest pending job was created; 0 when none).
        """
        with self._read("reading outbox statistics") as conn:
            states = self._x(conn, "SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
            _, due, leased, oldest = self._x(conn, _PENDING_JOBS, {"now": now}).fetchone()
        stats: dict[str, float] = {"pending": 0, "delivered": 0, "dead": 0}
        stats.update((state, int(n)) for state, n in states)
        return {**stats, "due": int(due), "leased": int(leased), "oldest_pending_age": pending_age(now, oldest)}

    # --- Metrics (issue 5, Prometheus section; owner: metrics). The counter tables
    # are kept by triggers (migration 3); reading them costs a few small scans.

    def metric_counts(self, now: float) -> MetricCounts:
        """The metric counters and the outbox gauges, in one snapshot."""
        from .views import MetricCounts

        with self._read("reading metric counters") as conn, self.d.snapshot(conn):
            found = [
                self._x(conn, sql).fetchall()
                for sql in (
                    "SELECT domain, type, reason, hard, token_status, feedback_type, count FROM metric_event_counts",
                    "SELECT domain, count FROM metric_message_counts",
                    "SELECT channel, outcome, count FROM metric_delivery_counts",
                    "SELECT outcome, le, count, seconds_sum FROM metric_pipe_runs",
                    "SELECT guard, count FROM metric_pipe_guards",
                )
            ]
            outbox = self._x(conn, _PENDING_JOBS, {"now": now}).fetchone()
            dead = self._one(conn, "SELECT count(*) FROM outbox WHERE state = 'dead'")
            created = self._one(conn, STORE_CREATED_SQL)
        events, messages, deliveries, runs, guards = found
        pending, due, leased, oldest = outbox
        return MetricCounts(
            events=tuple((r[0], r[1], r[2], bool(r[3]), r[4], r[5], int(r[6])) for r in events),
            messages=tuple((r[0], int(r[1])) for r in messages),
            deliveries=tuple((r[0], r[1], int(r[2])) for r in deliveries),
            pipe_runs=tuple((r[0], float(r[1]), int(r[2]), float(r[3])) for r in runs),
            pipe_guards=tuple((r[0], int(r[1])) for r in guards),
            outbox_pending=int(pending), outbox_due=int(due), outbox_leased=int(leased), outbox_dead=int(dead),
            outbox_oldest_pending_age=pending_age(now, oldest), store_created_at=float(created or 0.0),
        )

    # --- Suppression list (issue 6, suppression section; owner: suppression).
    # ``seq``: every write takes ``max(seq) + 1`` (one index probe) under the
    # engine's suppression write lock, so change numbers grow in commit order and
    # a reader that saw seq N has seen every change up to N.

    def _next_seq(self, conn: Any) -> int:
        self.d.lock_suppressions(conn)
        return int(self._one(conn, "SELECT coalesce(max(seq), 0) + 1 FROM suppressions"))

    def suppressions(
        self, domains: Sequence[str] | None, now: float, *, address: str | None = None, after_id: int = 0,
        limit: int = 1000, include_inactive: bool = False,
    ) -> list[Suppression]:
        """Entries of ``domains`` (``()`` nothing, None every domain: CLI only), keyset on id."""
        if (domains is not None and not domains) or limit <= 0:
            return []
        where = ["id > ?"]
        params: list[Any] = [after_id]
        if domains is not None:
            where.append(f"domain IN ({marks(domains)})")
            params.extend(domains)
        if address is not None:
            where.append("address = ?")
            params.append(address)
        if not include_inactive:
            where.append(_ACTIVE)
            params.append(now)
        params.append(limit)
        found = self._rows(
            "listing suppressions",
            f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            params,
        )
        return [suppression_from_row(r) for r in found]

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        """Put entries on the list by hand (replacing what is there); returns how many."""
        if not entries:
            return 0
        with self._write("adding suppressions") as conn:
            seq = self._next_seq(conn)
            self.d.many(conn, _SUP_UPSERT_MANUAL, [
                (e.domain, e.address, e.reason, e.source_event_id, e.created_at, e.expires_at, seq + i)
                for i, e in enumerate(entries)])
        return len(entries)

    def remove_suppressions(
        self, domains: Sequence[str] | None, addresses: Sequence[str], now: float
    ) -> list[tuple[str, str]]:
        """Tombstone the active entries; returns the (domain, address) removed, each with
        its own change number in that order. ``domains=None``: at every domain (the CLI)."""
        if (domains is not None and not domains) or not addresses:
            return []
        in_scope = "" if domains is None else f"domain IN ({marks(domains)}) AND "
        targets: list[tuple[str, str]] = []
        with self._write("removing suppressions") as conn:
            seq = self._next_seq(conn)
            for address in addresses:
                found = self._x(
                    conn,
                    f"SELECT domain, address FROM suppressions WHERE {in_scope}address = ? AND {_ACTIVE} "
                    f"ORDER BY id{self.d.for_update}",
                    (*(domains or ()), address, now),
                ).fetchall()
                targets.extend((r[0], r[1]) for r in found)
            if targets:
                self.d.many(
                    conn, "UPDATE suppressions SET removed_at = ?, seq = ? WHERE domain = ? AND address = ?",
                    [(now, seq + i, d, a) for i, (d, a) in enumerate(targets)],
                )
        return targets

    def suppression_seq(self) -> int:
        """The newest change number (0 when the list was never written)."""
        with self._read("reading the suppression change number") as conn:
            return int(self._one(conn, "SELECT coalesce(max(seq), 0) FROM suppressions"))

    def suppression_keys(self, now: float, batch: int = 10000) -> Iterator[list[tuple[str, str]]]:
        """Every active (domain, address) in batches (keyset on id; the lock held per batch only)."""
        after = 0
        while True:
            found = self._rows(
                "loading suppressions",
                f"SELECT id, domain, address FROM suppressions WHERE id > ? AND {_ACTIVE} ORDER BY id LIMIT ?",
                (after, now, batch),
            )
            if found:
                yield [(r[1], r[2]) for r in found]
            if len(found) < batch:
                return
            after = int(found[-1][0])

    def suppression_changes(self, after_seq: int, limit: int = 10000) -> list[SuppressionChange]:
        """Changes with seq > ``after_seq``, in seq order."""
        from .views import SuppressionChange

        found = self._rows(
            "reading suppression changes",
            "SELECT seq, domain, address, removed_at IS NOT NULL, expires_at FROM suppressions "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [SuppressionChange(int(r[0]), r[1], r[2], bool(r[3]), r[4]) for r in found]

    def suppressions_expiring(self, after: float, until: float) -> list[tuple[str, str]]:
        """(domain, address) of entries whose expires_at is in (after, until], not removed."""
        found = self._rows(
            "reading expired suppressions",
            "SELECT domain, address FROM suppressions WHERE expires_at IS NOT NULL AND removed_at IS NULL "
            "AND expires_at > ? AND expires_at <= ?",
            (after, until),
        )
        return [(r[0], r[1]) for r in found]

    # --- Dashboard aggregates (issue 5, dashboard section; owner: dashboard).
    # Read-only queries for the server-rendered dashboard, every one scoped to
    # the caller's sender domains (``domains=()`` selects nothing).

    def dashboard_sent(self, domains: Sequence[str], start: float, end: float) -> tuple[int, int]:
        """(messages, recipients) the milter recorded with ``start <= created_at < end``.

        Whole days the worker rolled up (:meth:`roll_up_sent`) come from
        message_days, the rest from the messages themselves: the same counts
        either way, and a busy month is 30 rows instead of every message. Rolled
        days never change, so reading the watermark first is consistent.
        """
        if not domains:
            return 0, 0
        with self._read("counting sent messages") as conn:
            days, live = sent_windows(start, end, float(self._one(conn, "SELECT until FROM sent_rolled_until")))
            messages = recipients = 0
            if days is not None:
                messages, recipients = self._x(
                    conn,
                    "SELECT coalesce(sum(messages), 0), coalesce(sum(recipients), 0) FROM message_days "
                    f"WHERE domain IN ({marks(domains)}) AND day >= ? AND day < ?",
                    (*domains, *days),
                ).fetchone()
            for lo, hi in live:
                row = self._x(
                    conn,
                    "SELECT count(DISTINCT m.id), count(r.id) FROM messages m LEFT JOIN recipients r "
                    f"ON r.message_pk = m.id WHERE m.sender_domain IN ({marks(domains)}) "
                    "AND m.created_at >= ? AND m.created_at < ?",
                    (*domains, lo, hi),
                ).fetchone()
                messages += row[0]
                recipients += row[1]
        return int(messages), int(recipients)

    def roll_up_sent(self, until: float) -> int:
        """Count the messages created before ``until`` (cut to a UTC day start) into
        message_days, for :meth:`dashboard_sent`; returns the day rows written.

        One day of messages per transaction, so the milter's writes never wait
        long for the lock, even on the first roll-up of a long history; workers
        on several nodes take turns (the watermark row is locked). Messages stay
        (retention deletes them); the day rows outlive them.
        """
        target = day_start(until)
        written = 0
        while True:
            with self._write("rolling up sent counts") as conn:
                rolled = float(self._one(conn, f"SELECT until FROM sent_rolled_until{self.d.for_update}"))
                if rolled >= target:
                    return written
                oldest = self._one(conn, "SELECT min(created_at) FROM messages WHERE created_at >= ?", (rolled,))
                step = roll_up_step(rolled, oldest, target)
                written += self._x(
                    conn,
                    "INSERT INTO message_days (domain, day, messages, recipients) "
                    f"SELECT m.sender_domain, {self.d.int_floor('m.created_at / 86400')} * 86400, count(*), "
                    "sum((SELECT count(*) FROM recipients r WHERE r.message_pk = m.id)) FROM messages m "
                    "WHERE m.created_at >= ? AND m.created_at < ? GROUP BY 1, 2 "
                    "ON CONFLICT (domain, day) DO UPDATE SET messages = message_days.messages + excluded.messages, "
                    "recipients = message_days.recipients + excluded.recipients",
                    (rolled, step),
                ).rowcount
                self._x(conn, "UPDATE sent_rolled_until SET until = ?", (step,))

    def dashboard_daily(self, domains: Sequence[str], start: float, end: float) -> list[DailyCount]:
        """Events per UTC day, type and severity, oldest day first."""
        from .views import DailyCount

        if not domains:
            return []
        found = self._rows(
            "counting events per day",
            f"SELECT {self.d.utc_day('received_at')} AS day, type, hard, count(*) FROM events "
            f"WHERE domain IN ({marks(domains)}) AND received_at >= ? AND received_at < ? "
            "GROUP BY day, type, hard ORDER BY day, type, hard",
            (*domains, start, end),
        )
        return [DailyCount(day=r[0], type=r[1], hard=bool(r[2]), count=int(r[3])) for r in found]

    def dashboard_top_reasons(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The most frequent reasons among bounces (hard and soft), most frequent first."""
        return self._dash_top("reason", domains, start, end, limit)

    def dashboard_top_recipient_domains(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The recipient domains that bounced most, most frequent first."""
        at = self.d.instr("recipient", "'@'")
        return self._dash_top(f"lower(substr(recipient, {at} + 1))", domains, start, end, limit, f"AND {at} > 0")

    def _dash_top(
        self, expr: str, domains: Sequence[str], start: float, end: float, limit: int, extra: str = ""
    ) -> list[tuple[str, int]]:
        if not domains or limit <= 0:
            return []
        found = self._rows(
            "ranking bounces",
            f"SELECT k, n FROM (SELECT {expr} AS k, count(*) AS n FROM events "
            f"WHERE domain IN ({marks(domains)}) AND received_at >= ? AND received_at < ? "
            f"AND type = 'bounce' {extra} GROUP BY 1) t ORDER BY n DESC, k{self.d.binary} LIMIT ?",
            (*domains, start, end, limit),
        )
        return [(str(r[0]), int(r[1])) for r in found]

    def dashboard_events(
        self, query: EventQuery, *, before_pk: int | None = None, after_pk: int | None = None, limit: int = 50
    ) -> list[tuple[int, BounceEvent]]:
        """Events newest first as (events.id, event).

        Keyset pagination on ``events.id`` (stable while new events arrive):
        ``before_pk`` gives the next (older) page, ``after_pk`` the previous
        (newer) one; both pages come back newest first.
        """
        if not query.domains or limit <= 0:
            return []
        where = [f"domain IN ({marks(query.domains)})"]
        params: list[Any] = list(query.domains)
        for clause, value in (
            ("received_at >= ?", query.start),
            ("received_at < ?", query.end),
            ("type = ?", query.type),
            ("hard = ?", query.hard),
            ("reason = ?", query.reason),
            ("id < ?", before_pk),
            ("id > ?", after_pk),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.recipient_contains:
            # instr, not LIKE: the user's text has no wildcards; ASCII folding on both sides.
            folded = self.d.fold("coalesce(recipient, '')")
            where.append(f"{self.d.instr(folded, '?')} > 0")
            params.append(ascii_lower(query.recipient_contains))
        order = "ASC" if after_pk is not None and before_pk is None else "DESC"
        params.append(limit)
        found = self._rows(
            "listing events",
            f"SELECT id, {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
            params,
        )
        out = keyed_events(found)
        if order == "ASC":
            out.reverse()
        return out

    def dashboard_jobs(self, domains: Sequence[str], kind: str, limit: int = 100) -> list[JobView]:
        """Outbox jobs of one kind, newest first: ``pending`` (not yet tried),
        ``failed`` (pending, tried and failed at least once), ``dead``, ``delivered``."""
        if not domains or limit <= 0:
            return []
        found = self._rows(
            "listing outbox jobs",
            f"SELECT {_DASH_JOB_COLUMNS} FROM outbox o JOIN events e ON e.event_id = o.event_id "
            f"WHERE e.domain IN ({marks(domains)}) AND {DASH_JOB_KINDS[kind]} ORDER BY o.id DESC LIMIT ?",
            (*domains, limit),
        )
        return [job_view_from_row(r) for r in found]

    def dashboard_job_counts(self, domains: Sequence[str]) -> dict[str, int]:
        """Number of jobs of each kind (keys as :meth:`dashboard_jobs`) in scope."""
        if not domains:
            return job_kind_counts(())
        found = self._rows(
            "counting outbox jobs",
            f"SELECT {DASH_JOB_KIND_CASE} AS kind, count(*) FROM outbox o JOIN events e "
            f"ON e.event_id = o.event_id WHERE e.domain IN ({marks(domains)}) GROUP BY kind",
            tuple(domains),
        )
        return job_kind_counts(found)

    def dashboard_job(self, job_id: int) -> JobView | None:
        """One job with its event's domain (for scoping a replay); None if unknown."""
        with self._read("reading an outbox job") as conn:
            row = self._x(
                conn,
                f"SELECT {_DASH_JOB_COLUMNS} FROM outbox o LEFT JOIN events e ON e.event_id = o.event_id WHERE o.id = ?",
                (job_id,),
            ).fetchone()
        return None if row is None else job_view_from_row(row)


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


# ------------------------------------------------------------------ download

# OWASP "CSV Injection": a cell starting with one of these is a formula in
# spreadsheet programs; it gets a leading apostrophe.
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# The kind of each key of event_to_json: "text" (user-controlled text,
# CSV-neutralised), "bool", "word" (our own fixed vocabulary), "time".
EVENT_KINDS: dict[str, str] = {
    "event_id": "text", "type": "word", "hard": "bool", "severity": "word", "reason": "text",
    "status": "text", "reply_code": "text", "diagnostic": "text", "recipient": "text",
    "reported_recipient": "text", "action": "text", "remote_mta": "text", "original_sender": "text",
    "original_message_id": "text", "token": "text", "token_status": "text", "flagged": "bool",
    "feedback_type": "text", "domain": "text", "received_at": "time", "sent_at": "time", "queue_id": "text",
}
CSV_HEADER = ",".join(EVENT_KINDS)  # the CSV export's header (sqlite_download checks the keys at import)


def download_select(query: DownloadQuery, columns: str, after_id: int, limit: int | None) -> tuple[str, list[Any]]:
    """One statement: ``id, <columns>`` of the query's events with ``id > after_id``, by id.

    Keyset pagination on ``events.id``: ids only grow, so a page boundary never
    moves while new events arrive. Per domain, the index ``events_domain_id
    (domain, id, received_at)`` yields rows in id order and checks the time
    range without touching the table; several domains are one ``UNION ALL``
    merged in id order (no sort, so a stream needs no temp space).
    """
    from ..core.events import EVENT_TYPES  # the download's vocabulary: not on the pipe's path

    if not query.domains:
        raise ValueError("a download query needs at least one domain (no 'all domains')")
    known = ", ".join(f"'{t}'" for t in EVENT_TYPES)
    where = ["received_at >= ?", "received_at < ?", "id > ?"]
    common: list[Any] = [query.start, query.end, after_id]
    if query.types:
        wanted = [t for t in query.types if t != "unknown"]
        parts = []
        if wanted:
            parts.append(f"type IN ({marks(wanted)})")
            common.extend(wanted)
        if "unknown" in query.types:  # event_to_json reports any other stored type as unknown
            parts.append(f"type = 'unknown' OR type NOT IN ({known})")
        where.append("(" + " OR ".join(parts) + ")")
    if query.hard is not None:
        where.append("hard" if query.hard else "NOT hard")
    if query.reason is not None:
        where.append("reason = ?")
        common.append(query.reason)
    if query.recipient_domain is not None:
        # ASCII case folding, as domain names compare (SQLite's LIKE folds it too); wildcards escaped.
        esc = query.recipient_domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("lower(recipient) LIKE ? ESCAPE '\\'")
        common.append("%@" + ascii_lower(esc))
    cond = " AND ".join(where)
    params: list[Any] = []
    for domain in query.domains:
        params.extend([domain, *common])
    branches = [f"SELECT id, {columns} FROM events WHERE domain = ? AND {cond}"] * len(query.domains)
    sql = " UNION ALL ".join(branches) + " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def _render_json(event: BounceEvent) -> str:
    from ..core.events import event_to_json

    return json.dumps(event_to_json(event), ensure_ascii=False, separators=(",", ":"))


def _render_csv(event: BounceEvent) -> str:
    """One CSV record (no line end) with event_to_json's keys as columns, formula-safe
    (the same cells as SQLite renders in SQL, sqlite_download)."""
    from ..core.events import event_to_json

    cells = []
    for key, value in event_to_json(event).items():
        kind = EVENT_KINDS[key]
        if kind == "bool":
            cells.append("true" if value else "false")
        elif kind in ("word", "time") or value is None:
            cells.append("" if value is None else str(value))
        else:
            text = str(value)
            if text and text[0] in CSV_FORMULA_PREFIXES:
                text = "'" + text
            cells.append('"' + text.replace('"', '""') + '"')
    return ",".join(cells)


RENDERERS: dict[str, Callable[[BounceEvent], str]] = {"json": _render_json, "csv": _render_csv}
