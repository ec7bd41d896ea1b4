"""The store contract, run against both backends (SQLite file, private PostgreSQL cluster).

Everything here goes through ``open_store(url)`` and the store's own methods,
so one test body checks both. Backend-specific checks (SQLite's WAL, pragmas,
file errors) stay in test_store_sqlite.py; PostgreSQL-specific failure modes
(refused connection, lock timeout, a killed connection) are at the end. The
cross-backend tests feed the same writes to both stores and compare what the
download, dashboard and metrics queries answer.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import pytest

from bouncetrack.api.compose import SendRequest, compose
from bouncetrack.core.events import event_to_json
from bouncetrack.store import StoreUnavailable, open_store
from bouncetrack.store.base import REASON_HARD_BOUNCE, REASON_MANUAL, REASON_SOFT_BOUNCES, BounceEvent, MessageRecord, OutboxJob, RecipientRecord, SuppressionCandidate
from bouncetrack.store.sql import MESSAGE_COLUMNS, SEND_API_MESSAGE
from bouncetrack.store.views import DownloadQuery, EventQuery, Suppression
from tests.pg import Cluster, pg_cluster as pg_cluster, unavailable  # noqa: F401  (pg_cluster: fixture, re-exported)

SPAWN = multiprocessing.get_context("spawn")
BACKENDS = ["sqlite", "postgresql"]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=BACKENDS)
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory of fresh, empty store URLs of the backend under test."""
    if request.param == "sqlite":
        counter = iter(range(1000))
        return lambda: f"sqlite:///{tmp_path}/db{next(counter)}/store.db"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database


@pytest.fixture
def url(new_url: Callable[[], str]) -> str:
    return new_url()


@pytest.fixture
def store(url: str) -> Iterator[Any]:
    s = open_store(url, timeout=5.0)
    yield s
    s.close()


@pytest.fixture
def both(tmp_path: Path, pg_cluster: Cluster) -> Iterator[tuple[Any, Any]]:
    """An SQLite store and a PostgreSQL store, for cross-backend comparisons."""
    a = open_store(f"sqlite:///{tmp_path}/cross.db", timeout=5.0)
    b = open_store(pg_cluster.create_database(), timeout=5.0)
    yield a, b
    a.close()
    b.close()


# ------------------------------------------------------------------ builders


def make_event(
    *, received_at: float = 1000.0, domain: str | None = "example.com", dedupe_key: str = "k",
    message_pk: int | None = None, **over: Any,
) -> BounceEvent:
    fields: dict[str, Any] = dict(
        event_id=uuid.uuid4().hex, type="bounce", hard=True, reason="userunknown", status="5.1.1",
        reply_code="550", diagnostic="550 5.1.1 <u@example.net>: user unknown",
        recipient="u@example.net", reported_recipient="u@example.net", action="failed",
        remote_mta="mx.example.net", domain=domain, original_sender="alice@example.com",
        original_message_id="<m1@example.com>", token="abcdefghijklmnopqrstuvwx",
        token_status="valid", flagged=False, message_pk=message_pk, received_at=received_at,
        dedupe_key=dedupe_key, feedback_type=None, sent_at=990.0,
    )
    fields.update(over)
    return BounceEvent(**fields)


def make_message(token_id: int, n_rcpts: int = 3, domain: str = "example.com",
                 created_at: float = 123.5) -> MessageRecord:
    return MessageRecord(
        token_id=token_id, token=f"tok{token_id}", queue_id="4ABC123",
        message_id=f"<{token_id}@example.com>", sender_domain=domain,
        envelope_sender="alice@example.com", verp_sender=f"b+tok{token_id}@bounces.example.org",
        dsn_ret="FULL", dsn_envid=None,
        recipients=tuple(
            RecipientRecord(address=f"r{i}@example.net", orcpt=f"rfc822;r{i}@example.net",
                            notify="FAILURE,DELAY" if i else None)
            for i in range(n_rcpts)
        ),
        created_at=created_at,
    )


def store_one(store: Any, key: str, *, n_events: int = 1, raw: bytes = b"raw",
              channels: tuple[str, ...] = ("webhook",), received_at: float = 1000.0,
              domain: str | None = "example.com") -> list[str]:
    events = [make_event(dedupe_key=key, received_at=received_at, domain=domain) for _ in range(n_events)]
    jobs = [OutboxJob(event_id=e.event_id, channel=c, target=f"https://hook/{c}", created_at=received_at)
            for e in events for c in channels]
    outcome = store.store_report(events, raw, jobs, key)
    assert outcome.stored
    return list(outcome.event_ids)


def integrity_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [sqlite3.IntegrityError]
    try:
        import psycopg

        errs.append(psycopg.IntegrityError)
    except ImportError:
        pass
    return tuple(errs)


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize("n_rcpts", [0, 1, 3, 60])
def test_message_round_trip(store: Any, n_rcpts: int) -> None:
    # PostgreSQL records a message in one statement (its recipients as arrays):
    # none, one and many recipients come back in RCPT order, NULLs kept.
    msg = make_message(2**62 + 12345, n_rcpts=n_rcpts)
    pk = store.record_message(msg)
    got = store.message_by_token_id(msg.token_id)
    assert got is not None and got.id == pk
    assert all(r.id is not None for r in got.recipients)
    bare = replace(got, id=None, recipients=tuple(replace(r, id=None) for r in got.recipients))
    assert bare == msg
    assert store.message_by_token_id(42) is None
    assert store.message_by_message_id(msg.message_id) == got
    assert store.message_by_message_id(msg.message_id, "4ABC123") == got
    assert store.message_by_message_id(msg.message_id, "OTHER") is None


