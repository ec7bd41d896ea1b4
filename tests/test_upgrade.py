"""Upgrade path (issue 15): a store made by the previous release opens and migrates.

``tests/samples/store/c61ff5e.sql`` is a SQLite store written by bouncetrack at
c61ff5e (schema version 8), through that release's own store API (three tracked
messages, two attributed bounces with webhook jobs and automatic suppressions, an
unattributed report, a manual suppression), dumped with ``sqlite3 .dump``. Opening
it with this release applies the later migrations and loses nothing; the events
gain the original message's Postfix queue id.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.core.events import event_to_json
from bouncetrack.store import migrations
from bouncetrack.store.sqlite import SQLiteStore
from bouncetrack.store.views import DownloadQuery

from tests.pg import Cluster, pg_cluster as pg_cluster  # noqa: F401  (fixture)

FIXTURE = Path(__file__).parent / "samples" / "store" / "c61ff5e.sql"
T = 1767225600.0  # the fixture's clock: 2026-01-01T00:00:00Z

TABLES = ("messages", "recipients", "raw_reports", "events", "outbox", "suppressions",
          "metric_event_counts", "metric_message_counts", "metric_pipe_runs")


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def old_store(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(FIXTURE.read_text())
    conn.close()
    return path


def test_a_store_of_the_previous_release_migrates_with_its_data(tmp_path: Path) -> None:
    path = old_store(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    assert migrations.current_version(conn) == 8
    before = _counts(conn)
    old_events = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    old_messages = conn.execute("SELECT * FROM messages ORDER BY id").fetchall()
    conn.close()
    assert before["events"] == 3 and before["messages"] == 3 and before["outbox"] == 2

    store = SQLiteStore.from_url(f"sqlite:////{path}")
    try:
        conn = sqlite3.connect(path)
        assert migrations.current_version(conn) == migrations.LATEST_VERSION
        assert _counts(conn) == before
        # Every old column keeps its value; the new one is appended.
        new_events = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
        assert [row[:len(old_events[0])] for row in new_events] == old_events
        assert conn.execute("SELECT * FROM messages ORDER BY id").fetchall() == old_messages
        conn.close()

        attributed = store.event(f"{0:032x}")
        assert attributed is not None and attributed.queue_id == "4Xk9Qn1vZtz3J0"
        assert attributed.recipient == "r0@remote.test" and attributed.sent_at == T
        assert store.event(f"{1:032x}").queue_id == "4Xk9Qn1vZtz3J1"  # type: ignore[union-attr]
        unattributed = store.event(f"{9:032x}")
        assert unattributed is not None and unattributed.queue_id is None
        assert store.raw_report(f"{0:032x}") == b"raw report 0"
        # The download renders the new key from SQL, as event_to_json does.
        query = DownloadQuery(domains=("example.com",), start=0, end=2e9)
        [(_, first), _] = store.events_page(query)
        assert event_to_json(first)["queue_id"] == "4Xk9Qn1vZtz3J0"
        [(_, text), _] = store.rendered_page(query, "json")
        assert '"queue_id":"4Xk9Qn1vZtz3J0"' in text
        # The old release's suppressions and outbox still serve.
        assert {s.address for s in store.suppressions(["example.com"], T + 300)} == {
            "r0@remote.test", "r1@remote.test", "manual@remote.test"}
        assert len(store.claim_jobs(T + 400, 10, 30)) == 2
    finally:
        store.close()


def load_pg_dump(url: str, dump: Path) -> None:
    """Restore a ``pg_dump --inserts`` file into the empty database at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # Our own sample, as one simple query of many statements; psql's meta-commands
        # (pg_dump's \restrict lines) are psql's, not SQL.
        sql = "\n".join(line for line in dump.read_text().splitlines() if not line.startswith("\\"))
        conn.execute(sql.encode())


def pg_count(conn: Any, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()[0])


