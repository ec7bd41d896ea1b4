"""The outbox worker with real parts: SQLite store, HTTP receiver on loopback, CLI.

Time is faked where the schedule matters (the worker, the store and the
receiver's signature check share one clock); the concurrency test runs on real
time with two store connections in two threads.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from bouncetrack.core.config import Config, DomainPolicy, OutboxConfig, PipeConfig, WebhookConfig
from bouncetrack.core.config_loader import load_config
from bouncetrack.forward.cli import outbox, worker as worker_cmd
from bouncetrack.forward.jobs import jobs_for
from bouncetrack.forward.worker import Worker, WorkerStats, run_worker
from bouncetrack.harness.webhook_receiver import WebhookReceiver
from bouncetrack.store.base import BounceEvent, OutboxJob
from bouncetrack.store.sqlite import SQLiteStore

SECRET = "whsec_" + base64.b64encode(b"worker-test-key-0123456789abcdef").decode()
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_event(n: int = 0, **kw: object) -> BounceEvent:
    values: dict[str, object] = dict(
        event_id=uuid.uuid4().hex,
        type="bounce",
        hard=True,
        reason="userunknown",
        status="5.1.1",
        reply_code="550",
        diagnostic="smtp; 550 5.1.1 user unknown",
        recipient=f"user{n}@example.net",
        reported_recipient=f"user{n}@example.net",
        action="failed",
        remote_mta="dns; mx.example.net",
        domain="example.com",
        original_sender="news@example.com",
        original_message_id=f"<msg{n}@example.com>",
        token="aebagbafaydqqcikbmgq2dq4",
        token_status="valid",
        flagged=False,
        message_pk=None,
        received_at=T0,
        dedupe_key=uuid.uuid4().hex,
    )
    values.update(kw)
    return BounceEvent(**values)  # type: ignore[arg-type]


def make_config(
    tmp_path: Path, url: str | None, *, forward: str | None = None, smtp_port: int = 25, **outbox_kw: object
) -> Config:
    policy = DomainPolicy(
        name="example.com",
        forward=forward,
        webhook=WebhookConfig(url=url, secret=SECRET, timeout_seconds=2.0) if url else None,
    )
    return Config(
        path=tmp_path / "bt.yaml",
        bounce_domain="bounce.example.com",
        verp_prefix="b",
        secret_file=tmp_path / "verp.key",
        key_grace_period_seconds=0.0,
        store_url=f"sqlite:///{tmp_path}/bt.db",
        milter_socket=tmp_path / "milter.sock",
        pipe=PipeConfig(),
        outbox=OutboxConfig(smtp_port=smtp_port, **outbox_kw),  # type: ignore[arg-type]
        domains={"example.com": policy},
        default=DomainPolicy(name="default"),
    )


def store_events(store: SQLiteStore, config: Config, events: list[BounceEvent], now: float) -> None:
    policy = config.policy_for("example.com")
    store.store_report(events, b"Subject: bounce\n\nraw\n", jobs_for(events, policy, now=now), events[0].dedupe_key)


def run_once(config: Config, store: SQLiteStore, clock: FakeClock) -> WorkerStats:
    return run_worker(
        config, store, once=True, clock=clock, sleep=lambda s: None, rng=random.Random(1),
        handle_signals=False,
    )


def advance_to_next_due(store: SQLiteStore, clock: FakeClock) -> bool:
    """Move the fake clock to the next pending job's due time; False when none is pending."""
    pending = store.jobs(state="pending", limit=1000)
    if not pending:
        return False
    clock.t = max(clock.t, min(j.next_attempt_at for j in pending))
    return True


def drain(config: Config, store: SQLiteStore, clock: FakeClock, max_rounds: int = 200) -> int:
    """Run the worker round after round on fake time until no job is pending."""
    for rounds in range(max_rounds):
        run_once(config, store, clock)
        if not advance_to_next_due(store, clock):
            return rounds + 1
    raise AssertionError("jobs still pending")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, clock=clock) as rx:
        yield rx


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "bt.db"))
    yield s
    s.close()


