"""The bounce pipe as Postfix runs it: a new process, message on stdin, exit code.

Real SQLite files, real config files, the real classifier. The same pipe runs
behind the real Postfix in test_pipe_postfix.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bouncetrack.core.config import Config
from bouncetrack.store import open_store
from bouncetrack.store.base import MessageRecord, RecipientRecord
from bouncetrack.core.tokens import load_keyring, mint, new_token_id, verp_address
from tests import mailgen
from tests.configkit import write_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(
        tmp_path,
        f"""\
            pipe: {{deadline_seconds: 8}}
            domains:
              tracked.test:
                tracking: true
                forward: bounces@tracked.test
                webhook: {{url: "http://127.0.0.1:9/hook", secret: whsec_c2VjcmV0}}
              other.test:
                tracking: true
        """,
    )


def record(config: Config, *recipients: str, domain: str = "tracked.test") -> tuple[str, MessageRecord]:
    keyring = load_keyring(config)
    token_id = new_token_id()
    token = mint(keyring, token_id)
    message = MessageRecord(
        token_id=token_id,
        token=token,
        queue_id="4ABC",
        message_id="<orig-1@tracked.test>",
        sender_domain=domain,
        envelope_sender=f"info@{domain}",
        verp_sender=verp_address(config, token),
        dsn_ret=None,
        dsn_envid=None,
        recipients=tuple(RecipientRecord(r, f"rfc822;{r}", None) for r in recipients),
        created_at=time.time(),
    )
    store = open_store(config.store_url)
    store.record_message(message)
    store.close()
    return verp_address(config, token), message


def pipe_env(config: Config) -> dict[str, str]:
    """The environment of a pipe run: a private cache directory beside the config, so the
    second run in a test uses the config snapshot."""
    cache = config.path.parent / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "BOUNCETRACK_CACHE_DIR": str(cache)}


def run_pipe(config: Config, recipient: str, data: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(config.path), *extra, recipient, ""],
        input=data,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        env=pipe_env(config),
    )


def events(config: Config) -> list[sqlite3.Row]:
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM events ORDER BY id").fetchall()


def outbox(config: Config) -> list[sqlite3.Row]:
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM outbox ORDER BY id").fetchall()


def assert_clean_output(proc: subprocess.CompletedProcess[bytes]) -> None:
    # pipe(8): stdout goes into bounces and a leading "5.x.x" decides the outcome.
    assert proc.stdout == b""
    assert not proc.stderr[:1].isdigit()


def test_hard_bounce_is_stored_attributed_and_queued(config: Config) -> None:
    verp, message = record(config, "unknown-1@remote.test")
    proc = run_pipe(config, verp, mailgen.dsn(verp, "unknown-1@remote.test", original_recipient="unknown-1@remote.test"))
    assert proc.returncode == 0, proc.stderr
    assert_clean_output(proc)
    (event,) = events(config)
    assert event["type"] == "bounce" and event["hard"] == 1 and event["reason"] == "userunknown"
    assert event["status"] == "5.1.1" and event["recipient"] == "unknown-1@remote.test"
    assert event["token_status"] == "valid" and event["domain"] == "tracked.test" and not event["flagged"]
    assert event["original_message_id"] == "<orig-1@tracked.test>"
    assert event["queue_id"] == "4ABC"  # the original message's Postfix queue id (issue 15)
    assert sorted(j["channel"] for j in outbox(config)) == ["smtp", "webhook"]


def test_same_bounce_twice_is_stored_once(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    data = mailgen.dsn(verp, "unknown-1@remote.test")
    assert run_pipe(config, verp, data).returncode == 0
    assert run_pipe(config, verp, data).returncode == 0
    assert len(events(config)) == 1 and len(outbox(config)) == 2


def test_multi_recipient_message_attributes_each_recipient(config: Config) -> None:
    verp, _ = record(config, "a@remote.test", "unknown-b@remote.test", "full-c@remote.test")
    data = mailgen.dsn(
        verp,
        "unknown-b@remote.test",
        extra_recipients=(("full-c@remote.test", "4.2.2", "delayed"),),
        diagnostic="smtp; 452 4.2.2 <{rcpt}>: Mailbox full",
    )
    assert run_pipe(config, verp, data).returncode == 0
    got = {e["recipient"]: (e["type"], e["flagged"]) for e in events(config)}
    assert got == {"unknown-b@remote.test": ("bounce", 0), "full-c@remote.test": ("delay", 0)}


def test_report_recipient_disagreeing_with_token_is_flagged(config: Config) -> None:
    verp, _ = record(config, "someone@remote.test")
    assert run_pipe(config, verp, mailgen.dsn(verp, "forwarded-elsewhere@other.test")).returncode == 0
    (event,) = events(config)
    assert event["recipient"] == "someone@remote.test" and event["flagged"] == 1
    assert event["reported_recipient"] == "forwarded-elsewhere@other.test"


def test_delay_and_success_notifications_are_not_bounces(config: Config) -> None:
    verp, _ = record(config, "slow@remote.test")
    delayed = mailgen.dsn(verp, "slow@remote.test", status="4.4.1", action="delayed",
                          diagnostic="smtp; 451 4.4.1 connection timed out")
    assert run_pipe(config, verp, delayed).returncode == 0
    delivered = mailgen.dsn(verp, "slow@remote.test", status="2.0.0", action="delivered")
    assert run_pipe(config, verp, delivered).returncode == 0
    assert [(e["type"], e["hard"]) for e in events(config)] == [("delay", 0), ("delivered", 0)]


def test_forged_token_is_stored_but_never_attributed_or_forwarded(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    token = verp.split("+", 1)[1].split("@")[0]
    forged = verp.replace(token, ("b" if token[0] != "b" else "c") + token[1:])
    assert run_pipe(config, forged, mailgen.dsn(forged, "unknown-1@remote.test")).returncode == 0
    (event,) = events(config)
    assert event["token_status"] == "forged" and event["message_pk"] is None and event["domain"] is None
    assert outbox(config) == []


def test_missing_token_and_garbage(config: Config) -> None:
    proc = run_pipe(config, "postmaster@bounce.test", b"\x00\xff garbage \x80\r\n\r\n\xfe")
    assert proc.returncode == 0, proc.stderr
    assert_clean_output(proc)
    (event,) = events(config)
    assert (event["type"], event["token_status"]) == ("unknown", "missing")


def test_valid_token_for_a_message_we_never_recorded(config: Config) -> None:
    token = mint(load_keyring(config), new_token_id())
    verp = verp_address(config, token)
    assert run_pipe(config, verp, mailgen.dsn(verp, "x@remote.test")).returncode == 0
    (event,) = events(config)
    assert event["token_status"] == "unknown" and event["message_pk"] is None


def test_ten_megabyte_message(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    big = mailgen.dsn(verp, "unknown-1@remote.test").replace(
        b"--BOUNDARY--", b"--BOUNDARY\nContent-Type: text/plain\n\n" + (b"x" * 76 + b"\n") * 135_000 + b"--BOUNDARY--"
    )
    assert len(big) > 10_000_000
    proc = run_pipe(config, verp, big)
    assert proc.returncode == 0, proc.stderr
    assert events(config)[0]["reason"] == "userunknown"


def test_complaint_at_feedback_address_is_attributed_through_the_original(config: Config) -> None:
    verp, _ = record(config, "complainer@isp.test")
    report = mailgen.arf("fbl@bounce.test", verp, "complainer@isp.test")
    assert run_pipe(config, "fbl@bounce.test", report).returncode == 0
    (event,) = events(config)
    assert (event["type"], event["reason"], event["token_status"]) == ("complaint", "feedback", "valid")
    assert event["recipient"] == "complainer@isp.test" and event["domain"] == "tracked.test"


def test_microsoft_jmrp_complaint_is_attributed_to_the_complaining_mailbox(config: Config) -> None:
    # Outlook.com's JMRP: the original attached as sent (our VERP Return-Path), the
    # complaining mailbox in X-HmXmrOriginalRecipient, its To: a list address.
    verp, _ = record(config, "members@lists.example", "sam@hotmail.example")
    sample = (Path(__file__).parent / "samples" / "classifier" / "jmrp-attached.eml").read_bytes()
    report = sample.replace(b"b+tok@bounce.example.com", verp.encode())
    assert run_pipe(config, "fbl@bounce.test", report).returncode == 0
    (event,) = events(config)
    assert (event["type"], event["token_status"], event["domain"]) == ("complaint", "valid", "tracked.test")
    assert event["recipient"] == "sam@hotmail.example" and not event["flagged"]


def test_store_locked_exits_75_and_a_retry_stores_once(config: Config, tmp_path: Path) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    data = mailgen.dsn(verp, "unknown-1@remote.test")
    lock = sqlite3.connect(config.store_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    proc = run_pipe(config, verp, data)
    elapsed = time.monotonic() - started
    lock.execute("ROLLBACK")
    lock.close()
    assert proc.returncode == 75, proc.stderr
    assert_clean_output(proc)
    assert elapsed < 30  # bounded by the pipe's deadline, far below pipe(8)'s 1000 s
    assert run_pipe(config, verp, data).returncode == 0
    assert run_pipe(config, verp, data).returncode == 0
    assert len(events(config)) == 1


def test_unreadable_config_exits_75(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(tmp_path / "missing.yaml"), "b+x@bounce.test"],
        input=b"x",
        capture_output=True,
        cwd=ROOT,
    )
    assert proc.returncode == 75
    assert_clean_output(proc)


def test_store_directory_unwritable_exits_75(config: Config, tmp_path: Path) -> None:
    bad = Path(str(config.path).replace(".yaml", "-bad.yaml"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad.write_text(config.path.read_text().replace(f"sqlite:///{tmp_path}/bt.db", f"sqlite:///{blocker}/bt.db"))
    proc = subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(bad), "b+x@bounce.test", ""],
        input=b"Subject: x\n\nx\n",
        capture_output=True,
        cwd=ROOT,
    )
    assert proc.returncode == 75, proc.stderr


def test_complaint_that_names_nobody_is_not_flagged(config: Config) -> None:
    verp, _ = record(config, "complainer@isp.test")
    report = mailgen.arf("fbl@bounce.test", verp, "complainer@isp.test").replace(
        b"To: complainer@isp.test\n", b"To: undisclosed-recipients:;\n")
    assert run_pipe(config, "fbl@bounce.test", report).returncode == 0
    (event,) = events(config)
    assert event["type"] == "complaint" and event["recipient"] == "complainer@isp.test"
    assert event["flagged"] == 0


def test_deadline_firing_inside_the_error_handler_is_still_exit_75(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen under load: the store's busy timeout and the pipe's deadline run out together;
    # the alarm fired while the handler for the store error ran, and the pipe exited 1
    # (pipe(8) bounces the bounce) instead of 75.
    from bouncetrack.bounce_pipe import main as pipe_main

    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        if len(said) == 1:
            raise pipe_main._Deadline()  # the alarm, right inside the first handler

    monkeypatch.setattr(pipe_main, "say", say)
    code = pipe_main._main(["--config", str(config.path / "missing.yaml"), "b+x@bounce.test", ""], time.time(),
                           raw=b"Subject: x\r\n\r\nx\r\n")
    assert code == 75
    assert said[0].startswith("not stored") and said[1].startswith("deadline reached")
    assert signal.getsignal(signal.SIGALRM) is not pipe_main._on_alarm  # restored