def test_upgraded_postgresql_store_gains_queue_ids(pg_cluster: Cluster) -> None:  # noqa: F811
    """PostgreSQL at the previous release's schema (version 3) migrates its events too.

    tests/samples/store/pg-v3.sql: the schema of PostgreSQL migrations 1-3 as the
    store had them before issue 17's single list, a message and two events."""
    import psycopg

    from bouncetrack.store.postgres import PostgresStore

    url = pg_cluster.create_database()
    load_pg_dump(url, FIXTURE.parent / "pg-v3.sql")
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrations.current_version(conn) == 3  # the old PostgreSQL numbering
    store: Any = PostgresStore.from_url(url)
    try:
        assert store.event(f"{1:032x}").queue_id == "4Xk9QnPG"
        assert store.event(f"{2:032x}").queue_id is None
        assert store.event(f"{1:032x}").reason == "userunknown"
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrations.current_version(conn) == migrations.LATEST_VERSION
        # Old versions 1-3 stand for SQLite's 1-8 (7 has nothing to do on PostgreSQL).
        assert [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == list(
            range(1, migrations.LATEST_VERSION + 1))


# --- a store written by main just before issue 17's single store layer ---------------

BEFORE_17 = "637e85b"


def _check_store_of_main_before_17(store: Any) -> None:
    """What the generator (the old code's store API) wrote reads back, and the store keeps working."""
    first = store.event(f"{0:032x}")
    assert first is not None and first.queue_id == "4Xk9Qn1vZtz3J0" and first.sent_at == T
    assert first.diagnostic == "550 5.1.1 <r0@remote.test>: no such user\ufffdx"  # NUL as stored
    assert store.raw_report(f"{1:032x}") == b"raw report 1"
    assert store.event(f"{9:032x}").flagged is True
    message = store.message_by_token_id(101)
    assert message is not None and [r.address for r in message.recipients] == ["r1@remote.test", "s1@remote.test"]
    assert message.recipients[1].notify == "FAILURE" and message.dsn_ret == "HDRS"
    assert {s.address for s in store.suppressions(["example.com"], T + 300)} == {
        "r0@remote.test", "r1@remote.test", "manual@remote.test"}
    assert store.suppression_seq() == 3
    assert store.outbox_stats(T + 400)["delivered"] == 1 and store.outbox_stats(T + 400)["pending"] == 1
    assert store.dashboard_sent(["example.com"], T - 86400, T + 86400) == (3, 6)
    m = store.metric_counts(T + 400)
    assert dict(m.pipe_guards) == {"events_capped": 2} and dict(m.messages) == {"example.com": 3}
    assert sum(c for *_, c in m.events) == 3
    query = DownloadQuery(domains=("example.com",), start=0, end=2e9)
    assert [json.loads(text)["queue_id"] for _, text in store.rendered_page(query, "json")] == [
        "4Xk9Qn1vZtz3J0", "4Xk9Qn1vZtz3J1"]
    # New writes go through: a report, a duplicate, a claim, a suppression change.
    event = replace(first, event_id=f"{20:032x}", dedupe_key="dk20", received_at=T + 500)
    assert store.store_report([event], b"new", [], "dk20").stored
    assert store.store_report([event], b"new", [], "dk20").event_ids == (event.event_id,)
    assert len(store.claim_jobs(T + 600, 10, 30)) == 1
    assert store.remove_suppressions(["example.com"], ["manual@remote.test"], T + 700) == [
        ("example.com", "manual@remote.test")]
    assert store.suppression_changes(3)[0].removed


def test_a_sqlite_store_of_main_before_issue_17_opens_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "main.db"
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURE.parent / f"main-{BEFORE_17}.sql").read_text())
    assert migrations.current_version(conn) == 10
    before = _counts(conn)
    conn.close()
    store = SQLiteStore.from_url(f"sqlite:////{path}")
    try:
        conn = sqlite3.connect(path)
        assert migrations.current_version(conn) == migrations.LATEST_VERSION
        assert _counts(conn) == before
        conn.close()
        _check_store_of_main_before_17(store)
    finally:
        store.close()


def test_a_postgresql_store_of_main_before_issue_17_is_renumbered_with_its_data(
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    """Its own PostgreSQL versions 1-5 map onto the single list, applied-at times kept."""
    import psycopg

    from bouncetrack.store.postgres import PostgresStore

    url = pg_cluster.create_database()
    load_pg_dump(url, FIXTURE.parent / f"main-{BEFORE_17}-pg.sql")
    with psycopg.connect(url, autocommit=True) as conn:
        old: dict[int, float] = dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())
        assert sorted(old) == [1, 2, 3, 4, 5]
        before = {t: pg_count(conn, t) for t in TABLES}
    for _ in range(2):  # renumbered once; the second open costs one SELECT
        PostgresStore.from_url(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, applied_at, description FROM schema_migrations ORDER BY version").fetchall()
        assert [(v, d) for v, _, d in rows] == [(v, d) for v, d, _ in migrations.MIGRATIONS]
        new_of = {1: (1, 2, 3, 4, 5), 2: (6, 7), 3: (8,), 4: (9,), 5: (10,)}
        # Later versions (11 on) are applied by this open, after the renumbering.
        assert {v: a for v, a, _ in rows if v <= 10} == {n: old[o] for o, ns in new_of.items() for n in ns}
        assert {t: pg_count(conn, t) for t in TABLES} == before
    store = PostgresStore.from_url(url)
    try:
        _check_store_of_main_before_17(store)
    finally:
        store.close()


@pytest.mark.parametrize("version", [1, 5, 8])
def test_every_older_sqlite_schema_reaches_the_latest(tmp_path: Path, version: int) -> None:
    conn = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrations.migrate(conn, tuple(m for m in migrations.MIGRATIONS if m[0] <= version))
    conn.close()
    SQLiteStore.from_url(f"sqlite:////{tmp_path / 'v.db'}").close()
    conn = sqlite3.connect(tmp_path / "v.db")
    assert migrations.current_version(conn) == migrations.LATEST_VERSION
    conn.close()
