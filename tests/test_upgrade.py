"""Upgrade path (issue 15): a store made by the previous release opens and migrates.

``tests/samples/store/c61ff5e.sql`` is a SQLite store written by bouncetrack at
c61ff5e (schema version 8), through that release's own store API (three tracked
messages, two attributed bounces with webhook jobs and automatic suppressions, an
unattributed report, a manual suppression), dumped with ``sqlite3 .dump``. Opening
it with this release applies the later migrations and loses nothing; the events
gain the original message's Postfix queue id.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.events import event_to_json
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


def test_upgraded_postgresql_store_gains_queue_ids(pg_cluster: Cluster) -> None:  # noqa: F811
    """PostgreSQL at the previous release's schema (version 3) migrates its events too."""
    import psycopg

    from bouncetrack.store import postgres_migrations as pgm
    from bouncetrack.store.postgres import PostgresStore

    url = pg_cluster.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        pgm.migrate(conn, tuple(m for m in pgm.MIGRATIONS if m[0] <= 3))
        assert pgm.current_version(conn) == 3
        row = conn.execute(
            "INSERT INTO messages (token_id, token, queue_id, message_id, sender_domain, envelope_sender,"
            " verp_sender, created_at) VALUES (7, 'tok', '4Xk9QnPG', '<m@x>', 'example.com',"
            " 'news@example.com', 'b+tok@bounce.example.com', %s) RETURNING id", (T,)
        ).fetchone()
        assert row is not None
        pk = row[0]
        for i, message_pk in ((1, pk), (2, None)):
            conn.execute(
                "INSERT INTO events (event_id, type, hard, reason, domain, token_status, flagged,"
                " message_pk, received_at, dedupe_key) VALUES (%s, 'bounce', true, 'userunknown',"
                " 'example.com', 'valid', false, %s, %s, %s)",
                (f"{i:032x}", message_pk, T + i, f"dk{i}"),
            )
    store: Any = PostgresStore.from_url(url)
    try:
        assert store.event(f"{1:032x}").queue_id == "4Xk9QnPG"
        assert store.event(f"{2:032x}").queue_id is None
        assert store.event(f"{1:032x}").reason == "userunknown"
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert pgm.current_version(conn) == pgm.LATEST_VERSION


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
