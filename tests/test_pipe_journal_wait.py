"""A bounce that comes before the milter's journal writer has stored its message (issue 20,
issue 21), in a record the pipe cannot read from the journal itself (past the scan limit;
a readable one it stores at once: tests/test_milter_journal.py): the pipe waits for the
writer a moment (``process.JOURNAL_WAIT_SECONDS``) and stores the bounce at once; past the
wait it exits 75 (tests/test_milter_journal.py's
test_pipe_tempfails_while_an_unreadable_record_is_only_in_the_journal).

In-process calls of the pipe's main with the message handed in; a real journal, writer,
SQLite store and configuration.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bouncetrack.bounce_pipe import process
from bouncetrack.bounce_pipe.main import main as pipe_main
from bouncetrack.core.config import Config
from bouncetrack.milter import journal
from bouncetrack.milter.journal import JournalAppender
from bouncetrack.store.base import RecipientRecord
from bouncetrack.core.tokens import load_keyring, mint, new_token_id, verp_address
from tests import mailgen
from tests.configkit import write_config
from tests.test_milter_journal import message, writer
from tests.test_pipe import events


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", str(cache))
    return write_config(tmp_path, "domains:\n  tracked.test: {tracking: true}\n")


def test_pipe_waits_for_the_journal_writer_when_it_cannot_read_the_record(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long wait, so that a loaded machine cannot make the writer below come too late;
    # the pipe stops waiting as soon as the record is in the store.
    monkeypatch.setattr(process, "JOURNAL_WAIT_SECONDS", 60.0)
    token_id = new_token_id()
    token = mint(load_keyring(config), token_id)
    appender = JournalAppender(config.milter_journal)
    appender.append(journal.encode(replace(message(token_id, token, 1), recipients=(
        RecipientRecord("unknown-1@remote.test", "rfc822;unknown-1@remote.test", None),))))
    asked = threading.Event()
    real = journal.pending_record

    def pending_record(directory: Path, tok: str) -> tuple[bool, None]:
        found, _ = real(directory, tok)
        asked.set()  # the pipe found it only in the journal: now the writer moves it
        return found, None  # as for a record the pipe cannot read (past the scan limit)

    monkeypatch.setattr(journal, "pending_record", pending_record)
    moved: list[int] = []
    mover = threading.Thread(target=lambda: moved.append(writer(config).step() if asked.wait(60) else 0))
    mover.start()
    verp = verp_address(config, token)
    said = io.StringIO()
    saved, sys.stderr = sys.stderr, said
    try:
        code = pipe_main(["--config", str(config.path), verp, "MAILER-DAEMON"], started=time.time(),
                         raw=mailgen.dsn(verp, "unknown-1@remote.test", original_recipient="unknown-1@remote.test"))
    finally:
        sys.stderr = saved
        mover.join(60)
        appender.close()
    assert moved == [1]
    assert code == 0, said.getvalue()  # stored now, not queued by Postfix for a second delivery
    assert "still in the milter's journal" not in said.getvalue()
    (event,) = events(config)
    assert event["token_status"] == "valid" and event["recipient"] == "unknown-1@remote.test"


def test_the_pipe_waits_longer_than_the_writer_pauses() -> None:
    # The writer pauses longer under load (bigger batches, issue 20): a bounce that comes
    # right after its message must still find it stored within the pipe's wait.
    assert journal.pause_after(0) == journal.IDLE_SECONDS
    assert journal.pause_after(journal.BUSY_RECORDS - 1) == journal.IDLE_SECONDS
    assert journal.pause_after(journal.BUSY_RECORDS) == journal.BUSY_SECONDS > journal.IDLE_SECONDS
    assert process.JOURNAL_WAIT_SECONDS >= max(journal.IDLE_SECONDS, journal.BUSY_SECONDS) + 0.5
