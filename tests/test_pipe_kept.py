"""The pipe's code in a long-running process (issue 21): store and configuration kept
across bounces (``process.keep_stores_open``), every guarantee of the one-shot pipe kept.

In-process calls of :func:`bouncetrack.bounce_pipe.main.main` with the message handed in,
as a long-running transport makes them; real SQLite files and configuration files.
"""

from __future__ import annotations

import io
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bouncetrack.bounce_pipe import process
from bouncetrack.bounce_pipe.main import main as pipe_main
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config
from bouncetrack.core.tokens import rotate_key
from tests import mailgen
from tests.configkit import write_config
from tests.test_pipe import record

BODY = """\
    pipe: {deadline_seconds: 30}
    domains:
      tracked.test: {tracking: true}
"""


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", str(cache))
    process.keep_stores_open()
    try:
        yield write_config(tmp_path, BODY)
    finally:
        process.close_kept_stores()
        process._Kept.on = False
        process._Kept.runtime = None


def bounce(config: Config, recipient: str, data: bytes, started: float | None = None) -> tuple[int, str]:
    said = io.StringIO()
    saved, sys.stderr = sys.stderr, said
    try:
        code = pipe_main(["--config", str(config.path), recipient, "MAILER-DAEMON"], raw=data,
                         started=time.time() if started is None else started)
    finally:
        sys.stderr = saved
    return code, said.getvalue()


def events(db_path: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT recipient, type, token_status FROM events ORDER BY id").fetchall()


def db_of(config: Config) -> str:
    return config.store_url.removeprefix("sqlite:///")


def test_many_bounces_share_one_store_connection_and_each_is_stored(config: Config) -> None:
    kept = None
    for i in range(12):
        rcpt = f"unknown-{i}@remote.test"
        verp, _ = record(config, rcpt)
        code, said = bounce(config, verp, mailgen.dsn(verp, rcpt))
        assert code == 0, said
        (store,) = process._Kept.stores.values()
        assert kept is None or store is kept  # the same connection serves every bounce
        kept = store
    assert events(db_of(config)) == [(f"unknown-{i}@remote.test", "bounce", "valid") for i in range(12)]


def test_a_changed_configuration_applies_at_the_next_bounce(config: Config, tmp_path: Path) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    assert bounce(config, verp, mailgen.dsn(verp, "unknown-1@remote.test"))[0] == 0
    # Another store: the next bounce goes there (its message is not in it: token status unknown).
    other = tmp_path / "other.db"
    text = config.path.read_text().replace(f"sqlite:///{tmp_path}/bt.db", f"sqlite:///{other}")
    config.path.write_text(text)
    os.utime(config.path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a new mtime, whatever the clock's grain
    verp2, _ = record(config, "unknown-2@remote.test")
    code, said = bounce(config, verp2, mailgen.dsn(verp2, "unknown-2@remote.test"))
    assert code == 0, said
    assert list(process._Kept.stores) == [f"sqlite:///{other}"]  # the old one closed, one kept at a time
    assert events(str(other)) == [("unknown-2@remote.test", "bounce", "unknown")]
    assert len(events(db_of(config))) == 1


def test_a_rotated_key_applies_at_the_next_bounce(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    assert bounce(config, verp, mailgen.dsn(verp, "unknown-1@remote.test"))[0] == 0
    rotate_key(config, time.time())  # atomic renames: new inodes for both key files
    verp2, _ = record(config, "unknown-2@remote.test")  # minted with the new key
    code, said = bounce(config, verp2, mailgen.dsn(verp2, "unknown-2@remote.test"))
    assert code == 0, said
    assert events(db_of(config))[-1] == ("unknown-2@remote.test", "bounce", "valid")


def test_a_kept_store_that_fails_is_dropped_the_bounce_retried_and_stored_once(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    assert bounce(config, verp, mailgen.dsn(verp, "unknown-1@remote.test"))[0] == 0
    (store,) = process._Kept.stores.values()
    store._conn.close()  # its connection breaks behind its back
    verp2, _ = record(config, "unknown-2@remote.test")
    data = mailgen.dsn(verp2, "unknown-2@remote.test")
    code, said = bounce(config, verp2, data)
    assert code == 75, said  # not stored: Postfix keeps it and retries
    assert process._Kept.stores == {}
    code, said = bounce(config, verp2, data)  # the retry connects anew
    assert code == 0, said
    assert [e[0] for e in events(db_of(config))] == ["unknown-1@remote.test", "unknown-2@remote.test"]


def test_a_late_bounce_uses_a_store_of_its_own_with_what_is_left_of_its_deadline(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    late = time.time() - (load_config(config.path).pipe.deadline_seconds - 5)  # 5 s left: a 4 s lock timeout
    code, said = bounce(config, verp, mailgen.dsn(verp, "unknown-1@remote.test"), started=late)
    assert code == 0, said
    assert process._Kept.stores == {}  # opened and closed for it, not kept
    assert len(events(db_of(config))) == 1
