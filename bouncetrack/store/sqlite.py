"""The SQLite store (default): stdlib ``sqlite3`` in WAL mode.

Safe with the milter, many pipe processes, the worker and the API writing at
once: WAL lets readers run beside the one writer, every write transaction is
``BEGIN IMMEDIATE`` so a writer waits for the lock up front (within the busy
timeout) instead of failing half-way with ``SQLITE_BUSY_SNAPSHOT``, and every
failure that means "not now" (locked, busy, disk full, read-only, cannot open)
becomes :class:`StoreUnavailable`, which the pipe turns into exit 75 so that
Postfix retries.

The pipe imports this module once per bounce: stdlib only, nothing heavy.

One connection per store object, guarded by a lock so that the threaded milter
may share it; transactions are explicit (``isolation_level=None``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Mapping, Sequence

from . import migrations
from . import rows as _rows
from .base import BounceEvent, MessageRecord, OutboxJob, StoreOutcome, StoreUnavailable
from .base import pipe_bucket  # metrics (issue 5)
from .base import SuppressionCandidate  # suppression (issue 6)
from .base import DAY_SECONDS, UNTRUSTED_OVER_QUOTA, UntrustedQuota  # pipe guards (issue 16)

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
from .rows import EVENT_COLUMNS as _EVENT_COLUMNS, EVENT_FIELDS as _EVENT_FIELDS  # shared with postgres
from .rows import FETCH_BATCH as _FETCH_BATCH, MAX_ERROR_LEN as _MAX_ERROR_LEN
from .rows import JOB_COLUMNS as _JOB_COLUMNS, MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from .rows import RAW_COMPRESSION_LEVEL, event_from_row as _event_from_row, job_from_row as _job_from_row

# Primary SQLite result codes that mean "the store cannot be used right now"
# (https://www.sqlite.org/rescode.html). Everything else (constraint
# violations, SQL errors) is a bug and propagates unchanged.
_UNAVAILABLE_CODES = frozenset(
    {
        3,  # SQLITE_PERM
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        11,  # SQLITE_CORRUPT: keep the bounce queued while an operator repairs
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
        26,  # SQLITE_NOTADB
    }
)
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_UNAVAILABLE_WORDS = ("locked", "busy", "disk", "readonly", "read-only", "unable to open", "full")


# --- retention (issue 6; owner: retention) ----------------------------------
_NEVER = _rows.NEVER  # a cutoff older than any row: "keep this kind"
_MAX_BATCH = 10000  # rowids bound per statement (SQLite allows 32766 variables)
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
    f"SELECT count(*) FROM ({_GONE_MESSAGES})",
    f"SELECT count(*) FROM recipients WHERE message_pk IN ({_GONE_MESSAGES})",
    "SELECT count(*) FROM raw_reports WHERE compressed IS NOT NULL AND received_at < :rcut",
    f"SELECT count(*) FROM events e WHERE e.received_at < :ecut AND {_PENDING}",
)


def _marks(n: int) -> str:
    return ",".join("?" * n)

_EVENT_INSERT = (
    f"INSERT INTO events (raw_pk, {_EVENT_COLUMNS}) "
    f"VALUES (?, {', '.join('?' for _ in _EVENT_FIELDS)})"
)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_unavailable(exc: sqlite3.Error) -> bool:
    code = _primary_code(exc)
    if code is not None:
        return code in _UNAVAILABLE_CODES
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(w in text for w in _UNAVAILABLE_WORDS)


def _unavailable(path: str, what: str, exc: sqlite3.Error, timeout: float) -> StoreUnavailable:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    hint = ""
    if _primary_code(exc) in _BUSY_CODES:
        hint = f" (gave up after the {timeout:g}s busy timeout)"
    return StoreUnavailable(f"SQLite store {path}: {what}: {exc} [{name}]{hint}")


def parse_url(url: str) -> str:
    """``sqlite:///abs/path`` or ``sqlite:////abs/path`` → ``/abs/path``.

    Both spellings name an absolute path (the project's URLs use three slashes,
    SQLAlchemy's use four); ``sqlite:///:memory:`` is an in-memory store.
    """
    if not url.startswith("sqlite:"):
        raise ValueError(f"not an SQLite store URL: {url!r}")
    rest = url[len("sqlite:") :]
    if not rest.startswith("//"):
        raise ValueError(f"SQLite store URL must look like sqlite:///abs/path, got {url!r}")
    path = rest[2:].split("?", 1)[0]
    if path in ("/:memory:", ":memory:"):
        return ":memory:"
    path = "/" + path.lstrip("/")
    if path == "/" or path.endswith("/"):
        raise ValueError(f"SQLite store URL names no file: {url!r}")
    return path


# The database holds raw reports and recipient addresses: owner only (issue 16).
STORE_FILE_MODE = 0o600


def create_private(path: str) -> None:
    """Create the database file with :data:`STORE_FILE_MODE` whatever the umask, if missing.

    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's
    mode (its unix VFS fchmods them to it), so they follow. An existing file is
    left as it is (``doctor`` warns when it is readable by others); a file that
    cannot be created is left to ``sqlite3.connect`` to report.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STORE_FILE_MODE)
    except OSError:
        return
    try:
        os.fchmod(fd, STORE_FILE_MODE)  # exactly: a umask such as 0o200 would leave it read-only
    finally:
        os.close(fd)


