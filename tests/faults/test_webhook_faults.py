"""Faults of the webhook receiver, and clock changes under the worker (issue 7).

Bounces come from the real Postfix and the real pipe; the real worker
(``bouncetrack worker``, a subprocess running the staged package as ``bouncetrack``)
delivers them with a short backoff (``outbox``: base 0.2 s, cap 1 s, 12 attempts).

Receiver misbehaviour and expected outcome (:func:`test_receiver_down_slow_flaky_and_dead`):

* **down** for ~2 s (connections refused), then **slow** (the first answers take
  1.5 s, past the 0.5 s client timeout, and are then *processed*: "200 after a long
  delay"), then **500/429/503 at random** (35 %): every event is accepted at least once
  (at-least-once), duplicates only as retries of the same ``webhook-id`` /
  ``Idempotency-Key`` with a byte-identical body; no job of that domain goes dead.
* A second domain's receiver answers 500 to everything: each of its jobs is tried
  exactly ``max_attempts`` times and only then is ``dead`` (dead-letter only after the
  limit), the gaps between attempts respect the backoff's lower bound
  (``ceiling(n)/2``, equal jitter).
* The worker's RSS, sampled throughout, does not grow beyond a small margin (a short
  run: a leak per request would show; the soak measures long runs).

Clock changes (:func:`test_clock_jumps_under_the_worker`): the system clock cannot be
changed safely here, so the worker runs in-process (``run_worker(clock=...)``) with a
clock that jumps; the events and jobs still come from the real pipe. Covered:

* clock **backwards** by an hour after a failure: the retry is not due (it waits for
  its wall-clock time, i.e. up to the jump longer): nothing is delivered twice,
  nothing dies, nothing is lost; when the clock reaches the due time it is delivered.
* clock **forwards** by a day: every pending job is due at once and delivered once;
  attempts are counted per try, not per elapsed time, so nothing goes dead because
  time jumped. (A receiver verifying signatures rejects timestamps more than 5 min
  off its own clock; the receiver's window is widened for this step.)

Not covered (known limitation, documented in tests/faults/README.md): a retry
scheduled while the clock was ahead keeps its far-future due time after the clock is
corrected; it is delayed by the size of the jump (not lost; replayable).
"""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.forward.backoff import ceiling
from bouncetrack.harness.webhook_receiver import WebhookReceiver
from tests.conftest import harness_unavailable

from .reconcile import Sent, assert_reconciled, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

SECRET = "whsec_" + base64.b64encode(b"fault-suite-webhook-key-0123456").decode()
OUTBOX = {"max_attempts": 12, "base_delay_seconds": 0.2, "max_delay_seconds": 1.0}
N = 30
N_DEAD = 5


class Env:
    def __init__(self, st: Any, rx: WebhookReceiver, dead_rx: WebhookReceiver) -> None:
        self.st, self.rx, self.dead_rx = st, rx, dead_rx


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.stack import Stack

    with WebhookReceiver(SECRET) as rx, WebhookReceiver(SECRET) as dead_rx:
        hook = {"secret": SECRET, "timeout_seconds": 0.5}
        domains = {
            "tracked.test": {"tracking": True, "webhook": {"url": rx.url, **hook}},
            "dead.test": {"tracking": True, "webhook": {"url": dead_rx.url, **hook}},
        }
        with Stack(with_milter=True, pipe="real", domains=domains, config_extra={"outbox": OUTBOX}) as st:
            yield Env(st, rx, dead_rx)