def test_send_api_message_ids_are_looked_up_through_their_partial_index(store: Any) -> None:
    # Issue 20: only the send API's Message-IDs are indexed (every other one cost the journal
    # writer an index page per message); its lookup is served by that index on both engines,
    # any other Message-ID is still found (by a scan).
    sent = compose(SendRequest.model_validate({"envelope": "info@example.com", "recipient": "r@example.net",
                                               "from": "info@example.com", "to": "r@example.net", "text": "x"}))
    assert sent.message_id.startswith("<bt.") and sent.message_id.endswith("@example.com>")
    ours = replace(make_message(11), message_id=sent.message_id)
    theirs = replace(make_message(12), message_id=make_msgid(domain="client.test"))
    store.record_messages([ours, theirs])
    for msg in (ours, theirs):
        got = store.message_by_message_id(msg.message_id, "4ABC123")
        assert got is not None and got.token_id == msg.token_id
    assert store.message_by_message_id("<bt.nothing@example.com>") is None
    query = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ? AND {SEND_API_MESSAGE} ORDER BY id DESC LIMIT 1"
    with store._read("explaining") as conn:
        if store.d.name == "SQLite":
            plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + query, (sent.message_id,)))
        else:
            conn.execute("SET enable_seqscan = off")  # a tiny table: only whether the index can serve it
            plan = " ".join(str(row[0]) for row in conn.execute(store.d.q("EXPLAIN " + query), (sent.message_id,)))
            conn.execute("RESET enable_seqscan")
    assert "messages_send_api" in plan, plan


def test_duplicate_token_id_is_an_integrity_error(store: Any) -> None:
    store.record_message(make_message(7))
    with pytest.raises(integrity_errors()):
        store.record_message(make_message(7))
    assert store.record_message(make_message(8)) > 0  # nothing left half-done


def test_record_messages_is_one_batch_and_skips_known_token_ids(store: Any) -> None:
    # The milter journal's writer (issue 20): a batch in one transaction; a replay
    # after its crash adds nothing twice and leaves the first rows as they were.
    first = store.record_messages([make_message(20 + i, n_rcpts=i) for i in range(4)])
    assert first == 4
    assert store.record_messages([make_message(21, n_rcpts=9), make_message(30, n_rcpts=2),
                                  make_message(31, domain="other.test")]) == 2
    # Counted once per new message (PostgreSQL: once per statement, issue 20), a skipped one not.
    assert dict(store.metric_counts(time.time()).messages) == {"example.com": 5, "other.test": 1}
    assert store.record_messages([]) == 0
    got = store.message_by_token_id(21)
    assert got is not None and len(got.recipients) == 1
    new = store.message_by_token_id(30)
    assert new is not None and [r.address for r in new.recipients] == ["r0@example.net", "r1@example.net"]
    assert [m.token_id for m in (store.message_by_token_id(t) for t in range(20, 24)) if m] == [20, 21, 22, 23]


def test_record_messages_keeps_every_value_of_a_batch_without_recipients(store: Any) -> None:
    # PostgreSQL takes the batch as binary arrays (issue 20): empty recipient arrays,
    # NULLs, non-ASCII text and the largest token id come back as they went in.
    msgs = [replace(make_message(2**63 - 1 - i, n_rcpts=0), message_id=None if i else "<caf\u00e9@x.test>",
                    queue_id=None, dsn_ret=None, dsn_envid="env-\u2603", created_at=1e9 + i / 3) for i in range(3)]
    assert store.record_messages(msgs) == 3
    for m in msgs:
        got = store.message_by_token_id(m.token_id)
        assert got is not None and replace(got, id=None) == m


def test_record_messages_of_a_large_batch_keeps_stored_records_and_every_recipient(store: Any) -> None:
    # More messages than one statement takes (SQLite: 90 per INSERT), one of them
    # already stored (kept as it was, no recipient added to it).
    assert store.record_messages([make_message(1000, n_rcpts=1)]) == 1
    batch = [make_message(1000 + i, n_rcpts=1 + i % 3, created_at=float(i)) for i in range(250)]
    assert store.record_messages(batch) == 249
    for i in range(250):
        got = store.message_by_token_id(1000 + i)
        want = 1 if i == 0 else 1 + i % 3
        assert got is not None and [r.address for r in got.recipients] == [f"r{k}@example.net" for k in range(want)]
        assert got.created_at == (123.5 if i == 0 else float(i))


# ------------------------------------------------------------------- reports


