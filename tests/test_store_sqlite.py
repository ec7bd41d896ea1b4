"""SQLiteStore on real files: schema, round trips, idempotency, concurrency, failures."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.store import StoreUnavailable, open_store
from bouncetrack.store import migrations
from bouncetrack.store.base import BounceEvent, MessageRecord, OutboxJob, RecipientRecord
from bouncetrack.store.sqlite import SQLiteStore, parse_url

SPAWN = multiprocessing.get_context("spawn")


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_event(
    *,
    received_at: float = 1000.0,
    domain: str | None = "example.com",
    dedupe_key: str = "k",
    message_pk: int | None = None,
    **over: Any,
) -> BounceEvent:
    fields: dict[str, Any] = dict(
        event_id=uuid.uuid4().hex,
        type="bounce",
        hard=True,
        reason="userunknown",
        status="5.1.1",
        reply_code="550",
        diagnostic="550 5.1.1 <u@example.net>: user unknown",
        recipient="u@example.net",
        reported_recipient="u@example.net",
        action="failed",
        remote_mta="mx.example.net",
        domain=domain,
        original_sender="alice@example.com",
        original_message_id="<m1@example.com>",
        token="abcdefghijklmnopqrstuvwx",
        token_status="valid",
        flagged=False,
        message_pk=message_pk,
        received_at=received_at,
        dedupe_key=dedupe_key,
        feedback_type=None,
        sent_at=990.0,
    )
    fields.update(over)
    return BounceEvent(**fields)


def make_message(token_id: int, n_rcpts: int = 3) -> MessageRecord:
    return MessageRecord(
        token_id=token_id,
        token=f"tok{token_id}",
        queue_id="4ABC123",
        message_id=f"<{token_id}@example.com>",
        sender_domain="example.com",
        envelope_sender="alice@example.com",
        verp_sender=f"b+tok{token_id}@bounces.example.org",
        dsn_ret="FULL",
        dsn_envid=None,
        recipients=tuple(
            RecipientRecord(address=f"r{i}@example.net", orcpt=f"rfc822;r{i}@example.net",
                            notify="FAILURE,DELAY" if i else None)
            for i in range(n_rcpts)
        ),
        created_at=123.5,
    )


def store_one(store: SQLiteStore, key: str, *, n_events: int = 1, raw: bytes = b"raw",
              channels: tuple[str, ...] = ("webhook",), received_at: float = 1000.0,
              domain: str | None = "example.com") -> list[str]:
    events = [make_event(dedupe_key=key, received_at=received_at, domain=domain)
              for _ in range(n_events)]
    jobs = [OutboxJob(event_id=e.event_id, channel=c, target=f"https://hook/{c}",
                      created_at=received_at)
            for e in events for c in channels]
    outcome = store.store_report(events, raw, jobs, key)
    assert outcome.stored
    return list(outcome.event_ids)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore.from_url(url(tmp_path / "db" / "store.db"), timeout=5.0)
    yield s
    s.close()


# ------------------------------------------------------------------ schema


def test_open_creates_dir_file_wal_and_records_migrations(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    s = open_store(f"sqlite:///{path}", timeout=5.0)
    s.close()
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT version, description, applied_at FROM schema_migrations").fetchall()
    assert [(v, d) for v, d, _ in rows] == [(v, d) for v, d, _ in migrations.MIGRATIONS]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"messages", "recipients", "events", "raw_reports", "outbox"} <= tables

    # Reopening is a no-op: nothing re-applied, applied_at unchanged.
    SQLiteStore.from_url(f"sqlite:////{path}", timeout=5.0).close()
    assert conn.execute("SELECT version, description, applied_at FROM schema_migrations").fetchall() == rows
    conn.close()


def test_up_to_date_open_costs_one_select(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path, isolation_level=None)
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    assert migrations.migrate(conn) == []
    assert len(traced) == 1 and traced[0].lstrip().upper().startswith("SELECT")
    conn.close()


def test_later_migration_applied_once(store: SQLiteStore) -> None:
    extra = migrations.MIGRATIONS + ((migrations.LATEST_VERSION + 1, "test table",
                                      ("CREATE TABLE t_extra (x INTEGER)",)),)
    conn = sqlite3.connect(store.path, isolation_level=None)
    assert migrations.migrate(conn, extra) == [migrations.LATEST_VERSION + 1]
    assert migrations.migrate(conn, extra) == []
    assert migrations.current_version(conn) == migrations.LATEST_VERSION + 1
    conn.close()


def test_failed_migration_rolls_back(store: SQLiteStore) -> None:
    bad = migrations.MIGRATIONS + ((99, "broken", ("CREATE TABLE t_half (x)", "NOT SQL")),)
    conn = sqlite3.connect(store.path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrations.migrate(conn, bad)
    assert not conn.in_transaction
    assert migrations.current_version(conn) == migrations.LATEST_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='t_half'").fetchone()[0] == 0
    conn.close()


def test_an_upgraded_store_counts_its_old_messages_then_rolls_them_up(tmp_path: Path) -> None:
    # A store from before migration 8 (daily sent counts) keeps its messages: the
    # dashboard counts them live until the worker's first roll-up, and the same after.
    from bouncetrack.store import sql as rows  # the row mapping lives in sql.py (issue 17)

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn, tuple(m for m in migrations.MIGRATIONS if m[0] < 8))
    for token_id in range(1, 4):  # written by the older release
        message = make_message(token_id)
        pk = conn.execute(f"INSERT INTO messages ({rows.MESSAGE_INSERT_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                          rows.message_params(message)).lastrowid
        assert pk is not None
        conn.executemany("INSERT INTO recipients (message_pk, address, orcpt, notify, position) "
                         "VALUES (?, ?, ?, ?, ?)", rows.recipient_params(pk, message))
    conn.close()
    s = SQLiteStore.from_url(f"sqlite:///{path}", timeout=5.0)  # migrates to the latest
    assert s.dashboard_sent(["example.com"], 0, 1e12) == (3, 9)
    assert s.roll_up_sent(time.time()) == 1  # make_message's created_at: one day, long ago
    assert s.dashboard_sent(["example.com"], 0, 1e12) == (3, 9)
    s.close()


def test_parse_url() -> None:
    assert parse_url("sqlite:///var/lib/x.db") == "/var/lib/x.db"
    assert parse_url("sqlite:////var/lib/x.db") == "/var/lib/x.db"
    assert parse_url("sqlite:///:memory:") == ":memory:"
    for bad in ("sqlite:x.db", "sqlite:///", "postgresql://h/db"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_memory_store() -> None:
    s = SQLiteStore.from_url("sqlite:///:memory:")
    assert s.record_message(make_message(1)) > 0
    s.close()


# ----------------------------------------------------------------- messages


def test_duplicate_token_id_is_an_integrity_error(store: SQLiteStore) -> None:
    store.record_message(make_message(7))
    with pytest.raises(sqlite3.IntegrityError):
        store.record_message(make_message(7))
    # the failed transaction left nothing behind and the store still works
    assert store.record_message(make_message(8)) > 0


# ------------------------------------------------------------------ reports


def test_store_report_round_trip_and_idempotency(store: SQLiteStore) -> None:
    pk = store.record_message(make_message(5))
    raw = b"Subject: Undelivered Mail\r\n\r\n" + b"The mail system said no. " * 400
    events = [make_event(dedupe_key="dk1", message_pk=pk, recipient=f"r{i}@example.net")
              for i in range(2)]
    jobs = [OutboxJob(event_id=e.event_id, channel="webhook", target="https://h/x") for e in events]
    first = store.store_report(events, raw, jobs, "dk1")
    assert first.stored and first.event_ids == tuple(e.event_id for e in events)

    # Same bounce again (other event ids minted by the retrying pipe): stored once.
    retry = [make_event(dedupe_key="dk1") for _ in range(2)]
    again = store.store_report(retry, raw,
                               [OutboxJob(event_id=e.event_id, channel="webhook", target="t")
                                for e in retry], "dk1")
    assert not again.stored and again.event_ids == first.event_ids

    for e in events:
        assert store.event(e.event_id) == e
        assert store.raw_report(e.event_id) == raw
    assert store.event(retry[0].event_id) is None
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM raw_reports").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2
    # Compressed on disk, with size and digest of the original.
    sha, size, blob = conn.execute("SELECT sha256, size, compressed FROM raw_reports").fetchone()
    assert size == len(raw) and sha == hashlib.sha256(raw).hexdigest()
    assert len(blob) < len(raw) // 5 and zlib.decompress(blob) == raw
    conn.close()


def test_report_without_events_and_unknown_event(store: SQLiteStore) -> None:
    out = store.store_report([], b"\xff\xfegarbage", [], "garbage-1")
    assert out.stored and out.event_ids == ()
    assert store.store_report([], b"\xff\xfegarbage", [], "garbage-1").stored is False
    assert store.event("nope") is None and store.raw_report("nope") is None


def test_duplicate_jobs_in_one_report_are_stored_once(store: SQLiteStore) -> None:
    e = make_event(dedupe_key="d")
    job = OutboxJob(event_id=e.event_id, channel="smtp", target="ops@example.com")
    store.store_report([e], b"x", [job, job], "d")
    assert len(store.jobs()) == 1


def test_events_between_filters_and_orders(store: SQLiteStore) -> None:
    # inserted out of time order; domains alternate
    times = [50.0, 10.0, 30.0, 30.0, 20.0, 40.0, 60.0]
    ids: dict[str, tuple[float, str]] = {}
    for i, t in enumerate(times):
        dom = "a.example" if i % 2 == 0 else "b.example"
        (eid,) = store_one(store, f"k{i}", received_at=t, domain=dom)
        ids[eid] = (t, dom)
    got = list(store.events_between(20.0, 60.0))
    assert [e.received_at for e in got] == [20.0, 30.0, 30.0, 40.0, 50.0]  # [start, end)
    # equal timestamps in insertion (id) order
    k2, k3 = store.event(got[1].event_id), store.event(got[2].event_id)
    assert k2 is not None and k3 is not None and k2.dedupe_key == "k2" and k3.dedupe_key == "k3"
    only_a = list(store.events_between(0.0, 100.0, domains=["a.example"]))
    assert [e.received_at for e in only_a] == [20.0, 30.0, 50.0, 60.0]
    assert {e.domain for e in only_a} == {"a.example"}
    both = list(store.events_between(0.0, 100.0, domains=["a.example", "b.example"]))
    assert len(both) == len(times)
    assert list(store.events_between(0.0, 100.0, domains=[])) == []


def test_events_between_streams_across_batches(store: SQLiteStore) -> None:
    events = [make_event(dedupe_key="big", received_at=float(1200 - i)) for i in range(1200)]
    store.store_report(events, b"r", [], "big")
    it = store.events_between(0.0, 10_000.0)
    first = next(it)
    # the store stays usable while an iteration is open
    store_one(store, "during", received_at=20_000.0)
    rest = list(it)
    stamps = [first.received_at] + [e.received_at for e in rest]
    assert stamps == sorted(stamps) and len(stamps) == 1200
    # abandoning an iterator half-way releases it
    it2 = store.events_between(0.0, 10_000.0)
    next(it2)
    it2.close()
    store_one(store, "after", received_at=20_001.0)


# ------------------------------------------------------------------- outbox


# -------------------------------------------------------------- concurrency


def _writer(path: str, n: int, index: int, start: Any, out: Any) -> None:
    try:
        start.wait(30)
        s = SQLiteStore.from_url(f"sqlite:///{path}", timeout=30.0)
        shared = s.store_report([make_event(dedupe_key="shared")], b"shared", [], "shared").stored
        for i in range(n):
            store_one(s, f"p{index}-{i}", raw=f"report {index} {i}".encode())
        s.record_message(make_message(10_000 + index))
        s.close()
        out.put((index, "ok", shared))
    except BaseException as exc:  # report, do not hang the parent
        out.put((index, repr(exc), False))


def test_eight_processes_writing_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "store.db"  # nobody has opened it yet: migrations race too
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_writer, args=(str(path), 50, i, start, out)) for i in range(8)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let the interpreters come up, then release them together
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[1] == "ok" for r in results), results
    assert sum(1 for r in results if r[2]) == 1  # the shared report stored exactly once
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM raw_reports").fetchone()[0] == 8 * 50 + 1
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 8 * 50 + 1
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 8 * 50
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 8
    assert conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 8 * 3
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(
        migrations.MIGRATIONS)
    conn.close()


# ----------------------------------------------------------------- failures


def test_lock_held_longer_than_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore.from_url(url(path)).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        s = SQLiteStore.from_url(url(path), timeout=0.5)  # opening only reads: fine
        for attempt in (lambda: s.store_report([], b"x", [], "k"),
                        lambda: s.record_message(make_message(1)),
                        lambda: s.claim_jobs(0.0, 10, 1.0)):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                attempt()
            assert 0.4 <= time.monotonic() - t0 < 3.0
        # reads still work under WAL while the writer holds its lock
        assert s.jobs() == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    # lock released: the same store object writes again
    assert s.store_report([], b"x", [], "k").stored
    s.close()


def test_fresh_database_locked_exclusively_at_open(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None)  # rollback journal, not WAL yet
    other.execute("CREATE TABLE x (y)")
    other.execute("BEGIN EXCLUSIVE")  # blocks readers too
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            SQLiteStore.from_url(url(path), timeout=0.5)
        assert time.monotonic() - t0 < 3.0
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable, match="not-a-dir"):
        SQLiteStore.from_url(url(blocker / "store.db"), timeout=0.5)
    with pytest.raises(StoreUnavailable):
        open_store(url(blocker / "sub" / "store.db"), timeout=0.5)


def test_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable, match="unable to open|CANTOPEN"):
        SQLiteStore.from_url(url(tmp_path / "dir.db"), timeout=0.5)


def test_disk_full_is_unavailable_and_rolls_back(store: SQLiteStore) -> None:
    store_one(store, "before")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # simulate a full disk
    big = os.urandom(2_000_000)  # incompressible: needs far more than two pages
    with pytest.raises(StoreUnavailable, match="full"):
        store.store_report([make_event(dedupe_key="big")], big, [], "big")
    assert not store._conn.in_transaction
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.store_report([make_event(dedupe_key="big")], big, [], "big").stored


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite file at all" * 100)
    with pytest.raises(StoreUnavailable):
        SQLiteStore.from_url(url(path), timeout=0.5)
