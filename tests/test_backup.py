"""Backup and restore of the store (issue 15).

SQLite: ``bouncetrack backup`` while writers write gives consistent, checked copies
(every transaction whole: each report's events, jobs and raw row together, every
event's message present); a copy restored in place of the store serves as the store.
PostgreSQL: ``pg_dump``/``pg_restore`` as README says, on the private cluster.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.ops.backup import BackupError, backup_sqlite
from bouncetrack.store.base import OutboxJob
from bouncetrack.store.sqlite import SQLiteStore
from tests.configkit import write_config
from tests.pg import Cluster, pg_cluster as pg_cluster  # noqa: F401  (fixture)
from tests.test_store_backends import make_event, make_message

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bouncetrack", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _write_reports(store: Any, stop: threading.Event, written: list[int], start: int = 0) -> None:
    """One message and one report (two events, two jobs) per transaction pair, until stopped."""
    i = start
    while not stop.is_set():
        pk = store.record_message(make_message(10_000 + i, n_rcpts=2))
        events = [make_event(dedupe_key=f"k{i}", message_pk=pk, received_at=1000.0 + i) for _ in range(2)]
        jobs = [OutboxJob(event_id=e.event_id, channel="webhook", target="https://hook/x") for e in events]
        store.store_report(events, b"raw report %d" % i, jobs, f"k{i}")
        written.append(i)
        i += 1


def test_online_backups_while_writing_are_consistent_and_restore(tmp_path: Path) -> None:
    config = write_config(tmp_path, "domains:\n  example.com:\n    tracking: true\n")
    store = SQLiteStore.from_url(config.store_url)
    stop, written = threading.Event(), list[int]()
    writer = threading.Thread(target=_write_reports, args=(store, stop, written))
    writer.start()
    copies = []
    try:
        while len(written) < 50:
            stop.wait(0.05)
        for n in range(3):
            dest = tmp_path / f"backup-{n}.db"
            proc = _cli("backup", "--config", str(config.path), str(dest))
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith(f"backed up to {dest}") and "schema version" in proc.stdout
            copies.append(dest)
    finally:
        stop.set()
        writer.join()
        store.close()
    assert len(written) > 50
    for dest in copies:
        assert dest.stat().st_mode & 0o777 == 0o600
        conn = sqlite3.connect(dest)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        reports = conn.execute("SELECT count(*) FROM raw_reports").fetchone()[0]
        # Whole transactions only: two events and two jobs per report, a message per report.
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2 * reports
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2 * reports
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] in (reports, reports + 1)
        conn.close()
        assert not list(tmp_path.glob(".backup-*partial*"))

    # Restore: the copy in the store's place (the processes stopped), stale -wal/-shm removed.
    live = Path(config.store_url.removeprefix("sqlite://"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    os.replace(copies[-1], live)
    restored = SQLiteStore.from_url(config.store_url)
    try:
        conn = sqlite3.connect(live)
        n = conn.execute("SELECT count(*) FROM raw_reports").fetchone()[0]
        some = conn.execute("SELECT event_id FROM events ORDER BY id DESC LIMIT 1").fetchone()[0]
        conn.close()
        assert restored.event(some) is not None
        assert restored.raw_report(some) is not None
        assert len(restored.claim_jobs(2e9, 10_000, 60)) == 2 * n
        restored.store_report([make_event(dedupe_key="after-restore")], b"raw", [], "after-restore")
    finally:
        restored.close()


def test_backup_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path, "domains:\n  example.com:\n    tracking: true\n")
    SQLiteStore.from_url(config.store_url).close()
    source = config.store_url.removeprefix("sqlite://")
    taken = tmp_path / "taken.db"
    taken.write_text("mine")
    with pytest.raises(BackupError, match="exists"):
        backup_sqlite(source, taken)
    assert taken.read_text() == "mine"
    with pytest.raises(BackupError):
        backup_sqlite(source, tmp_path / "no-such-dir" / "b.db")
    assert not (tmp_path / "no-such-dir").exists()
    with pytest.raises(BackupError, match="no SQLite store"):
        backup_sqlite(str(tmp_path / "missing.db"), tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists()


def test_backup_of_a_postgresql_store_points_to_pg_dump(tmp_path: Path) -> None:
    path = tmp_path / "pg.yaml"
    path.write_text("bounce_domain: bounce.test\nstore: postgresql://bt:s3cret-pw@127.0.0.1:1/bt\n"
                    f"secret_file: {tmp_path}/verp.key\nmilter_socket: {tmp_path}/m.sock\n")
    proc = _cli("backup", "--config", str(path), str(tmp_path / "b.db"))
    assert proc.returncode == 1
    assert "pg_dump" in proc.stderr and "s3cret-pw" not in proc.stderr and "bt:***@" in proc.stderr


def test_postgresql_pg_dump_and_pg_restore_round_trip(pg_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """README's commands: ``pg_dump -Fc`` of a live store, ``pg_restore`` into an empty database."""
    from bouncetrack.store.postgres import PostgresStore

    url = pg_cluster.create_database()
    store = PostgresStore.from_url(url)
    pk = store.record_message(make_message(77))
    events = [make_event(dedupe_key="pg", message_pk=pk)]
    store.store_report(events, b"raw pg", [OutboxJob(event_id=events[0].event_id, channel="webhook",
                                                     target="https://hook/x")], "pg")
    store.close()
    dump = tmp_path / "bt.dump"

    def run(tool: str, *args: str) -> None:
        proc = subprocess.run([os.path.join(pg_cluster.bindir, tool), *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr

    run("pg_dump", "-Fc", "-f", str(dump), "-d", url)
    target = pg_cluster.create_database("restored")
    run("pg_restore", "--no-owner", "-d", target, str(dump))
    restored = PostgresStore.from_url(target)
    try:
        event = restored.event(events[0].event_id)
        assert event is not None and event.message_pk == pk
        assert restored.raw_report(events[0].event_id) == b"raw pg"
        assert len(restored.claim_jobs(2e9, 10, 60)) == 1
        # The restored store goes on: a new report gets the next ids.
        assert restored.store_report([make_event(dedupe_key=uuid.uuid4().hex)], b"x", [],
                                     uuid.uuid4().hex).stored
    finally:
        restored.close()