def outbox(db_path: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(db_path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT o.*, e.domain FROM outbox o JOIN events e USING (event_id) ORDER BY o.id").fetchall()
    finally:
        db.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_receiver_down_slow_flaky_and_dead(env: Env) -> None:
    st, rx, dead_rx = env.st, env.rx, env.dead_rx
    dead_rx.answer_always(500)
    rx.go_down()
    sent = [d.sent for d in burst(st, "info@tracked.test", [f"unknown-wh{i}@remote.test" for i in range(N)])]
    dead_sent = [Sent(d.sent.recipient, d.sent.message_id, forward=False)
                 for d in burst(st, "info@dead.test", [f"unknown-wd{i}@remote.test" for i in range(N_DEAD)])]
    wait_stored(st, sent + dead_sent, 60)
    log = open(st.log_dir / "worker.log", "ab")
    worker = subprocess.Popen(
        [st.python, str(st.lib / "bt.py"), "worker", "--config", str(st.config_path)],
        user=st.user, group=st.user, extra_groups=[], cwd=str(st.workdir), stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    log.close()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            try:
                samples.append((time.monotonic(), rss_kb(worker.pid)))
            except OSError:
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(2.0)  # the receiver is down: connection refused, retried with backoff
        rx.slow(1.5, n=4)  # past the 0.5 s timeout; processed after the sleep ("200 after a long delay")
        rx.random_failures(0.35, (500, 429, 503), seed=7)
        rx.come_up()
        assert rx.wait_for(N, 60), f"accepted {len(rx.accepted_ids())} of {N}"
        st.wait_for(lambda: all(j["state"] == "dead" for j in outbox(st.db_path) if j["domain"] == "dead.test")
                    and len([j for j in outbox(st.db_path) if j["domain"] == "dead.test"]) == N_DEAD, 60,
                    flush_every=None)
    finally:
        stop.set()
        sampler.join()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        rx.reset_script()
    assert worker.returncode == 0, (st.log_dir / "worker.log").read_text()[-3000:]
    result = assert_reconciled(st.db_path, sent + dead_sent, rx)
    jobs = outbox(st.db_path)
    tracked_jobs = [j for j in jobs if j["domain"] == "tracked.test"]
    assert len(tracked_jobs) == N and all(j["state"] == "delivered" for j in tracked_jobs)
    # Dead-letter only after the limit, with the backoff between attempts.
    max_attempts = OUTBOX["max_attempts"]
    for j in (j for j in jobs if j["domain"] == "dead.test"):
        assert (j["state"], j["attempts"]) == ("dead", max_attempts)
        times = sorted(r.received_at for r in dead_rx.attempts_for(j["event_id"]))
        assert len(times) == max_attempts
        for n, (a, b) in enumerate(zip(times, times[1:]), start=1):
            low = ceiling(n, OUTBOX["base_delay_seconds"], OUTBOX["max_delay_seconds"]) / 2
            assert b - a >= low - 0.02, f"attempt {n + 1} came {b - a:.3f}s after attempt {n} (< {low}s)"
    # Memory: no growth beyond a small margin after warm-up.
    assert len(samples) >= 8, samples
    warm = max(rss for _, rss in samples[: len(samples) // 3])
    late = max(rss for _, rss in samples[-(len(samples) // 3):])
    assert late - warm < 8 * 1024, f"worker RSS grew from {warm} kB to {late} kB"
    refused_then_ok = sum(1 for r in rx.requests if r.status != 200)
    print(f"webhook faults: {len(rx.requests)} requests to the flaky receiver ({refused_then_ok} failed), "
          f"{result.webhook_duplicates} duplicate deliveries (same key), {N_DEAD} jobs dead after "
          f"{max_attempts} attempts each, worker RSS {warm} -> {late} kB; {result.summary()}")


class SkewedClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_clock_jumps_under_the_worker(env: Env) -> None:
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.forward.worker import run_worker
    from bouncetrack.store import open_store

    st, rx = env.st, env.rx
    earlier = set(rx.accepted_ids())
    n = 10
    sent = [d.sent for d in burst(st, "info@tracked.test", [f"unknown-clk{i}@remote.test" for i in range(n)])]
    wait_stored(st, sent, 60)
    config = load_config(st.config_path)
    store = open_store(config.store_url)
    clock = SkewedClock()
    mine = {e_id for e_id in (j["event_id"] for j in outbox(st.db_path))
            if e_id not in set(rx.accepted_ids()) and e_id not in {r.webhook_id for r in env.dead_rx.requests}}
    assert len(mine) == n

    def once() -> Any:
        return run_worker(config, store, once=True, clock=clock, handle_signals=False)

    def state() -> dict[str, tuple[str, int]]:
        return {j["event_id"]: (j["state"], j["attempts"]) for j in outbox(st.db_path) if j["event_id"] in mine}

    try:
        rx.fail_next(n, 500)
        stats = once()  # every job fails once: retry due in 0.1-0.2 s (worker clock)
        assert stats.retried == n and set(state().values()) == {("pending", 1)}
        clock.offset = -3600.0  # the clock jumps back an hour
        time.sleep(0.5)
        stats = once()
        assert (stats.delivered, stats.retried, stats.dead) == (0, 0, 0)  # not due: waits for its wall time
        assert set(state().values()) == {("pending", 1)}
        clock.offset = 0.0  # time catches up with the due time
        stats = once()
        assert stats.delivered == n and set(state().values()) == {("delivered", 1)}
        # Forward jump: new failures, then a day later everything due is delivered once.
        more = [d.sent for d in burst(st, "info@tracked.test", [f"unknown-clkf{i}@remote.test" for i in range(n)])]
        wait_stored(st, more, 60)
        known = set(state())
        mine |= {j["event_id"] for j in outbox(st.db_path) if j["event_id"] not in set(rx.accepted_ids())
                 and j["domain"] == "tracked.test"}
        rx.fail_next(n, 503)
        assert once().retried == n
        clock.offset = 86400.0
        rx.tolerance = 2 * 86400  # the worker signs with its own (jumped) clock
        stats = once()
        assert stats.delivered == n and stats.dead == 0
        assert all(v == ("delivered", 1) for k, v in state().items() if k not in known)
    finally:
        rx.tolerance = 300
        rx.reset_script()
        store.close()
    assert_reconciled(st.db_path, sent + more, rx, other_cases=earlier)
    print(f"clock jumps: {2 * n} events, backwards jump held retries until due, forward jump delivered "
          f"all at once, none dead")
