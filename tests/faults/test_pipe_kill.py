"""Fault: ``kill -9`` of pipe processes at random points (issue 7).

The real pipe runs under ``tests/faults/killpipe.py`` (``Stack(pipe_wrapper=...)``),
which SIGKILLs a random subset of runs after a random delay: before the report is
read, during classification, inside the store transaction, or after the commit but
before Postfix sees the exit status.

Expected outcome: Postfix treats a signal death as a temporary failure and retries
the same queue file; a run killed before its commit left nothing (SQLite rolls the
transaction back), a run killed after it is recognised on retry by the report's
dedupe key (recipient + identical bytes) and not stored twice. At the end every
bounce is stored exactly once and attributed to its message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import harness_unavailable

from .reconcile import assert_reconciled, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

N = 40
KILL_RATE = 0.4
MAX_DELAY = 1.0  # seconds; a pipe run takes ~0.1-0.5 s here, so kills land on both sides of the commit


@pytest.fixture(scope="module")
def kstack() -> Iterator[Any]:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.stack import Stack

    st = Stack(with_milter=True, pipe="real", pipe_wrapper=Path(__file__).with_name("killpipe.py"))
    st.pipe_wrapper_args = [str(KILL_RATE), str(MAX_DELAY), str(st.spool_dir / "kills.log")]
    with st:
        yield st


def test_pipe_killed_at_random_points_each_bounce_stored_once(kstack: Any) -> None:
    st = kstack
    rcpts = [f"unknown-pk{i}@remote.test" for i in range(N)]
    deliveries = burst(st, "info@tracked.test", rcpts, threads=4)
    assert all(d.accepted for d in deliveries)
    sent = [d.sent for d in deliveries]
    wait_stored(st, sent, 120)
    kills = (st.spool_dir / "kills.log").read_text().splitlines() if (st.spool_dir / "kills.log").exists() else []
    running = [k for k in kills if k.startswith("killed-running")]
    after = [k for k in kills if k.startswith("after-exit-0")]
    deferred = [line for line in st.postfix.log_text().splitlines()
                if "relay=bouncepipe" in line and "status=deferred" in line]
    assert running, "no pipe run was killed while running"
    assert len(deferred) >= len(kills) > 0, "every kill must be a deferral (signal death = retry)"
    result = assert_reconciled(st.db_path, sent)
    dedupe_hits = sum(r["count"] for r in _rows(st.db_path, "SELECT count FROM metric_pipe_runs WHERE outcome != 'stored'"))
    print(f"pipe kill: {len(kills)} kills ({len(running)} while running, {len(after)} after the commit), "
          f"{len(deferred)} deferrals, {dedupe_hits} retries recognised as stored; {result.summary()}")
    if after:
        assert dedupe_hits >= 1, "a run killed after its commit must be recognised as stored on retry"


def _rows(db_path: Path, sql: str) -> list[Any]:
    import sqlite3

    db = sqlite3.connect(db_path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()
