"""Retention (issue 6): purge of events, messages and raw reports, on both backends.

Backend-parametrized like tests/test_store_backends.py (its fixtures are reused:
``store`` is a fresh SQLite file or a fresh database on the private PostgreSQL
cluster). Checked: the dry run deletes nothing and counts exactly what the purge
then deletes; only rows past the cutoffs go; an event with a pending delivery
survives with its jobs; messages go only when no remaining event references
them; the metric counters /metrics reads are unchanged; batches of any size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bouncetrack.cli import build_cli
from bouncetrack.core.config import ConfigError
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.ops.retention import Cutoffs, dry_run, purge
from bouncetrack.store import open_store
from bouncetrack.store.base import OutboxJob
from bouncetrack.store.views import PurgeCounts
from tests.test_store_backends import (  # noqa: F401  (fixtures)
    make_event,
    make_message,
    new_url,
    pg_cluster,
    store,
    url,
)

CUT = Cutoffs(raw_before=2000.0, events_before=2000.0, messages_before=2000.0)


def report(store: Any, key: str, received_at: float, states: tuple[str, ...] = ("delivered",),
           message_pk: int | None = None) -> str:
    """One report with one event and one job per entry of ``states`` (pending|delivered|dead)."""
    e = make_event(dedupe_key=key, received_at=received_at, message_pk=message_pk)
    jobs = [OutboxJob(event_id=e.event_id, channel="webhook", target=f"https://hook/{i}",
                      created_at=received_at) for i in range(len(states))]
    assert store.store_report([e], b"raw " + key.encode(), jobs, key).stored
    mine = sorted((j for j in store.jobs(limit=1000) if j.event_id == e.event_id), key=lambda j: j.target)
    for job, state in zip(mine, states):
        if state == "delivered":
            store.job_delivered(job.id, received_at + 1)
        elif state == "dead":
            store.job_failed(job.id, received_at + 1, "gave up", None)
    return e.event_id


def snapshot(store: Any) -> tuple[Any, ...]:
    """Everything the purge may touch, as sets (for 'nothing changed' checks)."""
    events = frozenset(e.event_id for e in store.events_between(0, 1e12))
    jobs = frozenset((j.event_id, j.target, j.state) for j in store.jobs(limit=10_000))
    return events, jobs


def counters(store: Any) -> tuple[Any, ...]:
    """The cumulative counters: as the store keeps them, and as a /metrics scrape shows them."""
    from prometheus_client import generate_latest

    from bouncetrack.metrics.collector import build_registry

    m = store.metric_counts(time.time())
    config = load_config_text("bounce_domain: bounces.example.org\n"
                              "domains: {example.com: {tracking: true}}\n", "m.yaml")
    text = generate_latest(build_registry(lambda: config, lambda: store, process_metrics=False,
                                          tempfail_dir="/nonexistent")).decode()
    scraped = sorted(line for line in text.splitlines()
                     if line.split("{")[0].split(" ")[0].endswith(("_total", "_bucket", "_count")))
    assert any(line.startswith("bouncetrack_events_total") for line in scraped), text
    return (sorted(m.events), sorted(m.messages), sorted(m.deliveries),
            sorted((o, le, c) for o, le, c, _s in m.pipe_runs), scraped)


def test_dry_run_then_purge(store: Any) -> None:
    m_free = store.record_message(make_message(1, created_at=100.0))  # old, no event: goes
    m_old_ev = store.record_message(make_message(2, created_at=100.0))  # its only event goes: goes
    m_new_ev = store.record_message(make_message(3, created_at=100.0))  # a new event keeps it
    m_pending = store.record_message(make_message(4, created_at=100.0))  # a kept old event keeps it
    store.record_message(make_message(5, created_at=5000.0))  # new: stays

    gone = [
        report(store, "delivered", 1000.0, ("delivered",), message_pk=m_old_ev),
        report(store, "dead", 1001.0, ("dead",)),
        report(store, "two-settled", 1002.0, ("delivered", "dead")),
        report(store, "no-jobs", 1003.0, ()),
    ]
    kept_old = [
        report(store, "pending", 1004.0, ("pending",), message_pk=m_pending),
        report(store, "mixed", 1005.0, ("delivered", "pending")),
    ]
    kept_new = [report(store, "new", 5000.0, ("delivered",), message_pk=m_new_ev)]
    store.store_report([make_event(dedupe_key="n2", received_at=1999.9999)], b"r", [], "n2")  # just before
    store.store_report([make_event(dedupe_key="n3", received_at=2000.0)], b"r", [], "n3")  # at: stays

    before, metrics_before = snapshot(store), counters(store)
    expected = PurgeCounts(events=5, outbox_jobs=4, reports=5, messages=2, recipients=6,
                           raw_bodies=7, events_kept_pending=2)
    assert dry_run(store, CUT) == expected
    assert dry_run(store, CUT) == expected  # deleted nothing
    assert snapshot(store) == before and counters(store) == metrics_before

    assert purge(store, CUT, batch=2) == expected
    events, jobs = snapshot(store)
    assert not events & set(gone)
    assert set(kept_old + kept_new) <= events and len(events) == 4  # + n3
    assert {s for eid, _t, s in jobs if eid in kept_old} == {"pending", "delivered"}
    assert sum(1 for _e, _t, s in jobs if s == "pending") == 2  # pending jobs survive
    assert counters(store) == metrics_before  # cumulative counters never go down
    assert store.message_by_token_id(1) is None and store.message_by_token_id(2) is None
    for token_id in (3, 4, 5):
        msg = store.message_by_token_id(token_id)
        assert msg is not None and len(msg.recipients) == 3
    assert store.raw_report(kept_old[0]) is None  # body past raw retention
    assert store.raw_report(kept_new[0]) == b"raw new"
    # A retry of a kept report still deduplicates (its raw_reports row stays).
    assert store.store_report([make_event(dedupe_key="pending")], b"x", [], "pending").stored is False

    assert dry_run(store, CUT) == PurgeCounts(events_kept_pending=2)
    assert purge(store, CUT) == PurgeCounts(events_kept_pending=2)


def test_kinds_can_be_kept_forever(store: Any) -> None:
    m = store.record_message(make_message(1, created_at=100.0))
    report(store, "a", 1000.0, ("delivered",), message_pk=m)
    store.record_message(make_message(2, created_at=100.0))
    keep_events = Cutoffs(raw_before=None, events_before=None, messages_before=2000.0)
    assert dry_run(store, keep_events) == PurgeCounts(messages=1, recipients=3)
    assert purge(store, keep_events) == PurgeCounts(messages=1, recipients=3)
    assert store.message_by_token_id(1) is not None  # still referenced by its event
    nothing = Cutoffs(None, None, None)
    assert dry_run(store, nothing) == PurgeCounts() == purge(store, nothing)


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_batches_walk_past_kept_rows(store: Any, batch: int) -> None:
    pending = [report(store, f"p{i}", 1000.0 + i, ("pending",)) for i in range(4)]
    for i in range(20):
        report(store, f"d{i}", 1000.0 + (i % 5), ("delivered",))  # ties in received_at
    for i in range(7):
        store.record_message(make_message(100 + i, n_rcpts=1, created_at=50.0))
    got = purge(store, CUT, batch=batch)
    assert got == PurgeCounts(events=20, outbox_jobs=20, reports=20, messages=7, recipients=7,
                              raw_bodies=24, events_kept_pending=4)
    assert snapshot(store)[0] == set(pending)


# ------------------------------------------------------------------ config / CLI


def test_retention_config_is_validated_with_lines() -> None:
    base = "bounce_domain: bounces.example.org\n"
    cfg = load_config_text(base, "c.yaml")
    assert (cfg.retention.events_days, cfg.retention.messages_days) == (730, 730)
    cfg = load_config_text(base + "retention: {events_days: null, messages_days: 30, batch_size: 50}\n", "c.yaml")
    assert (cfg.retention.events_days, cfg.retention.messages_days, cfg.retention.batch_size) == (None, 30, 50)
    with pytest.raises(ConfigError) as err:
        load_config_text(base + "retention:\n  events_days: 0\n  messages_days: 2\n  batch: 5\n", "c.yaml")
    text = str(err.value)
    assert "c.yaml:3: retention.events_days: must be at least 1" in text
    assert "c.yaml:4: retention.messages_days: must be at least 7" in text
    assert "c.yaml:5: retention.batch: unknown key 'batch'" in text


def test_purge_command_dry_run_and_delete(tmp_path: Path, url: str) -> None:
    now = time.time()
    s = open_store(url)
    try:
        report(s, "old", now - 800 * 86400, ("delivered",))
        report(s, "old-pending", now - 800 * 86400, ("pending",))
        report(s, "recent", now - 10 * 86400, ("delivered",))
        s.record_message(make_message(1, created_at=now - 800 * 86400))
    finally:
        s.close()
    conf = tmp_path / "c.yaml"
    conf.write_text(f"bounce_domain: bounces.example.org\nstore: {url}\n"
                    f"secret_file: {tmp_path}/verp.key\nretention: {{events_days: 730}}\n")
    runner = CliRunner()
    dry = runner.invoke(build_cli(), ["purge", "--config", str(conf), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert "would delete\tevents\t1" in lines and "would delete\tmessages\t1" in lines
    assert "would delete\traw_bodies\t2" in lines and "kept\tevents_pending_delivery\t1" in lines
    assert sum(line.startswith("cutoff\t") for line in lines) == 3
    again = runner.invoke(build_cli(), ["purge", "--config", str(conf), "--dry-run"])
    assert again.output == dry.output  # nothing was deleted
    real = runner.invoke(build_cli(), ["purge", "--config", str(conf)])
    assert real.exit_code == 0, real.output
    assert real.output.replace("deleted\t", "would delete\t") == dry.output
    s = open_store(url)
    try:
        assert len(list(s.events_between(0, 1e12))) == 2
        assert [j.state for j in s.jobs(state="pending")] == ["pending"]
    finally:
        s.close()


def test_worker_purges_daily_only_when_automatic(tmp_path: Path) -> None:
    from bouncetrack.forward.worker import RETENTION_INTERVAL, Worker

    s = open_store(f"sqlite:///{tmp_path}/w.db")
    now = [1_800_000_000.0]
    try:
        report(s, "old", now[0] - 800 * 86400, ("delivered",))
        base = f"bounce_domain: bounces.example.org\nsecret_file: {tmp_path}/verp.key\n"
        off = load_config_text(base, tmp_path / "off.yaml")
        on = load_config_text(base + "retention: {automatic: true}\n", tmp_path / "on.yaml")
        w_off = Worker(off, s, clock=lambda: now[0])
        assert w_off.maybe_purge_retention() is None  # default: only `bouncetrack purge` deletes
        w_off.close()
        w = Worker(on, s, clock=lambda: now[0])
        try:
            first = w.maybe_purge_retention()
            assert first is not None and first.events == 1 and w.stats.events_purged == 1
            report(s, "old2", now[0] - 800 * 86400, ("delivered",))
            assert w.maybe_purge_retention() is None  # not due yet
            now[0] += RETENTION_INTERVAL
            again = w.maybe_purge_retention()
            assert again is not None and again.events == 1
        finally:
            w.close()
    finally:
        s.close()
