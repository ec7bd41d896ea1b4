"""The PostgreSQL store (issue 6, "More than one Postfix node"): psycopg 3; its dialect.

Several Postfix nodes (milter + pipe each), workers on any node and stateless
API instances share one database, with the queries of :mod:`.sql` and the
schema of :mod:`.migrations`. What is PostgreSQL's own:

* ``timeout`` bounds the connect (``connect_timeout``), every statement
  (``statement_timeout``) and every lock wait (``lock_timeout``); every failure
  that means "not now" (connection refused or lost, timeouts, deadlock, disk
  full, shutdown, a read-only replica after fail-over) is :class:`StoreUnavailable`;
* rows are claimed with ``FOR UPDATE SKIP LOCKED`` (workers on several nodes
  never claim the same job, and never wait for each other); suppression-list
  writes take one transaction-level advisory lock, so that change numbers
  (``seq``) grow in commit order as the milters' feed needs;
* a broken connection (server restart, fail-over) is replaced at the next call;
  streamed exports read through a connection of their own with a server-side
  cursor, in one REPEATABLE READ snapshot; events are rendered in Python.

Imported only when a ``postgresql://`` URL is opened: the SQLite pipe path
never loads psycopg.
"""

from __future__ import annotations

import math
import re
import uuid
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Sequence

import psycopg

from ..core.redact import redact_url
from . import migrations

from .base import MessageRecord, StoreUnavailable
from .sql import MESSAGE_INSERT_COLUMNS, Dialect, SQLStore, message_params, recipient_params

# pg_advisory_xact_lock key taken by every suppression-list write ("btsupp").
SUPPRESSION_LOCK = 0x627473757070

