"""The PostgreSQL store (issue 6, "More than one Postfix node"): psycopg 3.

Several Postfix nodes (milter + pipe each), workers on any node and stateless
API instances share one database. Same interface and semantics as
:class:`~bouncetrack.store.sqlite.SQLiteStore` (``Store`` plus the download,
dashboard, metrics and suppression protocols):

* ``store_report`` is one transaction, idempotent by ``dedupe_key`` (a unique
  key: a second pipe with the same report waits for the first one's commit,
  then finds it stored);
* every failure that means "not now" (connection refused or lost, connect,
  statement or lock timeout, deadlock, disk full, server shutting down, a
  read-only replica after fail-over) becomes :class:`StoreUnavailable`, which
  the pipe turns into exit 75 so that Postfix retries. ``timeout`` bounds the
  connect (``connect_timeout``), every statement (``statement_timeout``) and
  every lock wait (``lock_timeout``);
* ``claim_jobs`` leases with ``SELECT … FOR UPDATE SKIP LOCKED``: workers on
  several nodes never claim the same job, and never wait for each other;
* suppression-list writes take one transaction-level advisory lock, so that the
  change numbers (``seq``) grow in commit order as the milters' feed needs;
* metric counters are kept by plpgsql triggers (:mod:`.postgres_migrations`).

Thread-safety: one connection per store object behind a lock (the milter
shares one store across threads), in autocommit mode with explicit
transactions. A broken connection (server restart, fail-over) is replaced at
the next call. Streamed exports read through a connection of their own with a
server-side cursor, in one REPEATABLE READ snapshot.

Imported only when a ``postgresql://`` URL is opened: the SQLite pipe path
never loads psycopg.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import psycopg

from ..redact import redact_url
from . import postgres_migrations as migrations
from . import rows as _rows
from .base import (
    REASON_FORGOTTEN,
    BounceEvent,
    MessageRecord,
    OutboxJob,
    StoreOutcome,
    StoreUnavailable,
    SuppressionCandidate,
    pipe_bucket,
)
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
from .base import DAY_SECONDS, UNTRUSTED_OVER_QUOTA, UntrustedQuota  # pipe guards (issue 16)
from .rows import EVENT_COLUMNS as _EVENT_COLUMNS, EVENT_FIELDS as _EVENT_FIELDS  # shared with sqlite
from .rows import FETCH_BATCH as _FETCH_BATCH, MAX_ERROR_LEN as _MAX_ERROR_LEN
from .rows import JOB_COLUMNS as _JOB_COLUMNS, MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from .rows import RAW_COMPRESSION_LEVEL, event_from_row as _event_from_row, job_from_row as _job_from_row

_INSERT_CHUNK = 1000  # events per INSERT statement (bind parameters stay below 65535)

# --- retention (issue 6; owner: retention): the counts of SQLiteStore.purge_counts
_NEVER = _rows.NEVER  # a cutoff older than any row: "keep this kind"
_PENDING = "EXISTS (SELECT 1 FROM outbox p WHERE p.event_id = e.event_id AND p.state = 'pending')"
_REMAINS = f"(e.received_at >= %(ecut)s OR {_PENDING})"
_GONE_MESSAGES = (
    "SELECT m.id FROM messages m WHERE m.created_at < %(mcut)s AND NOT EXISTS "
    f"(SELECT 1 FROM events e WHERE e.message_pk = m.id AND {_REMAINS})"
)
_RETENTION_COUNTS = (
    f"SELECT count(*) FROM events e WHERE e.received_at < %(ecut)s AND NOT {_PENDING}",
    "SELECT count(*) FROM outbox o JOIN events e ON e.event_id = o.event_id "
    f"WHERE e.received_at < %(ecut)s AND NOT {_PENDING}",
    "SELECT count(*) FROM raw_reports r WHERE r.received_at < %(ecut)s AND NOT EXISTS "
    f"(SELECT 1 FROM events e WHERE e.raw_pk = r.id AND {_REMAINS})",
    f"SELECT count(*) FROM ({_GONE_MESSAGES}) g",
    f"SELECT count(*) FROM recipients WHERE message_pk IN ({_GONE_MESSAGES})",
    "SELECT count(*) FROM raw_reports WHERE compressed IS NOT NULL AND received_at < %(rcut)s",
    f"SELECT count(*) FROM events e WHERE e.received_at < %(ecut)s AND {_PENDING}",
)

# record_message in one statement: the message row, then its recipients from four
# parallel arrays (address, orcpt, notify, position) joined to the new id.
_RECORD_MESSAGE = (
    f"WITH m AS (INSERT INTO messages ({_rows.MESSAGE_INSERT_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id), "
    "r AS (INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
    "SELECT m.id, x.address, x.orcpt, x.notify, x.position FROM m, "
    "unnest(%s::text[], %s::text[], %s::text[], %s::int[]) AS x(address, orcpt, notify, position)) "
    "SELECT id FROM m"
)
# The same, skipping a token_id already stored (the journal writer's replays).
_RECORD_MESSAGE_IDEMPOTENT = _RECORD_MESSAGE.replace(
    "RETURNING id), ", "ON CONFLICT (token_id) DO NOTHING RETURNING id), ", 1
).removesuffix(" SELECT id FROM m") + " SELECT 1"
_RECEIVED_AT = 1 + _EVENT_FIELDS.index("received_at")  # in (id, *fields) rows
_EVENT_ROW = "(%s, " + ", ".join("%s" for _ in _EVENT_FIELDS) + ")"

# SQLSTATE classes and codes that mean "the store cannot be used right now"
# (https://www.postgresql.org/docs/current/errcodes-appendix.html). Everything
# else (constraint violations, SQL errors) is a bug and propagates unchanged.
_UNAVAILABLE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: query canceled (statement_timeout), shutdown
        "58",  # system error (I/O)
        "40",  # transaction rollback: serialization failure, deadlock detected
        "XX",  # internal error / data corrupted: keep the bounce queued while an operator repairs
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "55P03",  # lock_not_available (lock_timeout)
        "55006",  # object_in_use
        "25006",  # read_only_sql_transaction: a replica after fail-over
        "25P03",  # idle_in_transaction_session_timeout
    }
)


def _is_unavailable(exc: psycopg.Error) -> bool:
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and exc.sqlstate is None:
        return True  # no server answer: refused, timed out, connection lost or closed
    state = exc.sqlstate or ""
    return state in _UNAVAILABLE_CODES or state[:2] in _UNAVAILABLE_CLASSES


def _conninfo(url: str) -> str:
    # libpq knows postgresql:// and postgres://; anything else is our caller's bug.
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"not a PostgreSQL store URL: {redact_url(url)!r}")
    return url


class PostgresStore:
    """The :class:`~bouncetrack.store.base.Store` on one PostgreSQL database."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = _conninfo(url)
        self.timeout = timeout
        self._name = redact_url(url)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            conn = self._connect("opening")
            try:
                with self._guard("migrating"):
                    migrations.migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0) -> PostgresStore:
        """Connect and migrate (the database must exist; its tables are created)."""
        return cls(url, timeout=timeout)

    # ----------------------------------------------------------------- plumbing

    def _connect(self, what: str) -> psycopg.Connection[Any]:
        ms = max(1, int(self.timeout * 1000))
        with self._guard(what):
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                # libpq: whole seconds, at least 2
                connect_timeout=max(2, math.ceil(self.timeout)),
                application_name="bouncetrack",
            )
        try:
            with self._guard(what):
                conn.execute(
                    f"SET statement_timeout = {ms}; SET lock_timeout = {ms}; "
                    f"SET idle_in_transaction_session_timeout = {max(ms * 6, 60000)}; "
                    "SET TIME ZONE 'UTC'"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            if _is_unavailable(exc):
                state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
                hint = ""
                if exc.sqlstate in ("55P03", "57014"):
                    hint = f" (gave up after the {self.timeout:g}s timeout)"
                raise StoreUnavailable(
                    f"PostgreSQL store {self._name}: {what}: {str(exc).strip()}{state}{hint}"
                ) from exc
            raise

    def _connection(self, what: str) -> psycopg.Connection[Any]:
        """The store's connection; a closed or broken one is replaced (fail-over, restart)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = self._connect(what)
        return conn

    @contextmanager
    def _read(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with self._lock, self._guard(what):
            yield self._connection(what)

    @contextmanager
    def _write(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction (committed on success, rolled back on any error)."""
        with self._lock, self._guard(what):
            conn = self._connection(what)
            with conn.transaction():
                yield conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------- milter side

    def record_message(self, message: MessageRecord) -> int:
        """Store the message and its recipients; return messages.id.

        One statement (the recipients as arrays, unnested) in autocommit mode: its
        own transaction, all or nothing, and one round trip to the server instead
        of four (BEGIN, two INSERTs, COMMIT). The milter waits for it at every end
        of message (issue 3's overhead), so round trips are the cost that counts.
        """
        columns = list(zip(*_rows.recipient_params(0, message))) or [()] * 5
        with self._read("recording a message") as conn:  # no BEGIN: one statement is atomic
            cursor = conn.execute(_RECORD_MESSAGE, (*_rows.message_params(message), *map(list, columns[1:])))
            row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def record_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Store a batch of messages and their recipients in one transaction,
        idempotently: a token_id already stored is skipped (the milter journal's
        writer replays a segment after a crash). Returns how many were new.
        The statements go in one pipeline (executemany): one round trip a batch."""
        if not messages:
            return 0
        params = []
        for message in messages:
            columns = list(zip(*_rows.recipient_params(0, message))) or [()] * 5
            params.append((*_rows.message_params(message), *map(list, columns[1:])))
        with self._write("recording messages") as conn:
            before = conn.execute("SELECT count(*) FROM messages WHERE token_id = ANY(%s)",
                                  ([m.token_id for m in messages],)).fetchone()
            conn.cursor().executemany(_RECORD_MESSAGE_IDEMPOTENT, params)
        return len(messages) - int(before[0] if before else 0)

    def message_by_token_id(self, token_id: int) -> MessageRecord | None:
        with self._read("reading a message") as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE token_id = %s", (token_id,)
            ).fetchone()
            return None if row is None else _message_with_recipients(conn, row)

    def message_by_message_id(
        self, message_id: str, queue_id: str | None = None
    ) -> MessageRecord | None:
        """The newest tracked message with this Message-ID (and queue id, if given)."""
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = %s"
        args: tuple[str, ...] = (message_id,)
        if queue_id is not None:
            sql += " AND queue_id = %s"
            args += (queue_id,)
        with self._read("reading a message") as conn:
            row = conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
            return None if row is None else _message_with_recipients(conn, row)

    # ------------------------------------------------------------- pipe side

    def store_report(
        self,
        events: Sequence[BounceEvent],
        raw: bytes,
        jobs: Sequence[OutboxJob],
        dedupe_key: str,
        *,
        pipe_started: float | None = None,
        suppress: Sequence[SuppressionCandidate] = (),
        guards: Mapping[str, int] = {},
        untrusted: UntrustedQuota | None = None,
    ) -> StoreOutcome:
        """Raw report, events and outbox jobs in ONE transaction, idempotently.

        Semantics as :meth:`SQLiteStore.store_report`. Two pipes storing the
        same report at once (two nodes, or a redelivery racing the first run):
        the second one's insert of the dedupe key waits for the first one's
        commit, then inserts nothing and returns the first one's event ids.
        """
        digest = hashlib.sha256(raw).hexdigest()
        compressed = zlib.compress(raw, RAW_COMPRESSION_LEVEL)
        now = time.time()
        received_at = events[0].received_at if events else now
        with self._write("storing a report") as conn:
            row = conn.execute(
                "SELECT id FROM raw_reports WHERE dedupe_key = %s", (dedupe_key,)
            ).fetchone()
            if row is None:
                if untrusted is not None and not self._untrusted_allowed(conn, untrusted, received_at):
                    self._count_guards(conn, {**guards, UNTRUSTED_OVER_QUOTA: 1})
                    return StoreOutcome(stored=False, over_quota=True)
                row = conn.execute(
                    "INSERT INTO raw_reports (dedupe_key, sha256, size, compressed, received_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                    (dedupe_key, digest, len(raw), compressed, received_at),
                ).fetchone()
                if row is not None:
                    self._count_guards(conn, guards)
                    self._insert_report(conn, int(row[0]), events, jobs, suppress, now, pipe_started)
                    return StoreOutcome(stored=True, event_ids=tuple(e.event_id for e in events))
            ids = conn.execute(
                "SELECT e.event_id FROM events e JOIN raw_reports r ON r.id = e.raw_pk "
                "WHERE r.dedupe_key = %s ORDER BY e.id",
                (dedupe_key,),
            ).fetchall()
            if pipe_started is not None:  # metrics (issue 5)
                self._count_pipe_run(conn, "duplicate", pipe_started)
            return StoreOutcome(stored=False, event_ids=tuple(r[0] for r in ids))

    def _count_guards(self, conn: psycopg.Connection[Any], guards: Mapping[str, int]) -> None:
        # In key order: two pipes upserting the same rows never deadlock.
        for guard, n in sorted(guards.items()):
            if n > 0:
                conn.execute(
                    "INSERT INTO metric_pipe_guards (guard, count) VALUES (%s, %s) "
                    "ON CONFLICT (guard) DO UPDATE SET count = metric_pipe_guards.count + EXCLUDED.count",
                    (guard, n),
                )

    def _untrusted_allowed(self, conn: psycopg.Connection[Any], quota: UntrustedQuota, received_at: float) -> bool:
        """As SQLiteStore._untrusted_allowed; the upsert's row lock orders concurrent pipes."""
        day = int(received_at // DAY_SECONDS)
        conn.execute("DELETE FROM untrusted_reports WHERE day < %s", (day - 1,))
        row = conn.execute(
            "INSERT INTO untrusted_reports (host, day, count) VALUES (%s, %s, 1) "
            "ON CONFLICT (host, day) DO UPDATE SET count = untrusted_reports.count + 1 RETURNING count",
            (quota.host, day),
        ).fetchone()
        return row is not None and int(row[0]) <= quota.per_day

    def _insert_report(
        self,
        conn: psycopg.Connection[Any],
        raw_pk: int,
        events: Sequence[BounceEvent],
        jobs: Sequence[OutboxJob],
        suppress: Sequence[SuppressionCandidate],
        now: float,
        pipe_started: float | None,
    ) -> None:
        # One INSERT per chunk: the statement-level metrics trigger then upserts
        # the counter rows in key order (no deadlock between concurrent pipes).
        for start in range(0, len(events), _INSERT_CHUNK):
            chunk = events[start : start + _INSERT_CHUNK]
            conn.execute(
                f"INSERT INTO events (raw_pk, {_EVENT_COLUMNS}) VALUES "
                + ", ".join(_EVENT_ROW for _ in chunk),
                [v for e in chunk for v in _rows.event_params(e, raw_pk)],
            )
        if jobs:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO outbox (event_id, channel, target, state, attempts, "
                    "next_attempt_at, last_error, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (event_id, channel, target) DO NOTHING",
                    [_rows.job_params(j, now) for j in jobs],
                )
        if suppress:  # suppression list (issue 6)
            _sup_apply_candidates(conn, suppress)
        if pipe_started is not None:  # metrics (issue 5)
            self._count_pipe_run(conn, "stored", pipe_started)

    def raw_report(self, event_id: str) -> bytes | None:
        """The raw report an event came from, decompressed; None if unknown or purged."""
        with self._read("reading a raw report") as conn:
            row = conn.execute(
                "SELECT r.compressed FROM events e JOIN raw_reports r ON r.id = e.raw_pk "
                "WHERE e.event_id = %s",
                (event_id,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return zlib.decompress(bytes(row[0]))

    def event(self, event_id: str) -> BounceEvent | None:
        with self._read("reading an event") as conn:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = %s", (event_id,)
            ).fetchone()
        return None if row is None else _event_from_row(row)

    def events_between(
        self, start: float, end: float, domains: Sequence[str] | None = None
    ) -> Iterator[BounceEvent]:
        """Events with ``start <= received_at < end``, ordered by (received_at, id).

        Keyset batches on (received_at, id) over the store's connection: the
        lock is held per batch, never while the caller holds a yielded event,
        and no transaction stays open between batches.
        """
        if domains is not None and not domains:
            return
        scope = "" if domains is None else " AND domain = ANY(%s)"
        last: tuple[float, int] | None = None
        while True:
            params: list[Any] = [start, end]
            keyset = ""
            if last is not None:
                keyset = " AND (received_at, id) > (%s, %s)"
                params.extend(last)
            if domains is not None:
                params.append(list(domains))
            params.append(_FETCH_BATCH)
            with self._read("reading events") as conn:
                rows = conn.execute(
                    f"SELECT id, {_EVENT_COLUMNS} FROM events "
                    f"WHERE received_at >= %s AND received_at < %s{keyset}{scope} "
                    "ORDER BY received_at, id LIMIT %s",
                    params,
                ).fetchall()
            for row in rows:
                yield _event_from_row(row[1:])
            if len(rows) < _FETCH_BATCH:
                return
            last = (float(rows[-1][_RECEIVED_AT]), int(rows[-1][0]))

    # =========================================================================
    # Queries for the API (issue 5, download section). Keyset on events.id;
    # rows rendered in Python from event_to_json (one schema with the webhook).
    # =========================================================================

    def events_page(
        self, query: DownloadQuery, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, BounceEvent]]:
        """Up to ``limit`` events with ``id > after_id`` in id order, as (id, event)."""
        if not query.domains or limit <= 0:
            return []
        sql, params = _download_select(query, after_id, limit)
        with self._read("reading a page of events") as conn:
            rows = conn.execute(sql, params).fetchall()
        return _rows.keyed_events(rows)

    def iter_events(self, query: DownloadQuery, after_id: int = 0) -> Iterator[tuple[int, BounceEvent]]:
        """Every event of the query after ``after_id``, in id order, streamed."""
        for rows in self._download_batches(query, after_id, _FETCH_BATCH):
            for r in rows:
                yield int(r[0]), _event_from_row(r[1:])

    def rendered_page(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """Like :meth:`events_page`, each event rendered as ``fmt`` (json | csv)."""
        render = _RENDERERS[fmt]
        return [(pk, render(e)) for pk, e in self.events_page(query, after_id, limit)]

    def iter_rendered(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, batch: int = 2000
    ) -> Iterator[list[tuple[int, str]]]:
        """Every event of the query after ``after_id``, rendered, in batches of ``batch`` rows."""
        render = _RENDERERS[fmt]
        for rows in self._download_batches(query, after_id, batch):
            yield [(int(r[0]), render(_event_from_row(r[1:]))) for r in rows]

    def _download_batches(
        self, query: DownloadQuery, after_id: int, batch: int
    ) -> Iterator[list[Any]]:
        """Batches of ``(id, *event columns)`` rows from a server-side cursor.

        A connection of its own, in one read-only REPEATABLE READ transaction
        (one snapshot, however long the export), closed when the generator
        finishes or is closed: the export neither holds this store's lock nor
        keeps its connection in a transaction.
        """
        if not query.domains:
            return
        sql, params = _download_select(query, after_id, None)
        conn = self._connect("exporting events")
        try:
            with self._guard("exporting events"):
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur = conn.cursor(name=f"bt_export_{uuid.uuid4().hex[:12]}")
                cur.itersize = batch
                cur.execute(sql, params)
            while True:
                with self._guard("exporting events"):
                    rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield rows
        finally:
            conn.close()  # ends the transaction and the cursor with it

    # ----------------------------------------------- end of download section

    def purge_raw_before(self, cutoff: float, batch: int = 1000) -> int:
        """Retention: drop the compressed bodies of reports received before ``cutoff``.

        Batches of short transactions; rows another transaction holds are
        skipped (SKIP LOCKED) and left for the next run.
        """
        total = 0
        while True:
            with self._write("purging raw reports") as conn:
                n = conn.execute(
                    "UPDATE raw_reports SET compressed = NULL WHERE id IN ("
                    "SELECT id FROM raw_reports WHERE compressed IS NOT NULL AND received_at < %s "
                    "LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (cutoff, batch),
                ).rowcount
            total += n
            if n < batch:
                return total

    # =========================================================================
    # Retention (issue 6, retention section; owner: retention). Implements the
    # retention methods of base.Store like SQLiteStore: keyset walks in (time,
    # id) order, each batch deleted by id in its own short transaction (row
    # locks on one batch only, bounded by the store's statement/lock timeouts).
    # No delete triggers exist, so the metric counters stay as they are.
    # =========================================================================

    def purge_counts(
        self, events_before: float | None, messages_before: float | None, raw_before: float | None
    ) -> PurgeCounts:
        """What a purge with these cutoffs would delete (dry run), in one snapshot."""
        p = _rows.retention_cutoffs(events_before, messages_before, raw_before)
        counts: list[int] = []
        with self._read("counting what retention would purge") as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for sql in _RETENTION_COUNTS:
                    row = conn.execute(sql.encode(), p).fetchone()
                    counts.append(int(row[0]) if row else 0)
        return PurgeCounts(*counts)

    def purge_events_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete events received before ``cutoff`` with their settled jobs, then raw
        report rows received before ``cutoff`` that no event references.

        A job a concurrent ``replay_job`` turns pending is not deleted (the
        DELETE re-checks the row's state after waiting for its lock) and keeps
        its event (the events DELETE, a new statement, sees it).
        """
        batch = max(1, batch)
        events = jobs = kept = reports = 0
        for conn, rows in self._keyset_walk("purging events", "events", "received_at", cutoff, batch):
            ids = [int(r[0]) for r in rows]
            jobs += conn.execute(
                "DELETE FROM outbox o USING events e WHERE e.id = ANY(%s) "
                "AND o.event_id = e.event_id AND o.state <> 'pending' AND NOT EXISTS "
                "(SELECT 1 FROM outbox p WHERE p.event_id = e.event_id AND p.state = 'pending')",
                (ids,),
            ).rowcount
            n = conn.execute(
                "DELETE FROM events e WHERE e.id = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.event_id = e.event_id)",
                (ids,),
            ).rowcount
            events += n
            kept += len(rows) - n
        for conn, rows in self._keyset_walk("purging raw reports", "raw_reports", "received_at", cutoff, batch):
            reports += conn.execute(
                "DELETE FROM raw_reports r WHERE r.id = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.raw_pk = r.id)",
                ([int(r[0]) for r in rows],),
            ).rowcount
        return PurgeCounts(events=events, outbox_jobs=jobs, reports=reports, events_kept_pending=kept)

    def purge_messages_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete messages recorded before ``cutoff`` that no event references, with
        their recipients."""
        batch = max(1, batch)
        messages = recipients = 0
        for conn, rows in self._keyset_walk("purging messages", "messages", "created_at", cutoff, batch):
            free = conn.execute(
                "SELECT m.id FROM messages m WHERE m.id = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.message_pk = m.id) FOR UPDATE",
                ([int(r[0]) for r in rows],),
            ).fetchall()
            if free:
                ids = [int(r[0]) for r in free]
                recipients += conn.execute(
                    "DELETE FROM recipients WHERE message_pk = ANY(%s)", (ids,)).rowcount
                messages += conn.execute(
                    "DELETE FROM messages WHERE id = ANY(%s)", (ids,)).rowcount
        return PurgeCounts(messages=messages, recipients=recipients)

    def _keyset_walk(
        self, what: str, table: str, time_col: str, cutoff: float, batch: int
    ) -> Iterator[tuple[psycopg.Connection[Any], list[Any]]]:
        """Rows ``(id, time)`` of ``table`` with ``time_col < cutoff`` in (time, id) order,
        ``batch`` at a time, each batch yielded as ``(conn, rows)`` inside its own short
        transaction (committed when the caller asks for the next)."""
        last: tuple[float, int] = (_NEVER, 0)
        while True:
            with self._write(what) as conn:
                rows = conn.execute(
                    f"SELECT id, {time_col} FROM {table} "
                    f"WHERE {time_col} < %s AND ({time_col}, id) > (%s, %s) "
                    f"ORDER BY {time_col}, id LIMIT %s",
                    (cutoff, last[0], last[1], batch),
                ).fetchall()
                if rows:
                    last = (float(rows[-1][1]), int(rows[-1][0]))
                    yield conn, rows
            if len(rows) < batch:
                return

    # ========================================================== end of retention

    # ----------------------------------------------------------------- outbox

    def claim_jobs(self, now: float, limit: int, lease_seconds: float) -> list[OutboxJob]:
        """Lease up to ``limit`` due jobs until ``now + lease_seconds``.

        ``FOR UPDATE SKIP LOCKED``: a job another worker (on any node) is
        claiming right now is skipped, not waited for, and a job leased by a
        committed claim no longer matches; so no two workers claim the same
        job while its lease runs. An expired lease makes it claimable again.
        """
        if limit <= 0:
            return []
        until = now + lease_seconds
        with self._write("claiming outbox jobs") as conn:
            rows = conn.execute(
                "WITH due AS (SELECT id FROM outbox "
                "WHERE state = 'pending' AND next_attempt_at <= %(now)s "
                "AND (lease_until IS NULL OR lease_until <= %(now)s) "
                "ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                "UPDATE outbox o SET lease_until = %(until)s, updated_at = %(now)s FROM due "
                f"WHERE o.id = due.id RETURNING {_dash_cols('o')}",
                {"now": now, "limit": limit, "until": until},
            ).fetchall()
        jobs = [_job_from_row(r) for r in rows]
        jobs.sort(key=lambda j: (j.next_attempt_at, j.id or 0))
        return jobs

    def job_delivered(self, job_id: int, now: float) -> None:
        with self._write("marking a job delivered") as conn:
            conn.execute(
                "UPDATE outbox SET state = 'delivered', lease_until = NULL, updated_at = %s "
                "WHERE id = %s",
                (now, job_id),
            )

    def job_failed(
        self, job_id: int, now: float, error: str, next_attempt_at: float | None
    ) -> None:
        """Count a failed attempt; ``next_attempt_at=None`` dead-letters the job."""
        with self._write("recording a job failure") as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = %(err)s, "
                "lease_until = NULL, updated_at = %(now)s, "
                "state = CASE WHEN %(next)s::double precision IS NULL THEN 'dead' ELSE 'pending' END, "
                "next_attempt_at = COALESCE(%(next)s::double precision, next_attempt_at) "
                "WHERE id = %(id)s AND state = 'pending'",
                {"err": error[:_MAX_ERROR_LEN], "now": now, "next": next_attempt_at, "id": job_id},
            )

    def jobs(self, state: str | None = None, limit: int = 100) -> list[OutboxJob]:
        """Jobs, newest first, optionally of one state (for the CLI)."""
        where, params = ("", [limit]) if state is None else (" WHERE state = %s", [state, limit])
        with self._read("listing jobs") as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM outbox{where} ORDER BY id DESC LIMIT %s", params
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    def replay_job(self, job_id: int, now: float) -> bool:
        """Make a job pending again, due now, attempts reset; False if no such job."""
        with self._write("replaying a job") as conn:
            n = conn.execute(
                "UPDATE outbox SET lease_until = CASE WHEN state = 'pending' "
                "THEN lease_until ELSE NULL END, "
                "state = 'pending', attempts = 0, next_attempt_at = %s, updated_at = %s "
                "WHERE id = %s",
                (now, now, job_id),
            ).rowcount
        return n > 0

    def outbox_stats(self, now: float) -> dict[str, float]:
        """Counts per state, due/leased pending jobs, age of the oldest pending job."""
        with self._read("reading outbox statistics") as conn:
            states = conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE next_attempt_at <= %(now)s), "
                "count(*) FILTER (WHERE lease_until > %(now)s), min(created_at) "
                "FROM outbox WHERE state = 'pending'",
                {"now": now},
            ).fetchone()
        assert row is not None
        due, leased, oldest = row
        return _rows.outbox_stats(now, states, due, leased, oldest)

    # =========================================================================
    # Metrics (issue 5). Implements base.MetricsStore; counters kept by the
    # plpgsql triggers of postgres_migrations, the pipe's runs upserted here.
    # =========================================================================

    def _count_pipe_run(self, conn: psycopg.Connection[Any], outcome: str, started: float) -> None:
        seconds = max(0.0, time.time() - started)
        conn.execute(
            "INSERT INTO metric_pipe_runs AS m (outcome, le, count, seconds_sum) "
            "VALUES (%s, %s, 1, %s) ON CONFLICT (outcome, le) DO UPDATE SET "
            "count = m.count + 1, seconds_sum = m.seconds_sum + excluded.seconds_sum",
            (outcome, pipe_bucket(seconds), seconds),
        )

    def metric_counts(self, now: float) -> MetricCounts:
        """The metric counters and the outbox gauges, as SQLiteStore.metric_counts."""
        with self._read("reading metric counters") as conn:
            with conn.transaction():  # one snapshot for every table
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                events = conn.execute(
                    "SELECT domain, type, reason, hard, token_status, feedback_type, count "
                    "FROM metric_event_counts"
                ).fetchall()
                messages = conn.execute("SELECT domain, count FROM metric_message_counts").fetchall()
                deliveries = conn.execute(
                    "SELECT channel, outcome, count FROM metric_delivery_counts"
                ).fetchall()
                runs = conn.execute(
                    "SELECT outcome, le, count, seconds_sum FROM metric_pipe_runs"
                ).fetchall()
                guards = conn.execute("SELECT guard, count FROM metric_pipe_guards").fetchall()
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= %(now)s), "
                    "count(*) FILTER (WHERE lease_until > %(now)s), min(created_at) "
                    "FROM outbox WHERE state = 'pending'",
                    {"now": now},
                ).fetchone()
                dead_row = conn.execute("SELECT count(*) FROM outbox WHERE state = 'dead'").fetchone()
                created_row = conn.execute(_rows.STORE_CREATED_SQL).fetchone()
        assert row is not None and dead_row is not None and created_row is not None
        return _rows.metric_counts(now, events, messages, deliveries, runs, row, dead_row[0], guards,
                                   created_row[0])

    # =========================================================================
    # Suppression list (issue 6). Implements base.SuppressionStore with the
    # semantics of sqlite_suppression; writes serialised by an advisory lock.
    # =========================================================================

    def suppressions(
        self,
        domains: Sequence[str] | None,
        now: float,
        *,
        address: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        include_inactive: bool = False,
    ) -> list[Suppression]:
        """Entries of ``domains`` (``()`` nothing, None every domain: CLI only), keyset on id."""
        if (domains is not None and not domains) or limit <= 0:
            return []
        where = ["id > %s"]
        params: list[Any] = [after_id]
        if domains is not None:
            where.append("domain = ANY(%s)")
            params.append(list(domains))
        if address is not None:
            where.append("address = %s")
            params.append(address)
        if not include_inactive:
            where.append("removed_at IS NULL AND (expires_at IS NULL OR expires_at > %s)")
            params.append(now)
        params.append(limit)
        with self._read("listing suppressions") as conn:
            rows = conn.execute(
                f"SELECT {_SUP_COLUMNS} FROM suppressions WHERE {' AND '.join(where)} "
                "ORDER BY id LIMIT %s",
                params,
            ).fetchall()
        return [_rows.suppression_from_row(r) for r in rows]

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        if not entries:
            return 0
        with self._write("adding suppressions") as conn:
            seq = _sup_next_seq(conn)
            with conn.cursor() as cur:
                cur.executemany(_SUP_UPSERT_MANUAL, _rows.suppression_manual_params(entries, seq))
        return len(entries)

    def forget_address(
        self, address: str, domains: Sequence[str] | None, now: float, pseudonym: Callable[[str, str], str]
    ) -> ForgetCounts:
        """The contract of :meth:`~bouncetrack.store.interfaces.Store.forget_address`, one transaction."""
        if domains is not None and not domains:
            return ForgetCounts()
        scoped = domains is not None
        scope: list[Any] = [list(domains)] if domains is not None else []
        in_scope = " AND domain = ANY(%s)" if scoped else ""
        with self._write("forgetting an address") as conn:
            found = conn.execute(
                "SELECT event_id, raw_pk FROM events WHERE (lower(recipient) = %s OR lower(reported_recipient) = %s)"
                f"{in_scope}",
                [address, address, *scope],
            ).fetchall()
            event_ids = [r[0] for r in found]
            raw_ids = sorted({r[1] for r in found if r[1] is not None})
            jobs = conn.execute("DELETE FROM outbox WHERE event_id = ANY(%s)", (event_ids,)).rowcount
            events = conn.execute("DELETE FROM events WHERE event_id = ANY(%s)", (event_ids,)).rowcount
            raw = conn.execute(
                "UPDATE raw_reports SET compressed = NULL WHERE id = ANY(%s) AND compressed IS NOT NULL", (raw_ids,)
            ).rowcount
            # Tombstones under a pseudonym, with new change numbers: milters drop the entry.
            seq = _sup_next_seq(conn)  # the suppression write lock first, as every writer takes it
            listed = conn.execute(
                f"SELECT id, domain FROM suppressions WHERE address = %s{in_scope} ORDER BY id FOR UPDATE",
                [address, *scope],
            ).fetchall()
            if listed:
                for i, (row_id, domain) in enumerate(listed):
                    alias = pseudonym(domain, address)
                    conn.execute("DELETE FROM suppressions WHERE domain = %s AND address = %s", (domain, alias))
                    conn.execute(
                        "UPDATE suppressions SET address = %s, reason = %s, source_event_id = NULL, "
                        "removed_at = %s, seq = %s WHERE id = %s",
                        (alias, REASON_FORGOTTEN, now, seq + i, row_id),
                    )
            msg_scope = " AND message_pk IN (SELECT id FROM messages WHERE sender_domain = ANY(%s))" if scoped else ""
            recipients = conn.execute(
                f"DELETE FROM recipients WHERE (lower(address) = %s OR lower(orcpt) = %s){msg_scope}",
                [address, "rfc822;" + address, *scope],
            ).rowcount
        return ForgetCounts(events=events, outbox_jobs=jobs, raw_reports=raw, suppressions=len(listed),
                            recipients=recipients)

    def remove_suppressions(
        self, domains: Sequence[str] | None, addresses: Sequence[str], now: float
    ) -> list[tuple[str, str]]:
        """Tombstone the active entries; returns the (domain, address) removed.

        ``domains=None``: at every domain (the CLI). Each removal gets its own
        change number, in the order returned.
        """
        if (domains is not None and not domains) or not addresses:
            return []
        active = "removed_at IS NULL AND (expires_at IS NULL OR expires_at > %s)"
        targets: list[tuple[str, str]] = []
        with self._write("removing suppressions") as conn:
            seq = _sup_next_seq(conn)
            for address in addresses:
                if domains is None:
                    rows = conn.execute(
                        f"SELECT domain, address FROM suppressions WHERE address = %s AND {active} "
                        "ORDER BY id FOR UPDATE",
                        (address, now),
                    ).fetchall()
                else:
                    rows = conn.execute(
                        "SELECT domain, address FROM suppressions WHERE domain = ANY(%s) "
                        f"AND address = %s AND {active} ORDER BY id FOR UPDATE",
                        (list(domains), address, now),
                    ).fetchall()
                targets.extend((r[0], r[1]) for r in rows)
            if targets:
                with conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE suppressions SET removed_at = %s, seq = %s WHERE domain = %s AND address = %s",
                        [(now, seq + i, d, a) for i, (d, a) in enumerate(targets)],
                    )
        return targets

    def suppression_seq(self) -> int:
        with self._read("reading the suppression change number") as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM suppressions").fetchone()
        return int(row[0]) if row else 0

    def suppression_keys(self, now: float, batch: int = 10000) -> Iterator[list[tuple[str, str]]]:
        """Active entries in batches (keyset on id); the lock is held per batch only."""
        after = 0
        while True:
            with self._read("loading suppressions") as conn:
                rows = conn.execute(
                    "SELECT id, domain, address FROM suppressions WHERE id > %s "
                    "AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > %s) "
                    "ORDER BY id LIMIT %s",
                    (after, now, batch),
                ).fetchall()
            if not rows:
                return
            yield [(r[1], r[2]) for r in rows]
            if len(rows) < batch:
                return
            after = int(rows[-1][0])

    def suppression_changes(self, after_seq: int, limit: int = 10000) -> list[SuppressionChange]:
        with self._read("reading suppression changes") as conn:
            rows = conn.execute(
                "SELECT seq, domain, address, removed_at IS NOT NULL, expires_at FROM suppressions "
                "WHERE seq > %s ORDER BY seq LIMIT %s",
                (after_seq, limit),
            ).fetchall()
        return [_rows.change_from_row(r) for r in rows]

    def suppressions_expiring(self, after: float, until: float) -> list[tuple[str, str]]:
        with self._read("reading expired suppressions") as conn:
            rows = conn.execute(
                "SELECT domain, address FROM suppressions WHERE expires_at IS NOT NULL "
                "AND removed_at IS NULL AND expires_at > %s AND expires_at <= %s",
                (after, until),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # =========================================================================
    # Dashboard aggregates (issue 5). Implements base.DashboardStore; every
    # query is scoped to the caller's sender domains (``()`` selects nothing).
    # =========================================================================

    def dashboard_sent(self, domains: Sequence[str], start: float, end: float) -> tuple[int, int]:
        """As :meth:`SQLiteStore.dashboard_sent`: rolled-up days, then live counts."""
        if not domains:
            return 0, 0
        with self._read("counting sent messages") as conn:
            row = conn.execute("SELECT until FROM sent_rolled_until").fetchone()
            assert row is not None
            days, live = _rows.sent_windows(start, end, float(row[0]))
            messages = recipients = 0
            if days is not None:
                row = conn.execute(
                    "SELECT coalesce(sum(messages), 0), coalesce(sum(recipients), 0) FROM message_days "
                    "WHERE domain = ANY(%s) AND day >= %s AND day < %s",
                    (list(domains), *days),
                ).fetchone()
                assert row is not None
                messages, recipients = int(row[0]), int(row[1])
            for lo, hi in live:
                row = conn.execute(
                    "SELECT count(DISTINCT m.id), count(r.id) FROM messages m "
                    "LEFT JOIN recipients r ON r.message_pk = m.id "
                    "WHERE m.sender_domain = ANY(%s) AND m.created_at >= %s AND m.created_at < %s",
                    (list(domains), lo, hi),
                ).fetchone()
                assert row is not None
                messages += int(row[0])
                recipients += int(row[1])
        return messages, recipients

    def roll_up_sent(self, until: float) -> int:
        """As :meth:`SQLiteStore.roll_up_sent`; workers on several nodes take turns
        (the watermark row is locked for each day's transaction)."""
        target = _rows.day_start(until)
        written = 0
        while True:
            with self._write("rolling up sent counts") as conn:
                row = conn.execute("SELECT until FROM sent_rolled_until FOR UPDATE").fetchone()
                assert row is not None
                rolled = float(row[0])
                if rolled >= target:
                    return written
                row = conn.execute("SELECT min(created_at) FROM messages WHERE created_at >= %s", (rolled,)).fetchone()
                step = _rows.roll_up_step(rolled, None if row is None else row[0], target)
                written += conn.execute(
                    "INSERT INTO message_days (domain, day, messages, recipients) "
                    "SELECT m.sender_domain, (floor(m.created_at / 86400) * 86400)::bigint AS day, count(*), "
                    "sum((SELECT count(*) FROM recipients r WHERE r.message_pk = m.id)) FROM messages m "
                    "WHERE m.created_at >= %s AND m.created_at < %s GROUP BY 1, 2 "
                    "ON CONFLICT (domain, day) DO UPDATE SET messages = message_days.messages + EXCLUDED.messages, "
                    "recipients = message_days.recipients + EXCLUDED.recipients",
                    (rolled, step),
                ).rowcount
                conn.execute("UPDATE sent_rolled_until SET until = %s", (step,))

    def dashboard_daily(self, domains: Sequence[str], start: float, end: float) -> list[DailyCount]:
        if not domains:
            return []
        with self._read("counting events per day") as conn:
            rows = conn.execute(
                "SELECT to_char(to_timestamp(received_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, "
                "type, hard, count(*) FROM events "
                "WHERE domain = ANY(%s) AND received_at >= %s AND received_at < %s "
                "GROUP BY day, type, hard ORDER BY day, type, hard",
                (list(domains), start, end),
            ).fetchall()
        return _rows.daily_counts(rows)

    def dashboard_top_reasons(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        return self._dash_top("reason", domains, start, end, limit)

    def dashboard_top_recipient_domains(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        return self._dash_top(
            "lower(substr(recipient, strpos(recipient, '@') + 1))",
            domains, start, end, limit,
            extra="AND strpos(recipient, '@') > 0",
        )

    def _dash_top(
        self, expr: str, domains: Sequence[str], start: float, end: float, limit: int, extra: str = ""
    ) -> list[tuple[str, int]]:
        if not domains or limit <= 0:
            return []
        with self._read("ranking bounces") as conn:
            rows = conn.execute(
                f"SELECT k, n FROM (SELECT {expr} AS k, count(*) AS n FROM events "
                "WHERE domain = ANY(%s) AND received_at >= %s AND received_at < %s "
                f"AND type = 'bounce' {extra} GROUP BY 1) t "
                'ORDER BY n DESC, k COLLATE "C" LIMIT %s',
                (list(domains), start, end, limit),
            ).fetchall()
        return _rows.ranked(rows)

    def dashboard_events(
        self,
        query: EventQuery,
        *,
        before_pk: int | None = None,
        after_pk: int | None = None,
        limit: int = 50,
    ) -> list[tuple[int, BounceEvent]]:
        """Events newest first as (events.id, event); keyset pages on events.id."""
        if not query.domains or limit <= 0:
            return []
        where = ["domain = ANY(%s)"]
        params: list[Any] = [list(query.domains)]
        for clause, value in (
            ("received_at >= %s", query.start),
            ("received_at < %s", query.end),
            ("type = %s", query.type),
            ("hard = %s", query.hard),
            ("reason = %s", query.reason),
            ("id < %s", before_pk),
            ("id > %s", after_pk),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.recipient_contains:
            # strpos, not LIKE: the user's text has no wildcards. ASCII folding
            # on both sides, as the SQLite store does.
            where.append(
                "strpos(translate(coalesce(recipient, ''), %s, %s), %s) > 0"
            )
            params.extend([_UPPER, _LOWER, _ascii_lower(query.recipient_contains)])
        order = "ASC" if after_pk is not None and before_pk is None else "DESC"
        params.append(limit)
        with self._read("listing events") as conn:
            rows = conn.execute(
                f"SELECT id, {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                f"ORDER BY id {order} LIMIT %s",
                params,
            ).fetchall()
        out = _rows.keyed_events(rows)
        if order == "ASC":
            out.reverse()
        return out

    def dashboard_jobs(self, domains: Sequence[str], kind: str, limit: int = 100) -> list[JobView]:
        if not domains or limit <= 0:
            return []
        cond = _DASH_JOB_KINDS[kind]
        with self._read("listing outbox jobs") as conn:
            rows = conn.execute(
                f"SELECT {_dash_cols('o')}, e.domain, e.recipient, e.type "
                "FROM outbox o JOIN events e ON e.event_id = o.event_id "
                f"WHERE e.domain = ANY(%s) AND {cond} ORDER BY o.id DESC LIMIT %s",
                (list(domains), limit),
            ).fetchall()
        return [_dash_job_view(r) for r in rows]

    def dashboard_job_counts(self, domains: Sequence[str]) -> dict[str, int]:
        if not domains:
            return _rows.job_kind_counts(())
        with self._read("counting outbox jobs") as conn:
            found = conn.execute(
                f"SELECT {_rows.DASH_JOB_KIND_CASE} AS kind, count(*) "
                "FROM outbox o JOIN events e ON e.event_id = o.event_id "
                "WHERE e.domain = ANY(%s) GROUP BY kind",
                (list(domains),),
            ).fetchall()
        return _rows.job_kind_counts(found)

    def dashboard_job(self, job_id: int) -> JobView | None:
        with self._read("reading an outbox job") as conn:
            row = conn.execute(
                f"SELECT {_dash_cols('o')}, e.domain, e.recipient, e.type "
                "FROM outbox o LEFT JOIN events e ON e.event_id = o.event_id WHERE o.id = %s",
                (job_id,),
            ).fetchone()
        return None if row is None else _dash_job_view(row)


# ============================================================ module helpers


def _message_with_recipients(conn: psycopg.Connection[Any], row: Sequence[Any]) -> MessageRecord:
    rcpts = conn.execute(
        f"SELECT {_rows.RECIPIENT_COLUMNS} FROM recipients WHERE message_pk = %s ORDER BY position",
        (row[0],),
    ).fetchall()
    return _rows.message_from_row(row, rcpts)


_dash_cols = _rows.job_columns
_DASH_JOB_KINDS = _rows.DASH_JOB_KINDS
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ascii_lower = _rows.ascii_lower
_dash_job_view = _rows.job_view_from_row


# ------------------------------------------------------------------ download


def _download_select(query: DownloadQuery, after_id: int, limit: int | None) -> tuple[str, list[Any]]:
    """``id, <event columns>`` of the query's events with ``id > after_id``, by id.

    Same selection as :func:`bouncetrack.store.sqlite_download.select`.
    """
    from ..events import EVENT_TYPES

    if not query.domains:
        raise ValueError("a download query needs at least one domain (no 'all domains')")
    where = ["domain = ANY(%s)", "received_at >= %s", "received_at < %s", "id > %s"]
    params: list[Any] = [list(query.domains), query.start, query.end, after_id]
    if query.types:
        wanted = [t for t in query.types if t != "unknown"]
        parts = []
        if wanted:
            parts.append("type = ANY(%s)")
            params.append(wanted)
        if "unknown" in query.types:  # event_to_json reports any other stored type as unknown
            parts.append("type = 'unknown' OR NOT (type = ANY(%s))")
            params.append(list(EVENT_TYPES))
        where.append("(" + " OR ".join(parts) + ")")
    if query.hard is not None:
        where.append("hard" if query.hard else "NOT hard")
    if query.reason is not None:
        where.append("reason = %s")
        params.append(query.reason)
    if query.recipient_domain is not None:
        # ASCII case folding, as domain names compare (and as SQLite's LIKE does).
        esc = query.recipient_domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(f"translate(recipient, '{_UPPER}', '{_LOWER}') LIKE %s ESCAPE '\\'")
        params.append("%@" + _ascii_lower(esc))
    sql = f"SELECT id, {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    return sql, params


def _render_json(event: BounceEvent) -> str:
    from ..events import event_to_json

    return json.dumps(event_to_json(event), ensure_ascii=False, separators=(",", ":"))


def _render_csv(event: BounceEvent) -> str:
    """One CSV record (no line end) with event_to_json's keys as columns, formula-safe.

    The same cells as the SQLite store renders in SQL (sqlite_download).
    """
    from ..events import event_to_json
    from .sqlite_download import CSV_FORMULA_PREFIXES, _COLUMNS

    cells = []
    for key, value in event_to_json(event).items():
        kind = _COLUMNS[key][0]
        if kind == "bool":
            cells.append("true" if value else "false")
        elif kind in ("word", "time"):
            cells.append("" if value is None else str(value))
        elif value is None:
            cells.append("")
        else:
            text = str(value)
            if text and text[0] in CSV_FORMULA_PREFIXES:
                text = "'" + text
            cells.append('"' + text.replace('"', '""') + '"')
    return ",".join(cells)


_RENDERERS = {"json": _render_json, "csv": _render_csv}


# ---------------------------------------------------------------- suppression

_SUP_COLUMNS = _rows.SUPPRESSION_COLUMNS

_SUP_UPSERT_AUTO = """
INSERT INTO suppressions AS s
    (domain, address, reason, source_event_id, created_at, expires_at, removed_at, seq)
VALUES (%(domain)s, %(address)s, %(reason)s, %(source)s, %(now)s, %(expires)s, NULL, %(seq)s)
ON CONFLICT (domain, address) DO UPDATE SET
    reason = excluded.reason,
    source_event_id = excluded.source_event_id,
    created_at = CASE WHEN s.removed_at IS NULL
                       AND (s.expires_at IS NULL OR s.expires_at > %(now)s)
                      THEN s.created_at ELSE excluded.created_at END,
    expires_at = excluded.expires_at,
    removed_at = NULL,
    seq = excluded.seq
WHERE s.removed_at IS NOT NULL
   OR (s.expires_at IS NOT NULL
       AND (excluded.expires_at IS NULL OR excluded.expires_at > s.expires_at))
"""

_SUP_UPSERT_MANUAL = """
INSERT INTO suppressions AS s
    (domain, address, reason, source_event_id, created_at, expires_at, removed_at, seq)
VALUES (%s, %s, %s, %s, %s, %s, NULL, %s)
ON CONFLICT (domain, address) DO UPDATE SET
    reason = excluded.reason,
    source_event_id = excluded.source_event_id,
    created_at = excluded.created_at,
    expires_at = excluded.expires_at,
    removed_at = NULL,
    seq = excluded.seq
"""

# Repeats the partial index's WHERE (events_soft_bounces) so that it is used.
_SUP_SOFT_COUNT = """
SELECT count(*) FROM events
WHERE type = 'bounce' AND NOT hard AND NOT flagged
  AND domain = %s AND lower(recipient) = %s AND received_at >= %s
"""


def _sup_next_seq(conn: psycopg.Connection[Any]) -> int:
    """Take the suppression write lock (until commit), then the next change number."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.SUPPRESSION_LOCK,))
    row = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM suppressions").fetchone()
    assert row is not None
    return int(row[0])


def _sup_apply_candidates(conn: psycopg.Connection[Any], candidates: Sequence[SuppressionCandidate]) -> int:
    seq = _sup_next_seq(conn)

    def soft_count(c: SuppressionCandidate) -> int:
        # str.lower() here, as before; the SQLite store folds ASCII only (its lower() does).
        row = conn.execute(_SUP_SOFT_COUNT, (c.domain, c.address.lower(), c.soft_since)).fetchone()
        return 0 if row is None else int(row[0])

    def upsert(params: dict[str, Any]) -> int:
        return conn.execute(_SUP_UPSERT_AUTO, params).rowcount

    return _rows.apply_candidates(candidates, seq, soft_count, upsert)
