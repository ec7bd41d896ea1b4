"""The SQLite store (default): stdlib ``sqlite3`` in WAL mode; its dialect.

Safe with the milter, many pipe processes, the worker and the API writing at
once: WAL lets readers run beside the one writer, every write transaction is
``BEGIN IMMEDIATE`` so a writer waits for the lock up front (within the busy
timeout) instead of failing half-way with ``SQLITE_BUSY_SNAPSHOT``, and every
failure that means "not now" (locked, busy, disk full, read-only, cannot open)
becomes :class:`StoreUnavailable`. The queries are :mod:`.sql`'s, the schema
:mod:`.migrations`'; exports render rows in SQL (:mod:`.sqlite_download`).

The pipe imports this module once per bounce: stdlib only, nothing heavy.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from . import migrations

from .base import MessageRecord, StoreUnavailable
from .sql import (
    MESSAGE_INSERT,
    MESSAGE_INSERT_COLUMNS,
    RECIPIENT_INSERT,
    Dialect,
    SQLStore,
    message_params,
    recipient_params,
)

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

# The database holds raw reports and recipient addresses: owner only (issue 16).
STORE_FILE_MODE = 0o600


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


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


class SQLiteDialect(Dialect):
    name = "SQLite"

    @property
    def render_sql(self) -> dict[str, str]:  # type: ignore[override]
        from .sqlite_download import RENDER_SQL  # the API's: not on the pipe's path

        return RENDER_SQL

    def connect(self, store: SQLStore) -> sqlite3.Connection:
        """Transactions explicit; the busy timeout is set by connect(timeout=…)."""
        return sqlite3.connect(getattr(store, "path"), timeout=store.timeout, isolation_level=None,
                               check_same_thread=False)

    def configure(self, store: SQLStore, conn: sqlite3.Connection) -> None:
        """The per-connection pragmas, in WAL mode."""
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable in WAL up to a power cut
        if getattr(store, "path") != ":memory:":
            self._wal(conn, getattr(store, "path"), store.timeout)

    @staticmethod
    def _wal(conn: sqlite3.Connection, path: str, timeout: float) -> None:
        # journal_mode is persistent: usually already WAL, costing one read.
        # Switching needs an exclusive lock, and a fresh file opened by several
        # processes at once can get SQLITE_BUSY without the busy handler being
        # consulted, so retry until the timeout.
        deadline = time.monotonic() + timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    raise StoreUnavailable(
                        f"SQLite store {path}: cannot switch to WAL mode "
                        f"(journal_mode stays {mode!r}; is the filesystem local?)"
                    )
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in _BUSY_CODES or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def unavailable(self, store: SQLStore, what: str, exc: BaseException) -> StoreUnavailable | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        code = _primary_code(exc)
        if code is not None:
            if code not in _UNAVAILABLE_CODES:
                return None
        elif not (isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in _UNAVAILABLE_WORDS)):
            return None
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        hint = f" (gave up after the {store.timeout:g}s busy timeout)" if code in _BUSY_CODES else ""
        return StoreUnavailable(f"SQLite store {store.name}: {what}: {exc} [{name}]{hint}")

    @contextmanager
    def transaction(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        """One transaction; a write one takes the write lock up front (IMMEDIATE)."""
        conn.execute(begin)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error is the one worth reporting
            raise

    def snapshot(self, conn: sqlite3.Connection) -> Any:
        return self.transaction(conn, "BEGIN")  # a read transaction (WAL: never blocks writers)

    def record_message(self, conn: sqlite3.Connection, message: MessageRecord) -> int:
        message_pk = conn.execute(MESSAGE_INSERT, message_params(message)).lastrowid
        assert message_pk is not None
        conn.executemany(RECIPIENT_INSERT, recipient_params(message_pk, message))
        return message_pk

    def record_messages(self, conn: sqlite3.Connection, messages: Sequence[MessageRecord]) -> int:
        """The journal writer's batch in a few statements, not two per message (issue 20:
        the writer's CPU per message): one multi-row INSERT per :data:`_MESSAGE_ROWS`
        messages that skips a ``token_id`` already stored (a replay after a crash, or
        twice in the batch: the first one wins) and returns the new rows' ids, then one
        ``executemany`` of the new messages' recipients. Returns how many were new."""
        added = 0
        for first in range(0, len(messages), _MESSAGE_ROWS):
            chunk = messages[first : first + _MESSAGE_ROWS]
            new = dict(conn.execute(_messages_insert(len(chunk)), [v for m in chunk for v in message_params(m)]))
            recipients: list[tuple[Any, ...]] = []
            for m in chunk:
                message_pk = new.pop(m.token_id, None)  # popped: a repeated token_id adds no recipients
                if message_pk is not None:
                    added += 1
                    recipients += recipient_params(message_pk, m)
            conn.executemany(RECIPIENT_INSERT, recipients)
        return added

    def export_cursor(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any], batch: int) -> Any:
        conn.execute("PRAGMA query_only = ON")
        return conn.execute(sql, params)  # one statement: one read snapshot (WAL)

    def export(self, store: SQLStore, sql: str, params: Sequence[Any], batch: int) -> Iterator[list[Any]]:
        """``:memory:`` (one database per connection): through ours, batch by batch."""
        if getattr(store, "path") != ":memory:":
            yield from super().export(store, sql, params, batch)
            return
        with store._read("exporting events") as conn:
            cur = conn.execute(sql, params)
        try:
            yield from store._drain(cur, batch, locked=True)
        finally:
            with store._lock:
                cur.close()


# Messages per INSERT of record_messages: 10 values each, within the 999 bound variables
# of SQLite before 3.32 (SQLITE_MAX_VARIABLE_NUMBER).
_MESSAGE_ROWS = 90
_MESSAGE_VALUES = "(" + ", ".join("?" for _ in MESSAGE_INSERT_COLUMNS.split(", ")) + ")"


def _messages_insert(rows: int) -> str:
    """MESSAGE_INSERT for ``rows`` messages, skipping stored token_ids, returning (token_id, id) of the new ones."""
    return (MESSAGE_INSERT + f", {_MESSAGE_VALUES}" * (rows - 1)
            + " ON CONFLICT (token_id) DO NOTHING RETURNING token_id, id")


SQLITE = SQLiteDialect()


class SQLiteStore(SQLStore):
    """The store on one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        super().__init__(SQLITE, path, timeout)
        self.path = path
        if path != ":memory:":
            parent = os.path.dirname(path) or "."
            try:
                os.makedirs(parent, mode=0o750, exist_ok=True)  # not the umask's 0777
            except OSError as exc:
                raise StoreUnavailable(
                    f"SQLite store {path}: cannot create its directory {parent}: {exc.strerror or exc}"
                ) from exc
            create_private(path)
        self._open(migrations.migrate)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0) -> SQLiteStore:
        """Open (creating file and directory if missing) and migrate the store."""
        return cls(parse_url(url), timeout=timeout)