# record_message in one statement: the message row, then its recipients from four
# parallel arrays (address, orcpt, notify, position) joined to the new id.
_RECORD_MESSAGE = (
    f"WITH m AS (INSERT INTO messages ({MESSAGE_INSERT_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id), "
    "r AS (INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
    "SELECT m.id, x.address, x.orcpt, x.notify, x.position FROM m, "
    "unnest(%s::text[], %s::text[], %s::text[], %s::int[]) AS x(address, orcpt, notify, position)) "
    "SELECT id FROM m"
)
# A batch of the milter journal's records (issue 20) in one statement, skipping token_ids
# already stored: every column an array, unnested; recipients joined by token_id.
# "WHERE true": INSERT ... SELECT ... FROM f() ON CONFLICT would parse ON as a join's.
# %b: the arrays go in binary (psycopg's text array dumper runs a regular expression per
# element: the writer's side of the statement cost twice as much CPU, ~13 µs a record).
_RECORD_MESSAGES = (
    f"WITH m AS (INSERT INTO messages ({MESSAGE_INSERT_COLUMNS}) "
    "SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::float8[]) WHERE true "
    "ON CONFLICT (token_id) DO NOTHING RETURNING id, token_id), "
    "r AS (INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
    "SELECT m.id, x.address, x.orcpt, x.notify, x.position FROM m JOIN "
    "unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::int[]) AS x(token_id, address, orcpt, notify, position) "
    "ON x.token_id = m.token_id) "
    "SELECT count(*) FROM m"
)

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
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=1024)
def _pg_style(sql: str) -> bytes:
    """``?`` → ``%s``, ``:name`` → ``%(name)s`` (``::type`` casts untouched), ``%`` → ``%%``."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s")).encode()


class PostgresDialect(Dialect):
    name = "PostgreSQL"
    false = "false"
    real = "double precision"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    binary = ' COLLATE "C"'
    one_statement_record = True

    def q(self, sql: str) -> bytes:
        return _pg_style(sql)

    def fold(self, expr: str) -> str:
        return f"translate({expr}, '{_UPPER}', '{_UPPER.lower()}')"

    def instr(self, haystack: str, needle: str) -> str:
        return f"strpos({haystack}, {needle})"

    def utc_day(self, col: str) -> str:
        return f"to_char(to_timestamp({col}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def int_floor(self, expr: str) -> str:
        return f"floor({expr})::bigint"

    def fold_param(self, text: str) -> str:
        return text.lower()  # PostgreSQL's lower() folds beyond ASCII

    def connect(self, store: SQLStore) -> psycopg.Connection[Any]:
        return psycopg.connect(
            getattr(store, "url"),
            autocommit=True,
            connect_timeout=max(2, math.ceil(store.timeout)),  # libpq: whole seconds, at least 2
            application_name="bouncetrack",
        )

    def configure(self, store: SQLStore, conn: psycopg.Connection[Any]) -> None:
        ms = max(1, int(store.timeout * 1000))
        conn.execute(
            f"SET statement_timeout = {ms}; SET lock_timeout = {ms}; "
            f"SET idle_in_transaction_session_timeout = {max(ms * 6, 60000)}; SET TIME ZONE 'UTC'".encode()
        )

    def usable(self, conn: psycopg.Connection[Any]) -> bool:
        # Called under the store's lock, when none of its commands runs: a connection that
        # still reports one in progress (a server that terminated the backend mid-query,
        # not always seen as broken) cannot serve the next call either.
        return not (conn.closed or conn.broken
                    or conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE)

    def unavailable(self, store: SQLStore, what: str, exc: BaseException) -> StoreUnavailable | None:
        if not isinstance(exc, psycopg.Error):
            return None
        state = exc.sqlstate or ""
        no_answer = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not state
        if not (no_answer or state in _UNAVAILABLE_CODES or state[:2] in _UNAVAILABLE_CLASSES):
            return None
        hint = f" (gave up after the {store.timeout:g}s timeout)" if state in ("55P03", "57014") else ""
        code = f" [{state}]" if state else ""
        return StoreUnavailable(f"PostgreSQL store {store.name}: {what}: {str(exc).strip()}{code}{hint}")

    def transaction(self, conn: psycopg.Connection[Any]) -> Any:
        return conn.transaction()

    @contextmanager
    def snapshot(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield

    def lock_suppressions(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SUPPRESSION_LOCK,))

    def many(self, conn: psycopg.Connection[Any], sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(_pg_style(sql), rows)

    def record_message(self, conn: psycopg.Connection[Any], message: MessageRecord) -> int:
        """One statement (the recipients as arrays, unnested) in autocommit mode: its own
        transaction, all or nothing, and one round trip instead of four (BEGIN, two
        INSERTs, COMMIT): the milter waits for it at every end of message."""
        row = conn.execute(_RECORD_MESSAGE, _record_params(message)).fetchone()
        assert row is not None
        return int(row[0])

    def record_messages(self, conn: psycopg.Connection[Any], messages: Sequence[MessageRecord]) -> int:
        """One statement a batch, however large (_RECORD_MESSAGES): one round trip."""
        columns = [list(c) for c in zip(*(message_params(m) for m in messages))]
        recipients = [(m.token_id, *row[1:]) for m in messages for row in recipient_params(0, m)]
        rcpt_columns = [list(c) for c in zip(*recipients)] if recipients else [[] for _ in range(5)]
        row = conn.execute(_RECORD_MESSAGES, (*columns, *rcpt_columns)).fetchone()
        return int(row[0]) if row else 0

    def export_cursor(self, conn: psycopg.Connection[Any], sql: str, params: Sequence[Any], batch: int) -> Any:
        """A server-side cursor in one read-only REPEATABLE READ transaction (one snapshot,
        however long the export)."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur = conn.cursor(name=f"bt_export_{uuid.uuid4().hex[:12]}")
        cur.itersize = batch
        cur.execute(_pg_style(sql), params)
        return cur


def _record_params(message: MessageRecord) -> tuple[Any, ...]:
    """The message's values, then its recipients' as four arrays (address, orcpt, notify, position)."""
    columns = list(zip(*recipient_params(0, message))) or [()] * 5
    return (*message_params(message), *map(list, columns[1:]))


POSTGRES = PostgresDialect()


class PostgresStore(SQLStore):
    """The store on one PostgreSQL database (which must exist; its tables are created)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        # libpq knows postgresql:// and postgres://; anything else is our caller's bug.
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a PostgreSQL store URL: {redact_url(url)!r}")
        super().__init__(POSTGRES, redact_url(url), timeout)
        self.url = url
        self._open(migrations.migrate)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0) -> PostgresStore:
        """Connect and migrate."""
        return cls(url, timeout=timeout)
