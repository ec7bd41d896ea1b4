"""Fault: ``kill -9`` of the milter during a burst (issue 7).

Expected outcome: Postfix's ``milter_default_action = tempfail`` answers 4xx while the
milter is gone (also to transactions it was in the middle of); the clients, retrying
like real MTAs, get their messages accepted once the milter is back
(``start_milter``). Every message is tracked (none slips through untracked while the
milter was down), and each rejecting recipient yields exactly one stored bounce,
attributed to its message. A message the killed milter had recorded but Postfix then
refused leaves an orphan ``messages`` row without events: harmless, by design.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from bouncetrack.milter.runner import WRITER_NICE

from .reconcile import assert_reconciled, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

STACK_OPTIONS = {"with_milter": True, "pipe": "real"}
N = 48


def test_milter_killed_twice_during_a_burst_loses_and_doubles_nothing(stack: Any) -> None:
    rcpts = [f"unknown-mk{i}@remote.test" for i in range(N)]
    first = threading.Event()
    kills: list[float] = []

    def killer() -> None:
        first.wait(30)
        for _ in range(2):
            time.sleep(0.2)
            stack.kill_milter()  # SIGKILL to the supervisor and its libmilter child
            kills.append(time.monotonic())
            time.sleep(1.0)
            stack.start_milter()

    t = threading.Thread(target=killer)
    t.start()
    deliveries = burst(stack, "info@tracked.test", rcpts, threads=4, deadline_seconds=90, started=first,
                       pace=0.15)
    t.join()
    assert len(kills) == 2
    assert all(d.accepted for d in deliveries), [d.attempts[-1] for d in deliveries if not d.accepted]
    tempfailed = [d for d in deliveries if d.tempfails]
    assert tempfailed, "the kills should have tempfailed some transactions"
    # Never accepted untracked: every transaction the fake MX saw had the VERP sender.
    senders = {tx.mail_from for r in rcpts for tx in stack.fakemx.for_rcpt(r)}
    assert senders and all(s.startswith("b+") and s.endswith("@bounce.test") for s in senders), senders
    sent = [d.sent for d in deliveries]
    wait_stored(stack, sent, 60)
    result = assert_reconciled(stack.db_path, sent)
    print(f"milter kill: {len(tempfailed)} of {N} messages got a 4xx and were retried; {result.summary()}")


def _started_pid(stack: Any, what: str) -> int:
    """The pid of the last ``milter child`` / ``journal writer`` the supervisor started."""
    pids = [int(line.rsplit(" ", 2)[1]) for line in stack.milter_log_text().splitlines()
            if f" {what} " in line and line.endswith(" started")]
    assert pids, f"no '{what} N started' line in the milter's log"
    return pids[-1]


def _kill9(stack: Any, what: str, timeout: float = 15.0) -> int:
    """SIGKILL the current ``what``; wait until the supervisor has started the next one."""
    pid = _started_pid(stack, what)
    os.kill(pid, signal.SIGKILL)
    stack.wait_for(lambda: _started_pid(stack, what) != pid, timeout)
    return pid


def test_milter_child_and_journal_writer_killed_under_load_lose_nothing(stack: Any) -> None:
    """Issue 20: kill -9 of the libmilter child while sessions are in flight (each of the
    4 clients in the middle of a transaction), and of the journal writer while records
    wait in the journal; the supervisor restarts each. Every message Postfix accepted
    is in the store and has its bounce attributed: lost 0."""
    rcpts = [f"unknown-jk{i}@remote.test" for i in range(N + 16)]
    first = threading.Event()
    killed: list[tuple[str, int]] = []

    def killer() -> None:
        first.wait(30)
        for what in ("milter child", "journal writer", "milter child", "journal writer"):
            time.sleep(0.4)
            killed.append((what, _kill9(stack, what)))

    t = threading.Thread(target=killer)
    t.start()
    deliveries = burst(stack, "info@tracked.test", rcpts, threads=4, deadline_seconds=120, started=first,
                       pace=0.05)
    t.join()
    assert [w for w, _ in killed] == ["milter child", "journal writer"] * 2
    assert all(d.accepted for d in deliveries), [d.attempts[-1] for d in deliveries if not d.accepted]
    assert any(d.tempfails for d in deliveries), "the child's kills should have tempfailed some transactions"
    senders = {tx.mail_from for r in rcpts for tx in stack.fakemx.for_rcpt(r)}
    assert senders and all(s.startswith("b+") and s.endswith("@bounce.test") for s in senders), senders
    sent = [d.sent for d in deliveries]
    wait_stored(stack, sent, 90)
    result = assert_reconciled(stack.db_path, sent)
    # The restarted writer runs below the milter child (runner.WRITER_NICE): mail acceptance
    # wins the cores under load.
    child, writer = (os.getpriority(os.PRIO_PROCESS, _started_pid(stack, w)) for w in ("milter child", "journal writer"))
    assert writer == min(19, child + WRITER_NICE), (child, writer)
    print(f"milter child + journal writer kills {killed}: {result.summary()}")