def test_store_report_round_trip_and_idempotency(store: Any) -> None:
    pk = store.record_message(make_message(5))
    raw = b"Subject: Undelivered Mail\r\n\r\n" + b"The mail system said no. " * 400 + bytes(range(256))
    events = [make_event(dedupe_key="dk1", message_pk=pk, recipient=f"r{i}@example.net") for i in range(2)]
    jobs = [OutboxJob(event_id=e.event_id, channel="webhook", target="https://h/x") for e in events]
    first = store.store_report(events, raw, jobs, "dk1", pipe_started=time.time())
    assert first.stored and first.event_ids == tuple(e.event_id for e in events)

    retry = [make_event(dedupe_key="dk1") for _ in range(2)]
    again = store.store_report(retry, raw, [OutboxJob(event_id=e.event_id, channel="webhook", target="t")
                                            for e in retry], "dk1", pipe_started=time.time())
    assert not again.stored and again.event_ids == first.event_ids
    for e in events:
        assert store.event(e.event_id) == e
        assert store.raw_report(e.event_id) == raw
    assert store.event(retry[0].event_id) is None
    assert len(list(store.events_between(0, 1e12))) == 2
    assert len(store.jobs()) == 2
    runs = store.metric_counts(time.time()).pipe_runs
    assert sorted((o, sum(c for o2, _le, c, _s in runs if o2 == o)) for o in {r[0] for r in runs}) == [
        ("duplicate", 1), ("stored", 1)]


def test_nul_in_event_text_is_stored_as_the_replacement_character(store: Any) -> None:
    """A NUL from the wild (a diagnostic, a remote MTA name) is stored, as U+FFFD.

    PostgreSQL's text cannot hold a NUL: without sql.stored_text the insert fails
    and the pipe would tempfail that bounce on every retry.
    """
    e = make_event(dedupe_key="nul", diagnostic="550 \x00user\x00 unknown", remote_mta="mx\x00",
                   feedback_type="\x00")
    assert store.store_report([e], b"raw\x00", [], "nul").stored
    got = store.event(e.event_id)
    assert got is not None
    assert (got.diagnostic, got.remote_mta, got.feedback_type) == ("550 \ufffduser\ufffd unknown", "mx\ufffd", "\ufffd")
    assert got.reason == e.reason and got.recipient == e.recipient
    assert store.raw_report(e.event_id) == b"raw\x00"  # the raw report keeps its bytes


def test_report_without_events_unknown_event_and_duplicate_jobs(store: Any) -> None:
    out = store.store_report([], b"\xff\xfegarbage", [], "garbage-1")
    assert out.stored and out.event_ids == ()
    assert store.store_report([], b"\xff\xfegarbage", [], "garbage-1").stored is False
    assert store.event("nope") is None and store.raw_report("nope") is None
    e = make_event(dedupe_key="d")
    job = OutboxJob(event_id=e.event_id, channel="smtp", target="ops@example.com")
    store.store_report([e], b"x", [job, job], "d")
    assert len(store.jobs()) == 1


def test_purge_raw_before_keeps_events_and_dedupe(store: Any) -> None:
    old = [store_one(store, f"old{i}", received_at=100.0 + i)[0] for i in range(25)]
    new = store_one(store, "new", received_at=5000.0)[0]
    assert store.purge_raw_before(1000.0, batch=10) == 25
    assert store.purge_raw_before(1000.0, batch=10) == 0
    assert all(store.raw_report(eid) is None for eid in old)
    assert all(store.event(eid) is not None for eid in old)
    assert store.raw_report(new) == b"raw"
    assert store.store_report([], b"raw", [], "old3").stored is False


def test_events_between_filters_orders_and_streams(store: Any) -> None:
    times = [50.0, 10.0, 30.0, 30.0, 20.0, 40.0, 60.0]
    for i, t in enumerate(times):
        store_one(store, f"k{i}", received_at=t, domain="a.example" if i % 2 == 0 else "b.example")
    got = list(store.events_between(20.0, 60.0))
    assert [e.received_at for e in got] == [20.0, 30.0, 30.0, 40.0, 50.0]
    assert [got[1].dedupe_key, got[2].dedupe_key] == ["k2", "k3"]  # ties in id order
    only_a = list(store.events_between(0.0, 100.0, domains=["a.example"]))
    assert [e.received_at for e in only_a] == [20.0, 30.0, 50.0, 60.0]
    assert len(list(store.events_between(0.0, 100.0, domains=["a.example", "b.example"]))) == 7
    assert list(store.events_between(0.0, 100.0, domains=[])) == []

    big = [make_event(dedupe_key="big", received_at=float(2200 - i % 7)) for i in range(1200)]
    store.store_report(big, b"r", [], "big")
    it = store.events_between(1000.0, 10_000.0)
    first = next(it)
    store_one(store, "during", received_at=20_000.0)  # the store stays usable meanwhile
    rest = list(it)
    stamps = [first.received_at] + [e.received_at for e in rest]
    assert stamps == sorted(stamps) and len(stamps) == 1200
    assert len({e.event_id for e in [first, *rest]}) == 1200
    it2 = store.events_between(0.0, 10_000.0)
    next(it2)
    it2.close()
    store_one(store, "after", received_at=20_001.0)


# -------------------------------------------------------------------- outbox