def only_job(store: SQLiteStore) -> OutboxJob:
    [job] = store.jobs()
    return job


# --- delivery ------------------------------------------------------------------


def test_delivers_a_webhook_event_once(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    event = make_event()
    store_events(store, config, [event], clock())
    stats = run_once(config, store, clock)
    assert stats.delivered == 1
    assert receiver.accepted_ids() == [event.event_id]
    [req] = receiver.requests
    assert req.verified and req.idempotency_key == event.event_id
    assert req.json()["data"]["recipient"] == "user0@example.net"
    job = only_job(store)
    assert (job.state, job.attempts) == ("delivered", 0)
    # Nothing is due any more: running again delivers nothing.
    clock.advance(10_000)
    assert run_once(config, store, clock).delivered == 0
    assert len(receiver.requests) == 1


def test_failing_receiver_then_recovering(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    event = make_event()
    store_events(store, config, [event], clock())
    receiver.fail_next(3, 500)
    waits = []
    for _ in range(3):
        before = clock()
        run_once(config, store, clock)
        job = only_job(store)
        assert job.state == "pending" and job.last_error and "HTTP 500" in job.last_error
        waits.append(job.next_attempt_at - before)
        clock.t = job.next_attempt_at
    run_once(config, store, clock)
    job = only_job(store)
    assert (job.state, job.attempts) == ("delivered", 3)  # three failed attempts counted
    # Backoff with defaults: 15-30 s, 30-60 s, 60-120 s.
    assert 15 <= waits[0] <= 30 and 30 <= waits[1] <= 60 and 60 <= waits[2] <= 120
    attempts = receiver.attempts_for(event.event_id)
    assert [r.status for r in attempts] == [500, 500, 500, 200]
    assert {r.idempotency_key for r in attempts} == {event.event_id}
    assert len({r.timestamp for r in attempts}) == 4  # re-signed on each attempt
    assert receiver.times_accepted(event.event_id) == 1


def test_gone_410_is_dead_at_once(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    store_events(store, config, [make_event()], clock())
    receiver.answer_always(410)
    stats = run_once(config, store, clock)
    assert stats.dead == 1
    job = only_job(store)
    assert (job.state, job.attempts) == ("dead", 1) and "410" in (job.last_error or "")


def test_retry_after_is_honoured_and_bounded(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    store_events(store, config, [make_event()], clock())
    receiver.fail_next(1, 429, retry_after=1800)
    run_once(config, store, clock)
    assert only_job(store).next_attempt_at - clock() == pytest.approx(1800, abs=1)
    clock.t = only_job(store).next_attempt_at
    receiver.fail_next(1, 503, retry_after=10 * 86400)  # a receiver asking for 10 days
    run_once(config, store, clock)
    assert only_job(store).next_attempt_at - clock() == pytest.approx(3600, abs=1)  # capped


def test_receiver_down_for_an_hour_loses_nothing(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    events = [make_event(i) for i in range(5)]
    for e in events:
        store_events(store, config, [e], clock())
    receiver.go_down()
    while clock() < T0 + 3600:
        run_once(config, store, clock)
        assert advance_to_next_due(store, clock)
    assert not receiver.requests and {j.state for j in store.jobs()} == {"pending"}
    receiver.come_up()
    drain(config, store, clock)
    assert sorted(receiver.accepted_ids()) == sorted(e.event_id for e in events)
    assert all(receiver.times_accepted(e.event_id) == 1 for e in events)
    assert {j.state for j in store.jobs()} == {"delivered"}
    assert all(j.attempts >= 7 for j in store.jobs())  # retried all along the hour


def test_random_failures_every_event_exactly_once(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    events = [make_event(i) for i in range(20)]
    for e in events:
        store_events(store, config, [e], clock())
    receiver.random_failures(0.5, statuses=(500, 429, 503, 502), seed=3)
    drain(config, store, clock)
    assert sorted(receiver.accepted_ids()) == sorted(e.event_id for e in events)
    assert not any(r.duplicate for r in receiver.requests)
    assert any(j.attempts > 0 for j in store.jobs())


def test_crash_between_delivery_and_marking_redelivers_same_key(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    event = make_event()
    store_events(store, config, [event], clock())
    crashed = Worker(config, store, clock=clock, lease_seconds=60)
    [job] = store.claim_jobs(clock(), 10, 60)
    assert crashed.attempt(job).outcome == "delivered"  # ... and the process dies here
    crashed.close()
    assert run_once(config, store, clock).delivered == 0  # still leased
    clock.advance(61)
    assert run_once(config, store, clock).delivered == 1
    first, second = receiver.attempts_for(event.event_id)
    assert first.idempotency_key == second.idempotency_key == event.event_id
    assert second.duplicate and first.body == second.body


def test_dead_letter_after_max_attempts_then_cli_replay(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    cfg_file = tmp_path / "bt.yaml"
    cfg_file.write_text(textwrap.dedent(f"""\
        bounce_domain: bounce.example.com
        secret_file: {tmp_path}/verp.key
        store: sqlite:///{tmp_path}/bt.db
        outbox: {{max_attempts: 4, base_delay_seconds: 1, max_delay_seconds: 10}}
        domains:
          example.com:
            webhook: {{url: "{receiver.url}", secret: "{SECRET}", timeout_seconds: 2}}
        """))
    config = load_config(cfg_file)
    event = make_event()
    store_events(store, config, [event], clock())
    receiver.answer_always(503)
    drain(config, store, clock)
    job = only_job(store)
    assert (job.state, job.attempts) == ("dead", 4)
    assert len(receiver.attempts_for(event.event_id)) == 4
    assert clock() - T0 < 60  # tiny base delay: 0.5-1, 1-2, 2-4 s

    runner = CliRunner()
    listing = runner.invoke(outbox, ["list", "--config", str(cfg_file), "--state", "dead"])
    assert listing.exit_code == 0, listing.output
    header, row = listing.output.splitlines()
    assert header.split()[:3] == ["ID", "EVENT", "CHANNEL"]
    assert row.split()[:6] == [str(job.id), event.event_id, "webhook", receiver.url, "dead", "4"]
    assert "HTTP 503" in row

    unknown = runner.invoke(outbox, ["replay", "--config", str(cfg_file), "999"])
    assert unknown.exit_code == 1
    assert runner.invoke(outbox, ["replay", "--config", str(cfg_file)]).exit_code == 2

    replayed = runner.invoke(outbox, ["replay", "--config", str(cfg_file), "--all-dead"])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 job" in replayed.output
    job = only_job(store)
    assert (job.state, job.attempts) == ("pending", 0)

    receiver.answer_always(None)
    clock.t = max(clock.t, time.time())  # replay makes the job due at the real "now"
    run_once(config, store, clock)
    job = only_job(store)
    assert job.state == "delivered"
    assert receiver.accepted_ids() == [event.event_id]
    assert {r.idempotency_key for r in receiver.attempts_for(event.event_id)} == {event.event_id}


def test_cli_worker_once(tmp_path: Path, store: SQLiteStore) -> None:
    with WebhookReceiver(SECRET) as rx:  # real time: the CLI uses the real clock
        cfg_file = tmp_path / "bt.yaml"
        cfg_file.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.example.com
            secret_file: {tmp_path}/verp.key
            store: sqlite:///{tmp_path}/bt.db
            domains:
              example.com:
                webhook: {{url: "{rx.url}", secret: "{SECRET}"}}
            """))
        event = make_event()
        store_events(store, load_config(cfg_file), [event], time.time())
        result = CliRunner().invoke(worker_cmd, ["--config", str(cfg_file), "--once"])
        assert result.exit_code == 0, result.output
        assert "delivered 1" in result.output
        assert rx.accepted_ids() == [event.event_id]
        bad = tmp_path / "bad.yaml"
        bad.write_text("bounce_domain: [not, a, domain]\n")
        invalid = CliRunner().invoke(worker_cmd, ["--config", str(bad), "--once"])
        assert invalid.exit_code == 1 and "bounce_domain" in invalid.output


def test_configuration_is_read_at_delivery_time(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    old = make_config(tmp_path, "http://127.0.0.1:9/old")
    a, b = make_event(1), make_event(2)
    store_events(store, old, [a], clock())
    store_events(store, old, [b], clock())
    # The URL was fixed after the jobs were queued: they go to the new one.
    assert run_once(make_config(tmp_path, receiver.url), store, clock).delivered == 2
    # A domain whose webhook was removed: its queued jobs go dead, visibly.
    c = make_event(3)
    store_events(store, old, [c], clock())
    stats = run_once(make_config(tmp_path, None), store, clock)
    assert stats.dead == 1
    [dead] = store.jobs(state="dead")
    assert dead.event_id == c.event_id and "no webhook" in (dead.last_error or "")


def test_unattributed_events_are_never_queued(tmp_path: Path, store: SQLiteStore, receiver: WebhookReceiver, clock: FakeClock) -> None:
    config = make_config(tmp_path, receiver.url)
    store_events(store, config, [make_event(token_status="forged")], clock())
    assert store.jobs() == []
    assert run_once(config, store, clock).delivered == 0 and not receiver.requests


# --- concurrency, stop ---------------------------------------------------------


def test_two_workers_never_deliver_the_same_job_twice(tmp_path: Path) -> None:
    n = 40
    with WebhookReceiver(SECRET) as rx:
        config = make_config(tmp_path, rx.url, base_delay_seconds=0.05, max_delay_seconds=0.2)
        setup = SQLiteStore(str(tmp_path / "bt.db"))
        events = [make_event(i) for i in range(n)]
        for e in events:
            store_events(setup, config, [e], time.time())
        rx.slow(0.01)  # every request takes a while: the workers overlap
        rx.fail_next(8, 503)
        stop = threading.Event()
        stores = [SQLiteStore(str(tmp_path / "bt.db")) for _ in range(2)]
        results: list[WorkerStats] = []

        def work(s: SQLiteStore) -> None:
            results.append(
                run_worker(config, s, stop_event=stop, poll_interval=0.02, batch_size=3)
            )

        threads = [threading.Thread(target=work, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        try:
            assert rx.wait_for(n, timeout=60)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert sorted(rx.accepted_ids()) == sorted(e.event_id for e in events)
        assert not any(r.duplicate for r in rx.requests)
        assert len(rx.requests) == n + 8
        assert all(r.delivered > 0 for r in results), results  # both did work
        assert sum(r.delivered for r in results) == n
        assert {j.state for j in setup.jobs(limit=1000)} == {"delivered"}
        for s in [setup, *stores]:
            s.close()


def test_sigterm_stops_the_worker_gracefully(tmp_path: Path, store: SQLiteStore) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9/unused")
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    stats = run_worker(config, store, poll_interval=0.05)  # main thread: handles signals
    timer.join()
    assert time.monotonic() - started < 5
    assert stats.delivered == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_jobs_the_lease_no_longer_covers_are_left_for_a_later_claim(tmp_path: Path, store: SQLiteStore) -> None:
    class SteppingClock(FakeClock):
        """Every reading is 100 s later: deliveries that crawl."""

        def __call__(self) -> float:
            self.t += 100
            return self.t

    clock = SteppingClock()
    with WebhookReceiver(SECRET, tolerance=1e12) as rx:
        config = make_config(tmp_path, rx.url)
        for i in range(3):
            store_events(store, config, [make_event(i)], T0)
        w = Worker(config, store, clock=clock, lease_seconds=300)
        assert w.job_budget == 125  # 6 SMTP operations x 20 s + 5
        assert w.run_batch(threading.Event()) == 3
        assert (w.stats.delivered, w.stats.skipped) == (1, 2)
        # The two skipped jobs stay leased (no other worker takes them) until the lease ends.
        assert len(store.jobs(state="pending")) == 2
        # Claimed at T0+100 with a 300 s lease (the stepping clock read T0+100 first).
        assert store.claim_jobs(T0 + 399, 10, 300) == []
        w.stats = WorkerStats()
        clock.advance(300)
        w.run_batch(threading.Event())
        assert w.stats.delivered == 1
        w.close()


def test_two_worker_processes_then_sigterm(tmp_path: Path) -> None:
    """Two `bouncetrack worker` processes on one SQLite file: every event once; SIGTERM exits 0."""
    n = 30
    with WebhookReceiver(SECRET) as rx:
        cfg_file = tmp_path / "bt.yaml"
        cfg_file.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.example.com
            secret_file: {tmp_path}/verp.key
            store: sqlite:///{tmp_path}/bt.db
            log_level: INFO
            outbox: {{base_delay_seconds: 0.05, max_delay_seconds: 0.2}}
            domains:
              example.com:
                webhook: {{url: "{rx.url}", secret: "{SECRET}"}}
            """))
        config = load_config(cfg_file)
        setup = SQLiteStore(str(tmp_path / "bt.db"))
        events = [make_event(i) for i in range(n)]
        for e in events:
            store_events(setup, config, [e], time.time())
        rx.slow(0.05)
        rx.fail_next(6, 503)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bouncetrack", "worker", "--config", str(cfg_file)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(2)
        ]
        try:
            assert rx.wait_for(n, timeout=60)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            outputs = [p.communicate(timeout=20) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert sorted(rx.accepted_ids()) == sorted(e.event_id for e in events)
        assert not any(r.duplicate for r in rx.requests)
        assert len(rx.requests) == n + 6
        delivered_per_process = [err.count(" delivered") for _, err in outputs]
        assert sum(delivered_per_process) == n and all(delivered_per_process), delivered_per_process
        assert {j.state for j in setup.jobs(limit=1000)} == {"delivered"}
        setup.close()


def test_idle_worker_drops_raw_reports_past_retention(tmp_path: Path, store: SQLiteStore, clock: FakeClock) -> None:
    config = make_config(tmp_path, None)  # no channels: only the housekeeping runs
    old, new = make_event(1, received_at=T0 - 100 * 86400), make_event(2, received_at=T0)
    store.store_report([old], b"old raw", [], old.dedupe_key)
    store.store_report([new], b"new raw", [], new.dedupe_key)
    # received_at of the raw report is the store's own clock: backdate the old one.
    store._conn.execute("UPDATE raw_reports SET received_at = ? WHERE dedupe_key = ?", (T0 - 100 * 86400, old.dedupe_key))
    stats = run_once(config, store, clock)
    assert stats.raw_purged == 1  # default retention: 90 days
    assert store.raw_report(old.event_id) in (None, b"")
    assert store.raw_report(new.event_id) == b"new raw"
    assert store.event(old.event_id) is not None  # the event itself stays


def test_idle_worker_rolls_up_completed_days_for_the_dashboard(tmp_path: Path, store: SQLiteStore, clock: FakeClock) -> None:
    from bouncetrack.forward.worker import ROLL_UP_GRACE
    from bouncetrack.store.base import MessageRecord, RecipientRecord

    config = make_config(tmp_path, None)  # no channels: only the housekeeping runs
    today = T0 // 86400 * 86400
    for i, created in enumerate((today - 2 * 86400 + 5, today - 86400 + 5, today + 5)):
        store.record_message(MessageRecord(
            token_id=900 + i, token=f"t{i}", queue_id=None, message_id=None, sender_domain="tracked.test",
            envelope_sender="a@tracked.test", verp_sender=f"b+t{i}@bounce.test", dsn_ret=None, dsn_envid=None,
            recipients=(RecipientRecord("r@remote.test", None, None),), created_at=created,
        ))
    clock.t = today + ROLL_UP_GRACE + 1  # yesterday ended more than the grace ago
    run_once(config, store, clock)
    rows = store._conn.execute("SELECT day, messages FROM message_days ORDER BY day").fetchall()
    assert [tuple(r) for r in rows] == [(today - 2 * 86400, 1), (today - 86400, 1)]  # not today
    assert store.dashboard_sent(["tracked.test"], today - 2 * 86400, today + 86400) == (3, 3)
