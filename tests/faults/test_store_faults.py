"""Faults of the store: locked past the busy timeout, disk full, PostgreSQL restart (issue 7).

Both real cases first let the milter record the messages (the fake MX greylists the
recipients, 451), then break the store, then let the fake MX reject (550) so that
Postfix generates the bounces while the store is unusable.

Expected outcome:

* **Locked** (another connection holds ``BEGIN EXCLUSIVE`` for longer than the
  pipe's busy timeout; ``pipe.deadline_seconds: 3``): every pipe run gives up and
  exits 75, Postfix logs the bounce ``deferred`` and keeps it; nothing is stored
  while the lock is held. Once the lock is released, the retries store each bounce
  exactly once.
* **Disk full** (the state directory is a small tmpfs, the WAL truncated, then the
  filesystem filled): SQLite answers "database or disk is full", the pipe exits 75,
  Postfix keeps the bounces; after the filler is removed all are stored exactly once.
  Skipped when this machine does not allow ``mount -t tmpfs``.
* **PostgreSQL restarted mid-run** (the store is a database on a private cluster
  of its own, ``tests.pg``): messages queued while it is up (greylisted); then a
  stream of new mail to rejecting recipients from retrying clients while the server
  is stopped (``pg_ctl stop -m fast``, at least 3 s) and started again. While it is
  down the milter answers 4xx (the clients resend), the queued messages bounce and
  every pipe run exits 75 (Postfix keeps the bounces). Afterwards the milter and
  the pipe reconnect by themselves: every message accepted, every bounce stored
  exactly once and attributed to its message.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import harness_unavailable

from .reconcile import Sent, assert_reconciled, stored_count, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

N = 30
OPTIONS: dict[str, Any] = {"with_milter": True, "pipe": "real", "config_extra": {"pipe": {"deadline_seconds": 3}}}


def pipe_deferrals(st: Any) -> list[str]:
    return [line for line in st.postfix.log_text().splitlines()
            if "relay=bouncepipe" in line and "status=deferred" in line]


def queue_then_reject(st: Any, prefix: str) -> tuple[list[Sent], dict[str, str]]:
    """Messages recorded and queued (greylisted by the fake MX); returns the switch."""
    verdict = {"reply": "451 4.7.1 greylisted, try again later"}
    st.fakemx.rule = lambda a: verdict["reply"].replace("{addr}", a) if a.startswith(prefix) else None
    rcpts = [f"{prefix}{i}@remote.test" for i in range(N)]
    deliveries = burst(st, "info@tracked.test", rcpts, threads=4)
    assert all(d.accepted for d in deliveries)
    st.fakemx.wait_for(lambda f: all(f.for_rcpt(r) for r in rcpts), 30)
    return [d.sent for d in deliveries], verdict


def test_store_locked_longer_than_the_busy_timeout(make_stack: Any) -> None:
    st = make_stack(**OPTIONS)
    sent, verdict = queue_then_reject(st, "unknown-lock")
    before = len(pipe_deferrals(st))
    lock = sqlite3.connect(st.db_path, isolation_level=None, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        verdict["reply"] = "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"
        st.postfix.flush()
        st.wait_for(lambda: len(pipe_deferrals(st)) - before >= N, 90)
        assert st.postfix.queue(), "the bounces must still be in Postfix's queue"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert stored_count(st.db_path, sent) == 0
    assert all("bounce" not in line.split("status=deferred", 1)[1].split("Command output:")[0]
               for line in pipe_deferrals(st))
    wait_stored(st, sent, 90)
    result = assert_reconciled(st.db_path, sent)
    print(f"store locked: {len(pipe_deferrals(st)) - before} pipe runs deferred (exit 75); {result.summary()}")


def test_store_disk_full_then_freed() -> None:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.stack import Stack

    work = Path(tempfile.mkdtemp(prefix="bouncetrack-full-", dir="/var/tmp"))
    work.chmod(0o755)
    state = work / "state"
    state.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs", str(state)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        with Stack(workdir=work, **OPTIONS) as st:
            try:
                disk_full_case(st, state)
            except BaseException:
                print(st.logs())  # the stack is not a fixture here: show its logs on failure
                raise
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def disk_full_case(st: Any, state: Path) -> None:
    sent, verdict = queue_then_reject(st, "unknown-full")
    db = sqlite3.connect(st.db_path, timeout=30)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every later write must grow the WAL
    db.close()
    filler = state / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass  # ENOSPC: full
    before = len(pipe_deferrals(st))
    verdict["reply"] = "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"
    st.postfix.flush()
    st.wait_for(lambda: len(pipe_deferrals(st)) - before >= N, 90)
    outputs = "\n".join(pipe_deferrals(st)[before:])
    assert "full" in outputs, outputs[-2000:]
    assert stored_count(st.db_path, sent) == 0
    filler.unlink()
    wait_stored(st, sent, 90)
    result = assert_reconciled(st.db_path, sent)
    print(f"disk full: {len(pipe_deferrals(st)) - before} pipe runs deferred (exit 75); {result.summary()}")


def test_postgresql_restart_mid_run(make_stack: Any) -> None:
    from tests import pg

    reason = pg.unavailable()
    if reason:
        pytest.skip(reason)
    cluster = pg.start_cluster()  # its own cluster: restarting it disturbs no other test
    try:
        url = cluster.create_database()
        st = make_stack(with_milter=True, pipe="real",
                        config_extra={"store": url, "pipe": {"deadline_seconds": 3}})
        try:
            postgresql_restart_case(st, cluster, url)
        finally:
            # The stack is closed after the test by make_stack: make sure the server is up
            # (a failure mid-outage) so that nothing waits on it meanwhile.
            if not _pg_up(url):
                cluster.start_server()
    finally:
        cluster.stop()


def _pg_up(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def postgresql_restart_case(st: Any, cluster: Any, url: str) -> None:
    # Phase 1: messages recorded (PostgreSQL up) and queued, the fake MX greylisting them.
    verdict = {"reply": "451 4.7.1 greylisted, try again later"}
    st.fakemx.rule = lambda a: (verdict["reply"].replace("{addr}", a) if a.startswith("unknown-pgq")
                                else "550 5.1.1 <%s>: Recipient address rejected: User unknown" % a
                                if a.startswith("unknown-pgs") else None)
    queued = [f"unknown-pgq{i}@remote.test" for i in range(N)]
    first = burst(st, "info@tracked.test", queued, threads=4)
    assert all(d.accepted for d in first)
    st.fakemx.wait_for(lambda f: all(f.for_rcpt(r) for r in queued), 30)
    before = len(pipe_deferrals(st))

    # Phase 2: a stream of new mail to rejecting recipients while the server restarts.
    stream_rcpts = [f"unknown-pgs{i}@remote.test" for i in range(N)]
    started = threading.Event()
    stream: list[Any] = []
    sender = threading.Thread(target=lambda: stream.extend(burst(
        st, "info@tracked.test", stream_rcpts, threads=3, deadline_seconds=90, started=started, pace=0.2)))
    sender.start()
    try:
        assert started.wait(30)
        cluster.stop_server("fast")  # terminates every session; the port refuses connections
        down = time.monotonic()
        # The queued messages bounce now: every pipe run finds the store down and exits 75.
        verdict["reply"] = "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"
        st.postfix.flush()
        st.wait_for(lambda: len(pipe_deferrals(st)) - before >= N, 60)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down)))  # at least 3 s of outage
        assert st.postfix.queue(), "the bounces must still be in Postfix's queue"
        cluster.start_server()
    finally:
        sender.join(120)
    outage = time.monotonic() - down
    assert all(d.accepted for d in stream), [d.attempts[-1] for d in stream if not d.accepted]
    # The milter journals its records (issue 20): it accepts mail while the store is
    # down, and its journal writer stores the records once the server is back.
    tempfailed = [d for d in stream if d.tempfails]
    assert "journal writer: store unavailable" in st.milter_log_text()

    # Phase 3: everything recovers (milter and pipe reconnect): each bounce stored once.
    sent = [d.sent for d in first] + [d.sent for d in stream]
    wait_stored(st, sent, 60, db=url)
    result = assert_reconciled(url, sent)
    deferred = len(pipe_deferrals(st)) - before
    print(f"postgresql restart: down {outage:.1f} s, {deferred} pipe runs deferred (exit 75), "
          f"{len(tempfailed)} of {N} streamed messages got a 4xx (journal: expect 0); {result.summary()}")