def test_outbox_claim_fail_dead_replay(store: Any) -> None:
    store_one(store, "r1", n_events=3, channels=("webhook", "smtp"))
    assert len(store.jobs()) == 6
    claimed = store.claim_jobs(now=2000.0, limit=4, lease_seconds=60.0)
    assert len(claimed) == 4 and all(j.lease_until == 2060.0 for j in claimed)
    rest = store.claim_jobs(now=2001.0, limit=10, lease_seconds=60.0)
    assert {j.id for j in rest}.isdisjoint({j.id for j in claimed}) and len(rest) == 2
    assert store.claim_jobs(now=2002.0, limit=10, lease_seconds=60.0) == []
    again = store.claim_jobs(now=2060.5, limit=10, lease_seconds=60.0)
    assert {j.id for j in again} == {j.id for j in claimed}

    j0, j1, j2 = (j.id for j in claimed[:3])
    assert j0 is not None and j1 is not None and j2 is not None
    store.job_delivered(j0, now=2070.0)
    store.job_failed(j1, now=2070.0, error="HTTP 503", next_attempt_at=2100.0)
    store.job_failed(j2, now=2070.0, error="x" * 10_000, next_attempt_at=None)
    by_id = {j.id: j for j in store.jobs(limit=100)}
    assert by_id[j0].state == "delivered"
    assert by_id[j1].state == "pending" and by_id[j1].attempts == 1
    assert by_id[j1].next_attempt_at == 2100.0 and by_id[j1].last_error == "HTTP 503"
    assert by_id[j1].lease_until is None
    assert by_id[j2].state == "dead" and by_id[j2].attempts == 1
    assert len(by_id[j2].last_error or "") == 4000
    assert [j.id for j in store.jobs(state="dead")] == [j2]
    assert j1 not in {j.id for j in store.claim_jobs(now=2099.0, limit=10, lease_seconds=1)}
    store.job_failed(j0, now=2080.0, error="late", next_attempt_at=2200.0)
    assert {j.id: j for j in store.jobs()}[j0].state == "delivered"

    stats = store.outbox_stats(now=2100.0)
    assert stats["pending"] == 4 and stats["delivered"] == 1 and stats["dead"] == 1
    assert stats["oldest_pending_age"] == 1100.0

    assert store.replay_job(j2, now=3000.0) is True
    assert store.replay_job(j0, now=3000.0) is True
    assert store.replay_job(999_999, now=3000.0) is False
    by_id = {j.id: j for j in store.jobs()}
    for jid in (j0, j2):
        assert by_id[jid].state == "pending" and by_id[jid].attempts == 0
        assert by_id[jid].next_attempt_at == 3000.0 and by_id[jid].lease_until is None
    assert {j0, j2} <= {j.id for j in store.claim_jobs(now=3000.0, limit=10, lease_seconds=5)}
    assert store.outbox_stats(now=3000.0)["dead"] == 0


# --------------------------------------------------------------- concurrency


def _writer(url: str, n: int, index: int, start: Any, out: Any) -> None:
    try:
        start.wait(30)
        s = open_store(url, timeout=30.0)
        shared = s.store_report([make_event(dedupe_key="shared")], b"shared", [], "shared").stored
        for i in range(n):
            store_one(s, f"p{index}-{i}", raw=f"report {index} {i}".encode())
        s.record_message(make_message(10_000 + index))
        s.close()
        out.put((index, "ok", shared))
    except BaseException as exc:
        out.put((index, repr(exc), False))


def test_six_processes_writing_a_fresh_database(url: str) -> None:
    """Nobody has opened the store yet: the migrations race as well as the writes."""
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_writer, args=(url, 40, i, start, out)) for i in range(6)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[1] == "ok" for r in results), results
    assert sum(1 for r in results if r[2]) == 1  # the shared report stored exactly once
    s = open_store(url, timeout=5.0)
    assert len(list(s.events_between(0, 1e12))) == 6 * 40 + 1
    assert len(s.jobs(limit=10_000)) == 6 * 40
    assert s.dashboard_sent(["example.com"], 0, 1e12) == (6, 6 * 3)
    s.close()


def _claimer(url: str, start: Any, out: Any) -> None:
    try:
        s = open_store(url, timeout=30.0)
        start.wait(30)
        got: list[int] = []
        while True:
            jobs = s.claim_jobs(now=5000.0, limit=3, lease_seconds=3600.0)
            if not jobs:
                break
            got.extend(j.id for j in jobs if j.id is not None)
        s.close()
        out.put(got)
    except BaseException as exc:
        out.put(repr(exc))


