"""The milter's journal (issue 20): records appended with one write(2), moved into the
store by the writer exactly once, found by the pipe while not yet moved."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bouncetrack.core.config import Config
from bouncetrack.milter import journal
from bouncetrack.milter.journal import JournalAppender, JournalWriter, pending_record
from bouncetrack.store import open_store
from bouncetrack.store.base import MessageRecord, RecipientRecord
from bouncetrack.core.tokens import load_keyring, mint, new_token_id, verp_address
from tests import mailgen
from tests.configkit import write_config
from tests.test_pipe import events, run_pipe


def message(token_id: int = 77, token: str = "tok77", n: int = 2) -> MessageRecord:
    return MessageRecord(
        token_id=token_id, token=token, queue_id="4QID", message_id="<m\u00e9@x.test>",
        sender_domain="tracked.test", envelope_sender="info@tracked.test", verp_sender=f"b+{token}@bounce.test",
        dsn_ret="FULL", dsn_envid=None,
        recipients=tuple(RecipientRecord(f"r{i}@remote.test", f"rfc822;r{i}@remote.test", None if i else "NEVER")
                         for i in range(n)),
        created_at=1234.5,
    )


def writer(config: Config) -> JournalWriter:
    return JournalWriter(config.milter_journal, lambda: open_store(config.store_url, timeout=2))


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path, "domains:\n  tracked.test: {tracking: true}\n")


def test_record_round_trip_is_one_line_without_rs_inside() -> None:
    m = message()
    data = journal.encode(m)
    assert data.startswith(journal.RS) and data.endswith(journal.LF)
    assert data.count(journal.RS) == 1 and data.count(journal.LF) == 1
    assert journal.decode(data[1:-1]) == m


@pytest.mark.parametrize("text", ["plain", 'quote " and \\ backslash', "rs \x1e lf \n cr \r nul \x00",
                                  "caf\u00e9 \u2603 \U0001f600", "surrogate \udcff escaped", ""])
def test_any_string_round_trips_and_never_breaks_the_framing(text: str) -> None:
    m = replace(message(), message_id=text, queue_id=None, dsn_envid=text, envelope_sender=f"{text}@x.test",
                recipients=(RecipientRecord(text, None, text), RecipientRecord("r@x.test", text, None)))
    data = journal.encode(m)
    assert data.count(journal.RS) == 1 and data.count(journal.LF) == 1 and data.isascii()
    assert journal.decode(data[1:-1]) == m
    assert json.loads(data[1:-1]) == json.loads(json.dumps(json.loads(data[1:-1])))  # plain JSON


def test_a_record_needs_a_finite_time() -> None:
    with pytest.raises(ValueError):
        journal.encode(replace(message(), created_at=float("nan")))


def test_a_torn_record_is_skipped_and_the_next_one_read() -> None:
    a, b = journal.encode(message(1, "t1")), journal.encode(message(2, "t2"))
    # A crash in the middle of a's write(2), then b appended after the fragment.
    texts, used, torn = journal.parse(a[:25] + b + b"\x1e{\"partial")
    assert [journal.decode(t).token for t in texts] == ["t2"] and torn == 1
    assert used == 25 + len(b)  # the partial tail stays for later


@pytest.mark.parametrize("bad", [b'{"i":1', b'{"i":1}', b"[]", b'"text"', b"1,2", b'{"i":5,"t":"x"},{"i":6}'])
def test_decode_all_reads_a_batch_at_once_and_skips_only_the_unreadable_ones(bad: bytes) -> None:
    # The writer parses a batch as one JSON array (issue 20); a record that is not one
    # whole JSON object of the right shape (here in the middle) loses only itself.
    good = [journal.encode(message(i, f"t{i}"))[1:-1] for i in range(4)]
    assert journal.decode_all(good) == ([message(i, f"t{i}") for i in range(4)], [])
    records, errors = journal.decode_all([*good[:2], bad, *good[2:]])
    assert [r.token for r in records] == ["t0", "t1", "t2", "t3"] and len(errors) == 1
    assert journal.decode_all([]) == ([], [])


def test_writer_moves_each_record_once_and_deletes_sealed_segments(config: Config) -> None:
    appender = JournalAppender(config.milter_journal)
    for i in range(5):
        appender.append(journal.encode(message(100 + i, f"t{i}")))
    w = writer(config)
    assert w.step() == 5
    (segment,) = journal.segments(config.milter_journal)  # still held by its appender
    appender.append(journal.encode(message(200, "t200")))
    assert w.step() == 1
    appender.close()  # sealed: its lock is gone
    assert w.step() == 0 and journal.segments(config.milter_journal) == []
    # A writer that restarts replays nothing twice (token_id is unique; skipped).
    again = JournalAppender(config.milter_journal)
    again.append(journal.encode(message(100, "t0")))
    again.close()
    assert writer(config).step() == 1
    store = open_store(config.store_url)
    count = store._conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    got = store.message_by_token_id(104)
    store.close()
    assert count == 6
    assert got is not None and replace(got, id=None, recipients=tuple(replace(r, id=None) for r in got.recipients)) \
        == message(104, "t4")


def test_a_dead_milter_segment_is_sealed_and_a_rotated_one_too(config: Config, tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # a milter that appends, then dies without closing anything
        a = JournalAppender(config.milter_journal)
        a.append(journal.encode(message(1, "t1")))
        os._exit(0)
    os.waitpid(pid, 0)
    a = JournalAppender(config.milter_journal)
    a.append(journal.encode(message(2, "t2")))
    a._size = journal.SEGMENT_BYTES  # the next append rotates
    a.append(journal.encode(message(3, "t3")))
    assert len(journal.segments(config.milter_journal)) == 3
    assert writer(config).step() == 3
    assert len(journal.segments(config.milter_journal)) == 1  # only the one in use is left
    fd = os.open(journal.segments(config.milter_journal)[0], os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    a.close()


def test_pipe_stores_the_record_it_finds_only_in_the_journal(config: Config) -> None:
    keyring = load_keyring(config)
    token_id = new_token_id()
    token = mint(keyring, token_id)
    m = replace(message(token_id, token, 1), recipients=(
        RecipientRecord("unknown-1@remote.test", "rfc822;unknown-1@remote.test", None),))
    appender = JournalAppender(config.milter_journal)
    appender.append(journal.encode(message(5, "other")))
    appender.append(journal.encode(m))
    assert pending_record(config.milter_journal, token.upper()) == (True, m)  # the pipe's token may be upper-cased
    assert pending_record(config.milter_journal, "a" * 24) == (False, None)
    verp = verp_address(config, token)
    report = mailgen.dsn(verp, "unknown-1@remote.test", original_recipient="unknown-1@remote.test")
    proc = run_pipe(config, verp, report)
    assert proc.returncode == 0, proc.stderr  # stored at once: no wait for the writer, no retry
    (event,) = events(config)
    assert event["token_status"] == "valid" and event["recipient"] == "unknown-1@remote.test"
    assert writer(config).step() == 2  # the writer moves both; the one the pipe stored is skipped
    store = open_store(config.store_url)
    count = store._conn.execute("SELECT count(*) FROM messages WHERE token_id = ?", (token_id,)).fetchone()[0]
    store.close()
    assert count == 1
    appender.close()


def test_pipe_tempfails_while_an_unreadable_record_is_only_in_the_journal(config: Config) -> None:
    # A record the pipe finds but cannot read (here torn: its JSON cut short, then the
    # next record appended after it) is left to the writer: the pipe waits for it
    # (process.JOURNAL_WAIT_SECONDS), then exits 75 and Postfix retries.
    keyring = load_keyring(config)
    token_id = new_token_id()
    token = mint(keyring, token_id)
    whole = journal.encode(replace(message(token_id, token, 1), recipients=(
        RecipientRecord("unknown-1@remote.test", "rfc822;unknown-1@remote.test", None),)))
    appender = JournalAppender(config.milter_journal)
    appender.append(whole[: whole.index(b'"d":')] + journal.encode(message(5, "other")))
    assert pending_record(config.milter_journal, token) == (True, None)
    verp = verp_address(config, token)
    report = mailgen.dsn(verp, "unknown-1@remote.test", original_recipient="unknown-1@remote.test")
    proc = run_pipe(config, verp, report)
    assert proc.returncode == 75, proc.stderr
    assert b"still in the milter's journal" in proc.stderr
    assert events(config) == []
    appender.close()


def test_pipe_stores_an_unknown_token_as_before_when_the_journal_lacks_it(config: Config) -> None:
    keyring = load_keyring(config)
    token = mint(keyring, new_token_id())
    verp = verp_address(config, token)
    proc = run_pipe(config, verp, mailgen.dsn(verp, "x@remote.test", original_recipient="x@remote.test"))
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    assert event["token_status"] == "unknown"


def test_writer_waits_for_a_store_that_is_down_and_loses_nothing(config: Config, tmp_path: Path) -> None:
    import threading

    (tmp_path / "a-directory").mkdir()  # no SQLite file can be opened there
    bad = replace(config, store_url=f"sqlite:///{tmp_path}/a-directory")
    a = JournalAppender(config.milter_journal)
    a.append(journal.encode(message(9, "t9")))
    a.close()
    w = JournalWriter(config.milter_journal, lambda: open_store(bad.store_url, timeout=0.2))
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    time.sleep(0.5)
    stop.set()
    t.join(10)
    assert w.moved == 0 and len(journal.segments(config.milter_journal)) == 1
    assert writer(config).step() == 1


def test_writer_sweeps_an_unnamed_segment_a_dead_milter_left(config: Config) -> None:
    config.milter_journal.mkdir(parents=True)
    litter = config.milter_journal / "00000000000000000001-1.new"
    litter.write_bytes(b"")
    old = time.time() - 2 * journal.STALE_NEW_SECONDS
    os.utime(litter, (old, old))
    fresh = config.milter_journal / "00000000000000000002-1.new"
    fresh.write_bytes(b"")  # a milter naming its segment right now: kept
    writer(config).step()
    assert not litter.exists() and fresh.exists()
