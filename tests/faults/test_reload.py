"""Fault: SIGHUP configuration reloads of the milter during traffic (issue 7).

While four clients send, another thread rewrites the configuration (alternating
between two valid versions that differ in a domain that is not being sent from) and
SIGHUPs the milter every 0.15 s, ~20 times.

Expected outcome: no transaction is tempfailed or lost because of a reload (the
supervisor validates, the libmilter child swaps its configuration between
messages); decisions stay consistent: every message from ``tracked.test`` leaves
with a VERP sender, every message from ``untracked.test`` with its own; each tracked
bounce is stored exactly once and attributed. The milter process is never restarted.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from .reconcile import assert_reconciled, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

STACK_OPTIONS = {"with_milter": True, "pipe": "real"}
N = 40


def test_sighup_storm_during_traffic(stack: Any) -> None:
    original = stack.config_path.read_text()
    variant = original + "\n# reload variant\n"
    variant = variant.replace("domains:\n", "domains:\n  reload-only.test:\n    tracking: true\n", 1)
    assert variant != original
    pid = stack._milter.pid
    stop = threading.Event()
    hups = 0

    def write_config(text: str) -> None:
        # Atomically, as an operator's editor does: a reload still running from the
        # previous SIGHUP (late under load) must never read a half-written file.
        tmp = stack.config_path.with_name(stack.config_path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, stack.config_path.stat().st_mode & 0o7777)
        os.chown(tmp, stack.config_path.stat().st_uid, stack.config_path.stat().st_gid)
        os.replace(tmp, stack.config_path)

    def hupper() -> None:
        nonlocal hups
        while not stop.is_set() and hups < 40:
            write_config(variant if hups % 2 == 0 else original)
            stack.reload_milter()
            hups += 1
            # Fast enough for 10+ HUPs while the bursts run, however fast they are (the
            # bounces' pipe work, which used to slow them down, is now light).
            time.sleep(0.05)

    t = threading.Thread(target=hupper)
    t.start()
    try:
        tracked = burst(stack, "info@tracked.test", [f"unknown-hup{i}@remote.test" for i in range(N)],
                        threads=3, pace=0.05)
        untracked = burst(stack, "info@untracked.test", [f"ok-hup{i}@remote.test" for i in range(N // 4)],
                          threads=2, pace=0.05)
    finally:
        stop.set()
        t.join()
        write_config(original)
        stack.reload_milter()
    assert hups >= 10
    assert stack.milter_running() and stack._milter.pid == pid
    assert all(d.accepted and d.tempfails == 0 for d in tracked + untracked), \
        [d.attempts[-1] for d in tracked + untracked if not d.accepted or d.tempfails]
    for d in tracked:
        txs = stack.fakemx.wait_for(lambda f, r=d.sent.recipient: f.for_rcpt(r), 20)
        assert all(tx.mail_from.startswith("b+") for tx in txs), d.sent.recipient
    for d in untracked:
        txs = stack.fakemx.wait_for(lambda f, r=d.sent.recipient: f.for_rcpt(r), 20)
        assert all(tx.mail_from == "info@untracked.test" for tx in txs), d.sent.recipient
    sent = [d.sent for d in tracked]
    wait_stored(stack, sent, 60)
    result = assert_reconciled(stack.db_path, sent)
    log = stack.milter_log_text()
    # SIGHUPs that arrive while a reload runs coalesce into one (one read of the
    # control pipe, the latest file): under load there are fewer reloads than HUPs.
    assert "reload refused" not in log and log.count("configuration reloaded") >= 1, log[-3000:]
    print(f"SIGHUP storm: {hups} reloads during {len(tracked) + len(untracked)} messages, no tempfail; "
          f"{result.summary()}")