def test_two_processes_never_claim_the_same_job(url: str) -> None:
    s = open_store(url)
    for i in range(30):
        store_one(s, f"k{i}", n_events=5, channels=("webhook", "smtp"))
    all_ids = {j.id for j in s.jobs(limit=1000)}
    s.close()
    assert len(all_ids) == 300
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_claimer, args=(url, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    a, b = out.get(timeout=120), out.get(timeout=120)
    for p in procs:
        p.join(30)
    assert isinstance(a, list) and isinstance(b, list), (a, b)
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == all_ids


def test_threads_sharing_one_store(store: Any) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                store_one(store, f"t{t}-{i}")
                store.record_message(make_message(t * 1000 + i, n_rcpts=1))
                list(store.events_between(0, 1e9))
                store.claim_jobs(time.time(), 2, 30.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(list(store.events_between(0, 1e9))) == 80


# ------------------------------------------------------------------ download


def _query(**over: Any) -> DownloadQuery:
    values: dict[str, Any] = dict(domains=("a.example", "b.example"), start=0.0, end=1e12)
    values.update(over)
    return DownloadQuery(**values)


def test_download_pages_stream_and_filters(store: Any) -> None:
    for i in range(30):
        dom = ("a.example", "b.example", "c.example")[i % 3]
        e = make_event(dedupe_key=f"d{i}", received_at=1000.0 + i, domain=dom,
                       hard=i % 2 == 0, type="bounce" if i % 5 else "delay",
                       recipient=f"u{i}@{'Remote.TEST' if i % 4 == 0 else 'other.test'}")
        store.store_report([e], b"r", [], f"d{i}")
    q = _query()
    pages: list[tuple[int, BounceEvent]] = []
    after = 0
    while True:
        page = store.events_page(q, after_id=after, limit=7)
        if not page:
            break
        pages.extend(page)
        after = page[-1][0]
    assert len(pages) == 20 and [pk for pk, _ in pages] == sorted(pk for pk, _ in pages)
    assert {e.domain for _, e in pages} == {"a.example", "b.example"}
    assert list(store.iter_events(q)) == pages
    assert list(store.iter_events(q, after_id=pages[9][0])) == pages[10:]
    assert [pk for pk, _ in store.events_page(_query(hard=True))] == [pk for pk, e in pages if e.hard]
    assert [pk for pk, _ in store.events_page(_query(types=("delay",)))] == [
        pk for pk, e in pages if e.type == "delay"]
    assert [pk for pk, _ in store.events_page(_query(recipient_domain="remote.test"))] == [
        pk for pk, e in pages if (e.recipient or "").lower().endswith("@remote.test")]
    assert [pk for pk, _ in store.events_page(_query(start=1010.0, end=1020.0))] == [
        pk for pk, e in pages if 1010.0 <= e.received_at < 1020.0]
    assert store.events_page(_query(domains=())) == []

    rendered = [row for batch in store.iter_rendered(q, "json", batch=4) for row in batch]
    assert [(pk, json.loads(text)) for pk, text in rendered] == [(pk, event_to_json(e)) for pk, e in pages]
    assert store.rendered_page(q, "json", limit=5) == rendered[:5]
    csv_rows = store.rendered_page(q, "csv", limit=100)
    assert [pk for pk, _ in csv_rows] == [pk for pk, _ in pages]
    first = next(csv.reader(io.StringIO(csv_rows[0][1])))
    assert first[0] == pages[0][1].event_id and len(first) == len(event_to_json(pages[0][1]))


TRICKY: list[dict[str, Any]] = [
    dict(diagnostic='he said "no", then =cmd|x', recipient="=SUM(A1)@x.test", reason="@weird"),
    dict(diagnostic=None, status=None, sent_at=None, type="martian", feedback_type="abuse"),
    dict(diagnostic="ünïcödé \u2028 line\nbreak", hard=False, flagged=True, received_at=1000.0005),
    dict(diagnostic="+1 tab\tinside", remote_mta="-dash", received_at=1000.9996, token=None),
]


def test_rendering_is_the_same_on_both_backends(both: tuple[Any, Any]) -> None:
    q = DownloadQuery(domains=("example.com",), start=0.0, end=1e12)
    for store in both:
        for i, over in enumerate(TRICKY):
            store.store_report([make_event(dedupe_key=f"t{i}", event_id=f"e{i}", **over)], b"r", [], f"t{i}")
    lite, pg = both
    for fmt in ("json", "csv"):
        a = [text for _, text in lite.rendered_page(q, fmt)]
        b = [text for _, text in pg.rendered_page(q, fmt)]
        if fmt == "json":
            assert [json.loads(t) for t in a] == [json.loads(t) for t in b]
        else:
            assert a == b
        assert [t for batch in pg.iter_rendered(q, fmt) for _, t in batch] == b


# --------------------------------------------------------------- suppression


def test_suppression_add_list_remove_feed(store: Any) -> None:
    now = 10_000.0
    assert store.suppression_seq() == 0
    entries = [
        Suppression("example.com", "a@x.test", REASON_MANUAL, None, now, None),
        Suppression("example.com", "b@x.test", REASON_MANUAL, None, now, now + 100),
        Suppression("other.test", "a@x.test", REASON_MANUAL, None, now, None),
    ]
    assert store.add_suppressions(entries) == 3
    assert store.add_suppressions([]) == 0
    listed = store.suppressions(["example.com"], now)
    assert [(s.domain, s.address) for s in listed] == [("example.com", "a@x.test"), ("example.com", "b@x.test")]
    assert store.suppressions([], now) == []
    assert [s.address for s in store.suppressions(["example.com"], now, address="b@x.test")] == ["b@x.test"]
    assert [s.address for s in store.suppressions(["example.com"], now, after_id=listed[0].id or 0)] == ["b@x.test"]
    assert [s.address for s in store.suppressions(["example.com"], now + 200)] == ["a@x.test"]  # b expired
    assert store.suppressions_expiring(now, now + 100) == [("example.com", "b@x.test")]
    keys = sorted(k for batch in store.suppression_keys(now, batch=2) for k in batch)
    assert keys == [("example.com", "a@x.test"), ("example.com", "b@x.test"), ("other.test", "a@x.test")]

    seq = store.suppression_seq()
    assert seq == 3
    assert store.remove_suppressions(["example.com"], ["a@x.test", "nobody@x.test"], now + 1) == [
        ("example.com", "a@x.test")]
    assert store.remove_suppressions(["example.com"], ["a@x.test"], now + 2) == []
    assert store.remove_suppressions([], ["a@x.test"], now + 2) == []
    assert [s.address for s in store.suppressions(["example.com"], now + 3)] == ["b@x.test"]
    inactive = store.suppressions(["example.com"], now + 3, include_inactive=True)
    assert [s.removed_at for s in inactive] == [now + 1, None]
    (change,) = store.suppression_changes(seq)
    assert (change.domain, change.address, change.removed, change.seq) == ("example.com", "a@x.test", True, seq + 1)
    assert [c.seq for c in store.suppression_changes(0)] == [2, 3, 4]  # 1 was superseded
    # every domain (the CLI): None
    assert [(s.domain, s.address) for s in store.suppressions(None, now + 3)] == [
        ("example.com", "b@x.test"), ("other.test", "a@x.test")]
    assert store.remove_suppressions(None, ["a@x.test", "b@x.test"], now + 4) == [
        ("other.test", "a@x.test"), ("example.com", "b@x.test")]
    assert [c.seq for c in store.suppression_changes(4)] == [5, 6]
    assert store.suppressions(None, now + 5) == []


def test_store_report_suppresses_in_its_transaction(store: Any) -> None:
    now = 50_000.0
    hard = make_event(dedupe_key="h", received_at=now, recipient="Hard@X.test")
    cand = SuppressionCandidate("example.com", "hard@x.test", REASON_HARD_BOUNCE, hard.event_id, now, None)
    store.store_report([hard], b"r", [], "h", suppress=[cand])
    assert [(s.address, s.reason, s.source_event_id) for s in store.suppressions(["example.com"], now)] == [
        ("hard@x.test", REASON_HARD_BOUNCE, hard.event_id)]
    assert store.store_report([hard], b"r", [], "h", suppress=[cand]).stored is False

    def soft(i: int) -> None:
        e = make_event(dedupe_key=f"s{i}", received_at=now + i, hard=False, recipient="Soft@X.test")
        c = SuppressionCandidate("example.com", "soft@x.test", REASON_SOFT_BOUNCES, e.event_id, now + i,
                                 now + 1000, soft_bounce_limit=3, soft_since=now - 10)
        store.store_report([e], b"r", [], f"s{i}", suppress=[c])

    soft(1)
    soft(2)
    assert store.suppressions(["example.com"], now, address="soft@x.test") == []
    soft(3)  # the third soft bounce within the window lists it
    (entry,) = store.suppressions(["example.com"], now, address="soft@x.test")
    assert entry.reason == REASON_SOFT_BOUNCES and entry.expires_at == now + 1000 and entry.created_at == now + 3


# ---------------------------------------------------------- metrics/dashboard


def _workload(store: Any) -> None:
    """The same writes for both backends (fixed ids and times)."""
    for i in range(4):
        store.record_message(make_message(100 + i, n_rcpts=i + 1, domain=("a.test", "b.test")[i % 2],
                                          created_at=1000.0 + i * 86400))
    for i in range(12):
        e = make_event(
            event_id=f"ev{i:02d}", dedupe_key=f"w{i}", received_at=1000.0 + (i % 3) * 86400 + i,
            domain=("a.test", "b.test", None)[i % 3], type=("bounce", "complaint", "delay")[i % 4 % 3],
            hard=i % 2 == 0, reason=("userunknown", "mailboxfull", "spam")[i % 3],
            token_status=("valid", "forged")[i % 5 == 0], feedback_type="abuse" if i % 4 == 1 else None,
            recipient=f"user{i}@{('Remote.test', 'far.test')[i % 2]}",
        )
        jobs = [OutboxJob(event_id=e.event_id, channel=c, target="t", created_at=1000.0, next_attempt_at=0.0)
                for c in ("webhook", "smtp")]
        store.store_report([e], f"raw {i}".encode(), jobs, f"w{i}", pipe_started=time.time())
    store.store_report([], b"raw 0", [], "w0", pipe_started=time.time())
    claimed = store.claim_jobs(2000.0, 100, 60.0)
    ids = sorted(j.id for j in claimed)
    for jid in ids[:5]:
        store.job_delivered(jid, 2001.0)
    for jid in ids[5:9]:
        store.job_failed(jid, 2001.0, "503", 3000.0)
    for jid in ids[9:11]:
        store.job_failed(jid, 2001.0, "410", None)


def test_metric_counts_match_the_sqlite_store(both: tuple[Any, Any]) -> None:
    for store in both:
        _workload(store)
    a, b = (s.metric_counts(2500.0) for s in both)
    assert sorted(a.events) == sorted(b.events) and len(a.events) > 5
    assert sorted(a.messages) == sorted(b.messages) == [("a.test", 2), ("b.test", 2)]
    assert sorted(a.deliveries) == sorted(b.deliveries)
    assert dict(((c, o), n) for c, o, n in b.deliveries)[("webhook", "delivered")] + dict(
        ((c, o), n) for c, o, n in b.deliveries)[("smtp", "delivered")] == 5
    assert sum(n for _c, o, n in b.deliveries if o == "retry") == 4
    # Runs per outcome (the buckets depend on how long each store_report took on a loaded machine).
    def runs(rows: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for o, _le, c, _s in rows:
            out[o] = out.get(o, 0) + c
        return out
    assert runs(a.pipe_runs) == runs(b.pipe_runs) and runs(a.pipe_runs) == {"stored": 12, "duplicate": 1}
    for field in ("outbox_pending", "outbox_due", "outbox_leased", "outbox_dead", "outbox_oldest_pending_age"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.outbox_dead == 2 and a.outbox_pending == 24 - 5 - 2


def test_dashboard_aggregates_match_the_sqlite_store(both: tuple[Any, Any]) -> None:
    for store in both:
        _workload(store)
    doms = ["a.test", "b.test"]
    calls: list[Callable[[Any], Any]] = [
        lambda s: s.dashboard_sent(doms, 0, 1e12),
        lambda s: s.dashboard_sent(["a.test"], 1000.0, 1000.0 + 86400),
        lambda s: s.dashboard_sent([], 0, 1e12),
        lambda s: s.dashboard_daily(doms, 0, 1e12),
        lambda s: s.dashboard_top_reasons(doms, 0, 1e12, 2),
        lambda s: s.dashboard_top_recipient_domains(doms, 0, 1e12),
        lambda s: [pk for pk, _ in s.dashboard_events(EventQuery(domains=tuple(doms)), limit=3)],
        lambda s: [e.event_id for _, e in s.dashboard_events(EventQuery(domains=tuple(doms)), limit=100)],
        lambda s: [e.event_id for _, e in s.dashboard_events(
            EventQuery(domains=tuple(doms), hard=True, recipient_contains="REMOTE"), limit=100)],
        lambda s: [e.event_id for _, e in s.dashboard_events(
            EventQuery(domains=tuple(doms), type="bounce", start=1000.0, end=90000.0), limit=100)],
        lambda s: [(v.job.id, v.domain, v.event_type) for v in s.dashboard_jobs(doms, "failed")],
        lambda s: [(v.job.id, v.job.state) for v in s.dashboard_jobs(doms, "dead")],
        lambda s: s.dashboard_job_counts(doms),
        lambda s: s.dashboard_job(3),
        lambda s: s.dashboard_job(99_999),
    ]
    for i, call in enumerate(calls):
        assert call(both[0]) == call(both[1]), i
    both[1].roll_up_sent(1000.0 + 3 * 86400)  # rolled up on one side only: the same counts
    for i, call in enumerate(calls[:3]):
        assert call(both[0]) == call(both[1]), i
    lite, pg = both
    newest = lite.dashboard_events(EventQuery(domains=tuple(doms)), limit=3)
    older = lite.dashboard_events(EventQuery(domains=tuple(doms)), before_pk=newest[-1][0], limit=3)
    assert pg.dashboard_events(EventQuery(domains=tuple(doms)), before_pk=newest[-1][0], limit=3) == older
    assert pg.dashboard_events(EventQuery(domains=tuple(doms)), after_pk=older[0][0], limit=3) == newest


DAY = 86400
D0 = 1_700_006_400  # a UTC day start


def test_sent_counts_are_the_same_before_and_after_the_roll_up(store: Any) -> None:
    # Messages over six days, at any time of day, two domains, 1-4 recipients each.
    made = []
    for i in range(30):
        created = D0 + (i % 6) * DAY + (i * 7919) % DAY + 0.25
        made.append(make_message(500 + i, n_rcpts=1 + i % 4, domain=("a.test", "b.test")[i % 3 == 0],
                                 created_at=created))
        store.record_message(made[-1])

    def expected(domains: list[str], start: float, end: float) -> tuple[int, int]:
        chosen = [m for m in made if m.sender_domain in domains and start <= m.created_at < end]
        return len(chosen), sum(len(m.recipients) for m in chosen)

    ranges = [(D0, D0 + 6 * DAY), (D0 + DAY, D0 + 3 * DAY), (D0 + 3600.5, D0 + 4 * DAY - 7), (D0 - DAY, D0),
              (D0 + 2 * DAY, D0 + 2 * DAY), (0, 1e12)]
    scopes = [["a.test"], ["b.test"], ["a.test", "b.test"], ["c.test"]]

    def check() -> None:
        for domains in scopes:
            for start, end in ranges:
                assert store.dashboard_sent(domains, start, end) == expected(domains, start, end), (domains, start)

    check()  # nothing rolled up: all live
    days_before_3 = {(m.sender_domain, int(m.created_at // DAY) * DAY) for m in made if m.created_at < D0 + 3 * DAY}
    assert store.roll_up_sent(D0 + 3 * DAY + 5000) == len(days_before_3)  # cut to the day start
    check()
    assert store.roll_up_sent(D0 + 3 * DAY) == 0  # idempotent
    assert store.roll_up_sent(D0 + 2 * DAY) == 0  # never backwards
    assert store.roll_up_sent(D0 + 100 * DAY) == len({(m.sender_domain, int(m.created_at // DAY)) for m in made}) - len(
        days_before_3)
    check()
    # The day rows outlive the messages (retention): the dashboard keeps the history.
    assert store.purge_messages_before(D0 + 7 * DAY).messages == 30
    assert store.dashboard_sent(["a.test", "b.test"], D0, D0 + 6 * DAY) == expected(["a.test", "b.test"], D0, D0 + 6 * DAY)


# ------------------------------------------------- PostgreSQL failure modes


def test_pg_connection_refused_is_unavailable_within_the_timeout() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="PostgreSQL store"):
        open_store(f"postgresql://postgres:secret@127.0.0.1:{port}/nodb", timeout=1.0)
    assert time.monotonic() - t0 < 5.0


def test_pg_password_is_not_in_the_error(pg_cluster: Cluster) -> None:
    with pytest.raises(StoreUnavailable) as info:
        open_store(f"postgresql://nobody:hunter2@127.0.0.1:{pg_cluster.port}/missing_db", timeout=2.0)
    assert "hunter2" not in str(info.value)


def test_pg_lock_held_longer_than_timeout(pg_cluster: Cluster) -> None:
    import psycopg

    url = pg_cluster.create_database()
    s = open_store(url, timeout=0.5)
    store_one(s, "seed", channels=("webhook",))
    other = psycopg.connect(url, autocommit=False)
    try:
        other.execute("LOCK TABLE raw_reports, outbox, messages IN EXCLUSIVE MODE")
        for attempt in (lambda: s.store_report([], b"x", [], "k"),
                        lambda: s.record_message(make_message(1)),
                        lambda: s.claim_jobs(5000.0, 10, 1.0)):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="55P03|57014"):
                attempt()
            assert 0.4 <= time.monotonic() - t0 < 3.0
        assert len(s.jobs()) == 1  # EXCLUSIVE still lets readers read
    finally:
        other.rollback()
        other.close()
    assert s.store_report([], b"x", [], "k").stored  # the same store object writes again
    s.close()


def test_pg_lost_connection_is_unavailable_then_reconnects(pg_cluster: Cluster) -> None:
    import psycopg

    url = pg_cluster.create_database()
    s = open_store(url, timeout=2.0)
    store_one(s, "before")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'bouncetrack' AND datname = current_database()")
    with pytest.raises(StoreUnavailable):
        s.jobs()
    assert len(s.jobs()) == 1  # a fresh connection at the next call
    store_one(s, "after")
    s.close()


def test_pg_migrations_recorded_once_and_reopen_is_cheap(pg_cluster: Cluster) -> None:
    import psycopg

    from bouncetrack.store import migrations as m  # the single list (issue 17)

    url = pg_cluster.create_database()
    open_store(url).close()
    open_store(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, description FROM schema_migrations").fetchall()
        assert rows == [(v, d) for v, d, _ in m.MIGRATIONS]
        extra = m.MIGRATIONS + ((m.LATEST_VERSION + 1, "test table", ("CREATE TABLE t_extra (x INTEGER)",)),)
        assert m.migrate(conn, extra) == [m.LATEST_VERSION + 1]
        assert m.migrate(conn, extra) == []
        bad = extra + ((99, "broken", ("CREATE TABLE t_half (x INTEGER)", "NOT SQL")),)
        with pytest.raises(psycopg.errors.SyntaxError):
            m.migrate(conn, bad)
        assert m.current_version(conn) == m.LATEST_VERSION + 1
        assert conn.execute("SELECT to_regclass('t_half')").fetchone() == (None,)


def test_pipe_path_does_not_import_psycopg(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from bouncetrack.store import open_store; "
        f"s = open_store('sqlite:///{tmp_path}/x.db'); s.close(); "
        "import bouncetrack.bounce_pipe.main; "
        "print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"



def test_pipe_guards_and_the_untrusted_quota_agree(both: tuple[Any, Any]) -> None:
    from bouncetrack.store.base import UNTRUSTED_OVER_QUOTA, UntrustedQuota

    day = 20000 * 86400.0
    for store in both:
        outcomes = []
        for i in range(4):
            e = make_event(event_id=f"q{i}", dedupe_key=f"q{i}", received_at=day + i, domain=None, token_status="forged")
            outcomes.append(store.store_report([e], b"raw", [], f"q{i}", guards={"events_dropped": 7, "unused": 0},
                                               untrusted=UntrustedQuota("192.0.2.1", 2)))
        other = make_event(event_id="q9", dedupe_key="q9", received_at=day + 9, domain=None, token_status="forged")
        outcomes.append(store.store_report([other], b"raw", [], "q9", untrusted=UntrustedQuota("192.0.2.2", 2)))
        assert [(o.stored, o.over_quota) for o in outcomes] == [(True, False)] * 2 + [(False, True)] * 2 + [(True, False)]
        assert store.event("q2") is None and store.event("q9") is not None
    a, b = (s.metric_counts(day) for s in both)
    assert sorted(a.pipe_guards) == sorted(b.pipe_guards) == [("events_dropped", 28), (UNTRUSTED_OVER_QUOTA, 2)]