class SQLiteStore:
    """The :class:`~bouncetrack.store.base.Store` on one SQLite file."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.RLock()
        if path != ":memory:":
            parent = os.path.dirname(path) or "."
            try:
                os.makedirs(parent, mode=0o750, exist_ok=True)  # not the umask's 0777
            except OSError as exc:
                raise StoreUnavailable(
                    f"SQLite store {path}: cannot create its directory {parent}: "
                    f"{exc.strerror or exc}"
                ) from exc
            create_private(path)
        try:
            conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise _unavailable(path, "cannot open", exc, timeout) from exc
            raise
        try:
            try:
                self._configure(conn)
                migrations.migrate(conn)
            except sqlite3.Error as exc:
                if _is_unavailable(exc):
                    raise _unavailable(path, "opening", exc, timeout) from exc
                raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0) -> SQLiteStore:
        """Open (creating file and directory if missing) and migrate the store."""
        return cls(parse_url(url), timeout=timeout)

    def _configure(self, conn: sqlite3.Connection) -> None:
        # The busy timeout is set by connect(timeout=…). Per-connection pragmas:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable in WAL up to a power cut
        if self.path == ":memory:":
            return
        # journal_mode is persistent: usually already WAL, costing one read.
        # Switching needs an exclusive lock, and a fresh file opened by several
        # processes at once can get SQLITE_BUSY without the busy handler being
        # consulted, so retry until the timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    raise StoreUnavailable(
                        f"SQLite store {self.path}: cannot switch to WAL mode "
                        f"(journal_mode stays {mode!r}; is the filesystem local?)"
                    )
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in _BUSY_CODES or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise _unavailable(self.path, what, exc, self.timeout) from exc
            raise

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard(what):
            yield self._conn

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken up front (IMMEDIATE)."""
        with self._lock, self._guard(what):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one worth reporting
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------- milter side

    def record_message(self, message: MessageRecord) -> int:
        """Store the message and its recipients in one transaction; return messages.id."""
        with self._write("recording a message") as conn:
            cur = conn.execute(
                f"INSERT INTO messages ({_rows.MESSAGE_INSERT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _rows.message_params(message),
            )
            message_pk = cur.lastrowid
            assert message_pk is not None
            conn.executemany(
                "INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
                "VALUES (?, ?, ?, ?, ?)",
                _rows.recipient_params(message_pk, message),
            )
        return message_pk

    def record_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Store a batch of messages and their recipients in one transaction,
        idempotently: a token_id already stored is skipped (the milter journal's
        writer replays a segment after a crash). Returns how many were new."""
        added = 0
        with self._write("recording messages") as conn:
            for message in messages:
                cur = conn.execute(
                    f"INSERT INTO messages ({_rows.MESSAGE_INSERT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token_id) DO NOTHING",
                    _rows.message_params(message),
                )
                if cur.rowcount != 1 or cur.lastrowid is None:
                    continue
                added += 1
                conn.executemany(
                    "INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
                    "VALUES (?, ?, ?, ?, ?)",
                    _rows.recipient_params(cur.lastrowid, message),
                )
        return added

    def message_by_token_id(self, token_id: int) -> MessageRecord | None:
        with self._read("reading a message") as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE token_id = ?", (token_id,)
            ).fetchone()
            return None if row is None else _message_with_recipients(conn, row)

    # ---------------------------------------------------------- send API side

    def message_by_message_id(
        self, message_id: str, queue_id: str | None = None
    ) -> MessageRecord | None:
        """The newest tracked message with this Message-ID (and queue id, if given).

        The send API generates a fresh Message-ID per request and looks its message
        up right after Postfix answered 250: the milter records it before that.
        """
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?"
        args: tuple[str, ...] = (message_id,)
        if queue_id is not None:
            sql += " AND queue_id = ?"
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

        A ``dedupe_key`` already stored means a retry of a report stored
        earlier (Postfix redelivering after a crash or a lost exit status):
        nothing is written and the first delivery's event ids are returned.

        ``pipe_started`` (metrics): when the pipe began; the run is counted as
        ``stored`` or ``duplicate`` with its duration, in this transaction.

        ``suppress`` (issue 6): recipients to put on their domain's suppression
        list, written after the events (the soft-bounce rule counts them) in
        this transaction; a duplicate writes nothing (the first run did).

        ``guards`` (issue 16): the pipe's bounds that applied to this report,
        added to ``metric_pipe_guards`` in this transaction. ``untrusted``: the
        report has no valid token; when its host has used up its quota of the
        day, nothing of it is stored (``over_quota``, counted as a guard).
        """
        # Hash and compress before taking the write lock: keep it short.
        digest = hashlib.sha256(raw).hexdigest()
        compressed = zlib.compress(raw, RAW_COMPRESSION_LEVEL)
        now = time.time()
        received_at = events[0].received_at if events else now
        with self._write("storing a report") as conn:
            row = conn.execute(
                "SELECT id FROM raw_reports WHERE dedupe_key = ?", (dedupe_key,)
            ).fetchone()
            if row is not None:
                ids = conn.execute(
                    "SELECT event_id FROM events WHERE raw_pk = ? ORDER BY id", (row[0],)
                ).fetchall()
                if pipe_started is not None:  # metrics (issue 5)
                    self._count_pipe_run(conn, "duplicate", pipe_started)
                return StoreOutcome(stored=False, event_ids=tuple(r[0] for r in ids))
            if untrusted is not None and not self._untrusted_allowed(conn, untrusted, received_at):
                self._count_guards(conn, {**guards, UNTRUSTED_OVER_QUOTA: 1})
                return StoreOutcome(stored=False, over_quota=True)
            self._count_guards(conn, guards)
            raw_pk = conn.execute(
                "INSERT INTO raw_reports (dedupe_key, sha256, size, compressed, received_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (dedupe_key, digest, len(raw), compressed, received_at),
            ).lastrowid
            conn.executemany(
                _EVENT_INSERT,
                [_rows.event_params(e, raw_pk) for e in events],
            )
            conn.executemany(
                "INSERT INTO outbox (event_id, channel, target, state, attempts, "
                "next_attempt_at, last_error, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id, channel, target) DO NOTHING",
                [_rows.job_params(j, now) for j in jobs],
            )
            if suppress:  # suppression list (issue 6)
                from . import sqlite_suppression

                sqlite_suppression.apply_candidates(conn, suppress, now)
            if pipe_started is not None:  # metrics (issue 5)
                self._count_pipe_run(conn, "stored", pipe_started)
        return StoreOutcome(stored=True, event_ids=tuple(e.event_id for e in events))

    def raw_report(self, event_id: str) -> bytes | None:
        """The raw report an event came from, decompressed; None if unknown or purged."""
        with self._read("reading a raw report") as conn:
            row = conn.execute(
                "SELECT r.compressed FROM events e JOIN raw_reports r ON r.id = e.raw_pk "
                "WHERE e.event_id = ?",
                (event_id,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return zlib.decompress(row[0])

    def event(self, event_id: str) -> BounceEvent | None:
        with self._read("reading an event") as conn:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else _event_from_row(row)

    def events_between(
        self, start: float, end: float, domains: Sequence[str] | None = None
    ) -> Generator[BounceEvent, None, None]:
        """Events with ``start <= received_at < end``, ordered by (received_at, id).

        Streams in batches (constant memory). The store's lock is held only
        while fetching a batch, never while the caller holds a yielded event.
        ``domains=[]`` selects nothing; ``None`` selects every domain. Close
        the generator (or exhaust it) to release its cursor early.
        """
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE received_at >= ? AND received_at < ?"
        params: list[Any] = [start, end]
        if domains is not None:
            if not domains:
                return
            sql += f" AND domain IN ({', '.join('?' for _ in domains)})"
            params.extend(domains)
        sql += " ORDER BY received_at, id"
        with self._read("reading events") as conn:
            cur = conn.execute(sql, params)
        try:
            while True:
                with self._read("reading events"):
                    rows = cur.fetchmany(_FETCH_BATCH)
                if not rows:
                    return
                for row in rows:
                    yield _event_from_row(row)
        finally:
            with self._lock:
                cur.close()

    # =========================================================================
    # Queries for the API (issue 5, download section; owner: download API).
    # The SQL (keyset on events.id, per-domain UNION ALL, rows rendered by
    # SQLite) lives in sqlite_download, imported lazily: the pipe never pays.
    # =========================================================================

    def events_page(
        self, query: DownloadQuery, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, BounceEvent]]:
        """Up to ``limit`` events with ``id > after_id`` in id order, as (id, event)."""
        from . import sqlite_download as dl

        if not query.domains or limit <= 0:
            return []
        sql, params = dl.select(query, _EVENT_COLUMNS, after_id, limit)
        with self._read("reading a page of events") as conn:
            rows = conn.execute(sql, params).fetchall()
        return _rows.keyed_events(rows)

    def iter_events(self, query: DownloadQuery, after_id: int = 0) -> Iterator[tuple[int, BounceEvent]]:
        """Every event of the query after ``after_id``, in id order, streamed."""
        for rows in self._download_batches(query, _EVENT_COLUMNS, after_id, _FETCH_BATCH):
            for r in rows:
                yield int(r[0]), _event_from_row(r[1:])

    def rendered_page(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """Like :meth:`events_page`, each event rendered by SQLite as ``fmt`` (json | csv)."""
        from . import sqlite_download as dl

        if not query.domains or limit <= 0:
            return []
        sql, params = dl.select(query, dl.RENDER_SQL[fmt], after_id, limit)
        with self._read("reading a page of events") as conn:
            return [(int(r[0]), str(r[1])) for r in conn.execute(sql, params).fetchall()]

    def iter_rendered(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, batch: int = 2000
    ) -> Iterator[list[tuple[int, str]]]:
        """Every event of the query after ``after_id``, rendered, in batches of ``batch`` rows.

        Constant memory whatever the range: one statement over an index in id
        order (no sort), fetched ``batch`` rows at a time.
        """
        from . import sqlite_download as dl

        return self._download_batches(query, dl.RENDER_SQL[fmt], after_id, batch)

    def _download_batches(
        self, query: DownloadQuery, columns: str, after_id: int, batch: int
    ) -> Iterator[list[Any]]:
        """Batches of ``(id, *columns)`` rows of one statement, hence one snapshot.

        A file store reads through a connection of its own, opened here and
        closed when the generator finishes or is closed: a long export neither
        holds this store's lock nor shares its connection with the thread that
        happens to run the next batch (Starlette iterates in a thread pool).
        """
        from . import sqlite_download as dl

        if not query.domains:
            return
        sql, params = dl.select(query, columns, after_id, None)
        if self.path == ":memory:":  # one database per connection: use ours, batch by batch
            with self._read("exporting events") as conn:
                cur = conn.execute(sql, params)
            try:
                while True:
                    with self._read("exporting events"):
                        rows = cur.fetchmany(batch)
                    if not rows:
                        return
                    yield rows
            finally:
                with self._lock:
                    cur.close()
        with self._guard("exporting events"):
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        try:
            with self._guard("exporting events"):
                conn.execute("PRAGMA query_only = ON")
                cur = conn.execute(sql, params)
            while True:
                with self._guard("exporting events"):
                    rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield rows
        finally:
            conn.close()

    # ----------------------------------------------- end of download section

    def purge_raw_before(self, cutoff: float, batch: int = 1000) -> int:
        """Retention: drop the compressed bodies of reports received before ``cutoff``.

        Event rows stay, and so do the raw_reports rows (their dedupe keys keep
        deduplicating late retries); only the bodies go. Each batch is its own
        short transaction so pipes are not kept waiting. Returns bodies dropped.
        """
        total = 0
        while True:
            with self._write("purging raw reports") as conn:
                n = conn.execute(
                    "UPDATE raw_reports SET compressed = NULL WHERE id IN ("
                    "SELECT id FROM raw_reports WHERE compressed IS NOT NULL AND received_at < ? "
                    "LIMIT ?)",
                    (cutoff, batch),
                ).rowcount
            total += n
            if n < batch:
                return total

    # =========================================================================
    # Retention (issue 6, retention section; owner: retention). Implements the
    # retention methods of base.Store: keyset walks in (time, rowid) order, each
    # batch of rowids deleted in its own short IMMEDIATE transaction so that
    # pipes and the milter wait at most one batch. No delete triggers exist, so
    # the metric counters (cumulative totals) are left as they are.
    # =========================================================================

    def purge_counts(
        self, events_before: float | None, messages_before: float | None, raw_before: float | None
    ) -> PurgeCounts:
        """What a purge with these cutoffs would delete (dry run), in one read snapshot."""
        p = _rows.retention_cutoffs(events_before, messages_before, raw_before)
        with self._read("counting what retention would purge") as conn:
            conn.execute("BEGIN")  # one snapshot (WAL: readers never block writers)
            try:
                counts = [int(conn.execute(sql, p).fetchone()[0]) for sql in _RETENTION_COUNTS]
            finally:
                conn.execute("COMMIT")
        from .views import PurgeCounts
        return PurgeCounts(*counts)

    def _keyset_walk(
        self, what: str, table: str, time_col: str, cutoff: float, batch: int, extra: str = ""
    ) -> Iterator[tuple[sqlite3.Connection, list[Any]]]:
        """Rows of ``table`` with ``time_col < cutoff`` in (time, id) order, ``batch`` at a
        time, each batch yielded as ``(conn, rows)`` inside its own short IMMEDIATE
        transaction (committed when the caller asks for the next). Rows are
        ``(id, time, *extra columns)``."""
        last: tuple[float, int] = (_NEVER, 0)
        while True:
            with self._write(what) as conn:
                rows = conn.execute(
                    f"SELECT id, {time_col}{extra} FROM {table} "
                    f"WHERE {time_col} < ? AND ({time_col}, id) > (?, ?) "
                    f"ORDER BY {time_col}, id LIMIT ?",
                    (cutoff, last[0], last[1], batch),
                ).fetchall()
                if rows:
                    last = (float(rows[-1][1]), int(rows[-1][0]))
                    yield conn, rows
            if len(rows) < batch:
                return

    def purge_events_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete events received before ``cutoff`` with their settled jobs, then raw
        report rows received before ``cutoff`` that no event references."""
        batch = max(1, min(batch, _MAX_BATCH))
        events = jobs = kept = reports = 0
        for conn, rows in self._keyset_walk(
            "purging events", "events", "received_at", cutoff, batch, ", event_id"
        ):
            marks = _marks(len(rows))
            pending = {r[0] for r in conn.execute(
                f"SELECT DISTINCT event_id FROM outbox WHERE state = 'pending' "
                f"AND event_id IN ({marks})", [r[2] for r in rows])}
            gone = [r for r in rows if r[2] not in pending]
            kept += len(rows) - len(gone)
            if gone:
                marks = _marks(len(gone))
                jobs += conn.execute(
                    f"DELETE FROM outbox WHERE event_id IN ({marks})", [r[2] for r in gone]
                ).rowcount
                events += conn.execute(
                    f"DELETE FROM events WHERE id IN ({marks})", [r[0] for r in gone]
                ).rowcount
        for conn, rows in self._keyset_walk("purging raw reports", "raw_reports", "received_at", cutoff, batch):
            ids = [r[0] for r in rows]
            reports += conn.execute(
                f"DELETE FROM raw_reports WHERE id IN ({_marks(len(ids))}) AND NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.raw_pk = raw_reports.id)",
                ids,
            ).rowcount
        from .views import PurgeCounts
        return PurgeCounts(events=events, outbox_jobs=jobs, reports=reports, events_kept_pending=kept)

    def purge_messages_before(self, cutoff: float, batch: int = 1000) -> PurgeCounts:
        """Delete messages recorded before ``cutoff`` that no event references, with
        their recipients."""
        batch = max(1, min(batch, _MAX_BATCH))
        messages = recipients = 0
        for conn, rows in self._keyset_walk("purging messages", "messages", "created_at", cutoff, batch):
            ids = [r[0] for r in rows]
            used = {r[0] for r in conn.execute(
                f"SELECT DISTINCT message_pk FROM events WHERE message_pk IN ({_marks(len(ids))})",
                ids)}
            free = [i for i in ids if i not in used]
            if free:
                marks = _marks(len(free))
                recipients += conn.execute(
                    f"DELETE FROM recipients WHERE message_pk IN ({marks})", free).rowcount
                messages += conn.execute(
                    f"DELETE FROM messages WHERE id IN ({marks})", free).rowcount
        from .views import PurgeCounts
        return PurgeCounts(messages=messages, recipients=recipients)

    # ========================================================== end of retention

    # ----------------------------------------------------------------- outbox

    def claim_jobs(self, now: float, limit: int, lease_seconds: float) -> list[OutboxJob]:
        """Lease up to ``limit`` due jobs until ``now + lease_seconds``.

        Select and lease happen in one IMMEDIATE transaction, so two workers
        never claim the same job; a worker that dies lets its lease expire and
        the job becomes claimable again (at-least-once).
        """
        if limit <= 0:
            return []
        until = now + lease_seconds
        with self._write("claiming outbox jobs") as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM outbox "
                "WHERE state = 'pending' AND next_attempt_at <= ? "
                "AND (lease_until IS NULL OR lease_until <= ?) "
                "ORDER BY next_attempt_at, id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_until = ?, updated_at = ? WHERE id = ?",
                [(until, now, r[0]) for r in rows],
            )
        return [_job_from_row(r, lease_until=until, updated_at=now) for r in rows]

    def job_delivered(self, job_id: int, now: float) -> None:
        with self._write("marking a job delivered") as conn:
            conn.execute(
                "UPDATE outbox SET state = 'delivered', lease_until = NULL, updated_at = ? "
                "WHERE id = ?",
                (now, job_id),
            )

    def job_failed(
        self, job_id: int, now: float, error: str, next_attempt_at: float | None
    ) -> None:
        """Count a failed attempt; ``next_attempt_at=None`` dead-letters the job.

        Only a pending job changes: a late failure report never undoes a
        delivery or a dead-lettering recorded meanwhile.
        """
        with self._write("recording a job failure") as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, lease_until = NULL, "
                "updated_at = ?, state = CASE WHEN ? IS NULL THEN 'dead' ELSE 'pending' END, "
                "next_attempt_at = COALESCE(?, next_attempt_at) "
                "WHERE id = ? AND state = 'pending'",
                (error[:_MAX_ERROR_LEN], now, next_attempt_at, next_attempt_at, job_id),
            )

    def jobs(self, state: str | None = None, limit: int = 100) -> list[OutboxJob]:
        """Jobs, newest first, optionally of one state (for the CLI)."""
        where, params = ("", [limit]) if state is None else (" WHERE state = ?", [state, limit])
        with self._read("listing jobs") as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM outbox{where} ORDER BY id DESC LIMIT ?", params
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    def replay_job(self, job_id: int, now: float) -> bool:
        """Make a job pending again, due now, attempts reset; False if no such job.

        A pending job keeps its lease (a worker may be delivering it right now).
        """
        with self._write("replaying a job") as conn:
            n = conn.execute(
                "UPDATE outbox SET lease_until = CASE WHEN state = 'pending' "
                "THEN lease_until ELSE NULL END, "
                "state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? "
                "WHERE id = ?",
                (now, now, job_id),
            ).rowcount
        return n > 0

    def outbox_stats(self, now: float) -> dict[str, float]:
        """Counts per state, due/leased pending jobs, age of the oldest pending job.

        Keys: ``pending``, ``delivered``, ``dead``, ``due`` (pending and due
        now), ``leased`` (pending, held by a worker), ``oldest_pending_age``
        (seconds since the oldest pending job was created; 0 when none).
        """
        with self._read("reading outbox statistics") as conn:
            states = conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
            due, leased, oldest = conn.execute(
                "SELECT count(*) FILTER (WHERE next_attempt_at <= ?1), "
                "count(*) FILTER (WHERE lease_until > ?1), min(created_at) "
                "FROM outbox WHERE state = 'pending'",
                (now,),
            ).fetchone()
        return _rows.outbox_stats(now, states, due, leased, oldest)

    # =========================================================================
    # Metrics (issue 5, Prometheus section; owner: metrics). Implements
    # base.MetricsStore. The counter tables are kept by triggers (migration 3);
    # reading them costs a few small scans, whatever the number of events.
    # =========================================================================

    def _count_guards(self, conn: sqlite3.Connection, guards: Mapping[str, int]) -> None:
        conn.executemany(
            "INSERT INTO metric_pipe_guards (guard, count) VALUES (?, ?) "
            "ON CONFLICT (guard) DO UPDATE SET count = count + excluded.count",
            sorted((g, n) for g, n in guards.items() if n > 0),
        )

    def _untrusted_allowed(self, conn: sqlite3.Connection, quota: UntrustedQuota, received_at: float) -> bool:
        """Count one more untrusted report of ``quota.host`` today, unless its quota is used up."""
        day = int(received_at // DAY_SECONDS)
        conn.execute("DELETE FROM untrusted_reports WHERE day < ?", (day - 1,))
        row = conn.execute(
            "SELECT count FROM untrusted_reports WHERE host = ? AND day = ?", (quota.host, day)
        ).fetchone()
        if row is not None and row[0] >= quota.per_day:
            return False
        conn.execute(
            "INSERT INTO untrusted_reports (host, day, count) VALUES (?, ?, 1) "
            "ON CONFLICT (host, day) DO UPDATE SET count = count + 1",
            (quota.host, day),
        )
        return True

    def _count_pipe_run(self, conn: sqlite3.Connection, outcome: str, started: float) -> None:
        seconds = max(0.0, time.time() - started)
        conn.execute(
            "INSERT INTO metric_pipe_runs (outcome, le, count, seconds_sum) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (outcome, le) DO UPDATE SET count = count + 1, "
            "seconds_sum = seconds_sum + excluded.seconds_sum",
            (outcome, pipe_bucket(seconds), seconds),
        )

    def metric_counts(self, now: float) -> MetricCounts:
        """The metric counters and the outbox gauges (pending/dead use outbox_state_next)."""
        with self._read("reading metric counters") as conn:
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
            outbox = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= ?1), "
                "count(*) FILTER (WHERE lease_until > ?1), min(created_at) "
                "FROM outbox WHERE state = 'pending'",
                (now,),
            ).fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM outbox WHERE state = 'dead'").fetchone()
            (created,) = conn.execute(_rows.STORE_CREATED_SQL).fetchone()
        return _rows.metric_counts(now, events, messages, deliveries, runs, outbox, dead, guards, created)

    # ============================================================ end of metrics

    # =========================================================================
    # Suppression list (issue 6, suppression section; owner: suppression).
    # Implements base.SuppressionStore; the SQL is in sqlite_suppression.
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
        from . import sqlite_suppression as sup

        with self._read("listing suppressions") as conn:
            return sup.select(conn, domains, now, address, after_id, limit, include_inactive)

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        from . import sqlite_suppression as sup

        if not entries:
            return 0
        with self._write("adding suppressions") as conn:
            return sup.add(conn, entries)

    def forget_address(
        self, address: str, domains: Sequence[str] | None, now: float, pseudonym: Callable[[str, str], str]
    ) -> ForgetCounts:
        from .sqlite_forget import forget

        with self._write("forgetting an address") as conn:
            return forget(conn, address, domains, now, pseudonym)

    def remove_suppressions(
        self, domains: Sequence[str] | None, addresses: Sequence[str], now: float
    ) -> list[tuple[str, str]]:
        from . import sqlite_suppression as sup

        with self._write("removing suppressions") as conn:
            return sup.remove(conn, domains, addresses, now)

    def suppression_seq(self) -> int:
        from . import sqlite_suppression as sup

        with self._read("reading the suppression change number") as conn:
            return sup.current_seq(conn)

    def suppression_keys(self, now: float, batch: int = 10000) -> Iterator[list[tuple[str, str]]]:
        """Active entries in batches; the lock is held per batch, never across a yield."""
        from . import sqlite_suppression as sup

        with self._read("loading suppressions") as conn:
            batches = sup.keys(conn, now, batch)
        try:
            while True:
                with self._read("loading suppressions"):
                    rows = next(batches, None)
                if rows is None:
                    return
                yield rows
        finally:
            with self._lock:
                batches.close()

    def suppression_changes(self, after_seq: int, limit: int = 10000) -> list[SuppressionChange]:
        from . import sqlite_suppression as sup

        with self._read("reading suppression changes") as conn:
            return sup.changes(conn, after_seq, limit)

    def suppressions_expiring(self, after: float, until: float) -> list[tuple[str, str]]:
        from . import sqlite_suppression as sup

        with self._read("reading expired suppressions") as conn:
            return sup.expiring(conn, after, until)

    # ========================================================= end of suppression


    # =========================================================================
    # Dashboard aggregates (issue 5, dashboard section; owner: dashboard).
    # Implements base.DashboardStore: read-only queries for the server-rendered
    # dashboard. Every query is scoped to the caller's sender domains
    # (``domains=()`` selects nothing). Helpers: _dash_* at the end of the module.
    # =========================================================================

    def dashboard_sent(self, domains: Sequence[str], start: float, end: float) -> tuple[int, int]:
        """(messages, recipients) the milter recorded with ``start <= created_at < end``.

        Whole days the worker rolled up (:meth:`roll_up_sent`) come from
        message_days, the rest from the messages themselves: the same counts
        either way, and a busy month is 30 rows instead of every message. Rolled
        days never change, so reading the watermark first is consistent.
        """
        if not domains:
            return 0, 0
        marks = _dash_marks(domains)
        with self._read("counting sent messages") as conn:
            (rolled_until,) = conn.execute("SELECT until FROM sent_rolled_until").fetchone()
            days, live = _rows.sent_windows(start, end, rolled_until)
            messages = recipients = 0
            if days is not None:
                messages, recipients = conn.execute(
                    "SELECT coalesce(sum(messages), 0), coalesce(sum(recipients), 0) FROM message_days "
                    f"WHERE domain IN ({marks}) AND day >= ? AND day < ?",
                    (*domains, *days),
                ).fetchone()
            for lo, hi in live:
                row = conn.execute(
                    "SELECT count(DISTINCT m.id), count(r.id) FROM messages m "
                    "LEFT JOIN recipients r ON r.message_pk = m.id "
                    f"WHERE m.sender_domain IN ({marks}) AND m.created_at >= ? AND m.created_at < ?",
                    (*domains, lo, hi),
                ).fetchone()
                messages += row[0]
                recipients += row[1]
        return int(messages), int(recipients)

    def roll_up_sent(self, until: float) -> int:
        """Count the messages created before ``until`` (cut to a UTC day start) into
        message_days, for :meth:`dashboard_sent`; returns the day rows written.

        One day of messages per transaction, so the milter's writes never wait
        long for the lock, even on the first roll-up of a long history. Messages
        stay (retention deletes them); the day rows outlive them.
        """
        target = _rows.day_start(until)
        written = 0
        while True:
            with self._write("rolling up sent counts") as conn:
                (rolled,) = conn.execute("SELECT until FROM sent_rolled_until").fetchone()
                if rolled >= target:
                    return written
                (oldest,) = conn.execute(
                    "SELECT min(created_at) FROM messages WHERE created_at >= ?", (rolled,)
                ).fetchone()
                step = _rows.roll_up_step(rolled, oldest, target)
                written += conn.execute(
                    "INSERT INTO message_days (domain, day, messages, recipients) "
                    "SELECT m.sender_domain, CAST(m.created_at / 86400 AS INTEGER) * 86400 AS day, count(*), "
                    "sum((SELECT count(*) FROM recipients r WHERE r.message_pk = m.id)) FROM messages m "
                    "WHERE m.created_at >= ? AND m.created_at < ? GROUP BY m.sender_domain, day "
                    "ON CONFLICT (domain, day) DO UPDATE SET messages = messages + excluded.messages, "
                    "recipients = recipients + excluded.recipients",
                    (rolled, step),
                ).rowcount
                conn.execute("UPDATE sent_rolled_until SET until = ?", (step,))

    def dashboard_daily(self, domains: Sequence[str], start: float, end: float) -> list[DailyCount]:
        """Events per UTC day, type and severity, oldest day first."""
        if not domains:
            return []
        with self._read("counting events per day") as conn:
            rows = conn.execute(
                "SELECT strftime('%Y-%m-%d', received_at, 'unixepoch') AS day, type, hard, count(*) "
                f"FROM events WHERE domain IN ({_dash_marks(domains)}) "
                "AND received_at >= ? AND received_at < ? "
                "GROUP BY day, type, hard ORDER BY day, type, hard",
                (*domains, start, end),
            ).fetchall()
        return _rows.daily_counts(rows)

    def dashboard_top_reasons(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The most frequent reasons among bounces (hard and soft), most frequent first."""
        return self._dash_top("reason", domains, start, end, limit)

    def dashboard_top_recipient_domains(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The recipient domains that bounced most, most frequent first."""
        return self._dash_top(
            "lower(substr(recipient, instr(recipient, '@') + 1))",
            domains,
            start,
            end,
            limit,
            extra="AND instr(recipient, '@') > 0",
        )

    def _dash_top(
        self,
        expr: str,
        domains: Sequence[str],
        start: float,
        end: float,
        limit: int,
        extra: str = "",
    ) -> list[tuple[str, int]]:
        if not domains or limit <= 0:
            return []
        with self._read("ranking bounces") as conn:
            rows = conn.execute(
                f"SELECT {expr} AS k, count(*) AS n FROM events "
                f"WHERE domain IN ({_dash_marks(domains)}) AND received_at >= ? AND received_at < ? "
                f"AND type = 'bounce' {extra} GROUP BY k ORDER BY n DESC, k LIMIT ?",
                (*domains, start, end, limit),
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
        """Events newest first as (events.id, event).

        Keyset pagination on ``events.id`` (stable while new events arrive):
        ``before_pk`` gives the next (older) page, ``after_pk`` the previous
        (newer) one; both pages come back newest first.
        """
        if not query.domains or limit <= 0:
            return []
        where = [f"domain IN ({_dash_marks(query.domains)})"]
        params: list[Any] = list(query.domains)
        for clause, value in (
            ("received_at >= ?", query.start),
            ("received_at < ?", query.end),
            ("type = ?", query.type),
            ("hard = ?", None if query.hard is None else int(query.hard)),
            ("reason = ?", query.reason),
            ("id < ?", before_pk),
            ("id > ?", after_pk),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.recipient_contains:
            # instr, not LIKE: the user's text has no wildcards. SQLite's lower()
            # folds ASCII only, so the needle is folded the same way.
            where.append("instr(lower(coalesce(recipient, '')), ?) > 0")
            params.append(_dash_ascii_lower(query.recipient_contains))
        order = "ASC" if after_pk is not None and before_pk is None else "DESC"
        params.append(limit)
        with self._read("listing events") as conn:
            rows = conn.execute(
                f"SELECT id, {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                f"ORDER BY id {order} LIMIT ?",
                params,
            ).fetchall()
        out = _rows.keyed_events(rows)
        if order == "ASC":
            out.reverse()
        return out

    def dashboard_jobs(self, domains: Sequence[str], kind: str, limit: int = 100) -> list[JobView]:
        """Outbox jobs of one kind, newest first: ``pending`` (not yet tried),
        ``failed`` (pending, tried and failed at least once), ``dead``, ``delivered``."""
        if not domains or limit <= 0:
            return []
        cond = _DASH_JOB_KINDS[kind]
        with self._read("listing outbox jobs") as conn:
            rows = conn.execute(
                f"SELECT {_DASH_JOB_COLUMNS}, e.domain, e.recipient, e.type "
                "FROM outbox o JOIN events e ON e.event_id = o.event_id "
                f"WHERE e.domain IN ({_dash_marks(domains)}) AND {cond} "
                "ORDER BY o.id DESC LIMIT ?",
                (*domains, limit),
            ).fetchall()
        return [_dash_job_view(r) for r in rows]

    def dashboard_job_counts(self, domains: Sequence[str]) -> dict[str, int]:
        """Number of jobs of each kind (keys as :meth:`dashboard_jobs`) in scope."""
        if not domains:
            return _rows.job_kind_counts(())
        with self._read("counting outbox jobs") as conn:
            found = conn.execute(
                f"SELECT {_rows.DASH_JOB_KIND_CASE} AS kind, count(*) "
                "FROM outbox o JOIN events e ON e.event_id = o.event_id "
                f"WHERE e.domain IN ({_dash_marks(domains)}) GROUP BY kind",
                tuple(domains),
            ).fetchall()
        return _rows.job_kind_counts(found)

    def dashboard_job(self, job_id: int) -> JobView | None:
        """One job with its event's domain (for scoping a replay); None if unknown."""
        with self._read("reading an outbox job") as conn:
            row = conn.execute(
                f"SELECT {_DASH_JOB_COLUMNS}, e.domain, e.recipient, e.type "
                "FROM outbox o LEFT JOIN events e ON e.event_id = o.event_id WHERE o.id = ?",
                (job_id,),
            ).fetchone()
        return None if row is None else _dash_job_view(row)

    # ---------------------------------------------- end of dashboard aggregates


def _message_with_recipients(conn: sqlite3.Connection, row: Sequence[Any]) -> MessageRecord:
    """A ``messages`` row (``_MESSAGE_COLUMNS``) with its recipients in RCPT order."""
    rcpts = conn.execute(
        f"SELECT {_rows.RECIPIENT_COLUMNS} FROM recipients "
        "WHERE message_pk = ? ORDER BY position",
        (row[0],),
    ).fetchall()
    return _rows.message_from_row(row, rcpts)



# =============================================================================
# Dashboard aggregates: module-level helpers (owner: dashboard).
# =============================================================================

_DASH_JOB_COLUMNS = _rows.job_columns("o")
_DASH_JOB_KINDS = _rows.DASH_JOB_KINDS
_dash_ascii_lower = _rows.ascii_lower
_dash_job_view = _rows.job_view_from_row


def _dash_marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


