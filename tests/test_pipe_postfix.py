"""The bounce pipe behind the real Postfix (issue 4): what Postfix does with each outcome.

Delay and success notices are stored as such (not bounces); forged tokens are
stored, never attributed; a locked store makes the pipe exit 75 so Postfix keeps
the bounce in its queue, and the retry stores it exactly once.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from bouncetrack.core.config_loader import load_config
from bouncetrack.store import open_store
from bouncetrack.store.base import MessageRecord, RecipientRecord
from bouncetrack.core.tokens import load_keyring, mint, new_token_id, verp_address
from bouncetrack.bounce_pipe.client import DEFAULT_CACHE_DIR as CACHE_DIR, NO_SERVER
from bouncetrack.metrics import pipe_fallback
from tests.storeview import rows

pytestmark = pytest.mark.postfix

STACK_OPTIONS = {
    "with_milter": True,
    "pipe": "real",
    # Delay notices at the first deferral; the pipe gives up quickly on a locked store.
    "delay_warning_time": "1s",
    "config_extra": {"pipe": {"deadline_seconds": 4}},
}


@pytest.fixture(autouse=True)
def clean(stack: Any) -> None:
    stack.reset()


def events(stack: Any) -> list[sqlite3.Row]:
    return rows(stack.db_path)


def wait_events(stack: Any, predicate: Any, timeout: float = 30, flush: bool = True) -> list[sqlite3.Row]:
    found: list[sqlite3.Row] = stack.wait_for(lambda: [e for e in events(stack) if predicate(e)], timeout,
                                              flush_every=2.0 if flush else None)
    return found


def record_message(stack: Any, rcpt: str) -> str:
    """A message as the milter would have recorded it; returns its VERP address."""
    config = load_config(stack.config_path)
    token_id = new_token_id()
    token = mint(load_keyring(config, create=False), token_id)
    verp = verp_address(config, token)
    store = open_store(config.store_url)
    store.record_message(MessageRecord(token_id, token, None, "<m@tracked.test>", "tracked.test", "info@tracked.test",
                                       verp, None, None, (RecipientRecord(rcpt, f"rfc822;{rcpt}", None),), time.time()))
    store.close()
    return verp


def test_delay_notice_is_stored_as_delay_not_bounce(stack: Any) -> None:
    assert stack.send("info@tracked.test", ["full-slow@remote.test"]).accepted
    # No queue flushes here: a flush re-queues the message before qmgr's delay-warning check.
    (event,) = wait_events(stack, lambda e: e["recipient"] == "full-slow@remote.test", flush=False)
    assert (event["type"], event["hard"], event["action"]) == ("delay", 0, "delayed")
    assert event["status"].startswith("4.") and event["token_status"] == "valid"
    stack.postfix.delete_all()  # the original stays deferred for an hour otherwise


def test_success_notice_is_stored_as_delivered(stack: Any) -> None:
    # Tracked mail never asks for SUCCESS; a sender using a VERP address directly can.
    # Final delivery here (discard(8)) so that Postfix itself reports success: a remote
    # that supports DSN takes that duty over (RFC 3461 §4.1).
    stack.postfix.set_routes({**stack.postfix.routes, "sink.test": "discard:"})
    verp = record_message(stack, "ok-success@sink.test")
    assert stack.send(verp, ["ok-success@sink.test"], rcpt_options=["NOTIFY=SUCCESS"]).accepted
    (event,) = wait_events(stack, lambda e: e["recipient"] == "ok-success@sink.test")
    assert (event["type"], event["hard"], event["token_status"]) == ("delivered", 0, "valid")


def test_forged_token_over_smtp_is_rejected_at_rcpt_time(stack: Any) -> None:
    # Issue 6: the milter refuses forged VERP recipients before Postfix queues them
    # (bouncetrack/milter/bounce_rcpt.py). The pipe's own handling of a forged token
    # (stored, never attributed) is tested without a milter in front in test_pipe.py.
    verp = record_message(stack, "victim@remote.test")
    local, domain = verp.split("@")
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    report = (f"From: mailer-daemon@evil.test\r\nTo: {forged}\r\nSubject: Undelivered\r\n\r\n"
              "550 5.1.1 <victim@remote.test>: user unknown\r\n")
    result = stack.send("", [forged], report)
    assert not result.accepted
    assert result.rcpts[forged][0] == 550 and "5.1.1" in result.rcpts[forged][1]
    assert not stack.postfix.queue()


def test_store_locked_bounce_stays_queued_then_is_stored_once(stack: Any) -> None:
    # The milter must record the message first, so the store is locked only once the
    # message is queued: the remote MX defers it, then rejects it for good.
    verdict = {"reply": "451 4.3.2 try again later"}
    stack.fakemx.rule = lambda a: verdict["reply"] if a.startswith("locked-") else None
    try:
        assert stack.send("info@tracked.test", ["locked-x@remote.test"]).accepted
        stack.fakemx.wait_for(lambda f: f.for_rcpt("locked-x@remote.test"), 20)
        lock = sqlite3.connect(stack.db_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            verdict["reply"] = "550 5.1.1 <{addr}>: user unknown".replace("{addr}", "locked-x@remote.test")
            stack.postfix.flush()
            # The bounce reaches the pipe, which cannot store it: exit 75, Postfix defers it.
            stack.wait_for(lambda: "bouncepipe" in stack.postfix.log_text()
                           and "status=deferred" in "".join(l for l in stack.postfix.log_text().splitlines()
                                                            if "relay=bouncepipe" in l), 60)
            assert stack.postfix.queue(), "the bounce must still be in Postfix's queue"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        got = wait_events(stack, lambda e: e["recipient"] == "locked-x@remote.test" and e["type"] == "bounce", 60)
        stack.postfix.wait_queue_empty(30)
        stack.postfix.flush()
        time.sleep(1)
        assert len([e for e in events(stack) if e["recipient"] == "locked-x@remote.test"
                    and e["type"] == "bounce"]) == 1
        assert got[0]["token_status"] == "valid" and got[0]["reason"] == "userunknown"
    finally:
        stack.fakemx.rule = None


def test_bounces_go_through_the_pipe_server_and_survive_its_absence(stack: Any) -> None:
    # As deployed: pipe(8) starts the pipe client, which hands the bounce to the warm
    # server (bouncetrack/bounce_pipe/server.py); without the server, the client runs
    # the full pipe itself.
    assert stack.pipe_server and "bounce_pipe/client.py" in " ".join(stack.postfix.pipe_argv or [])
    assert stack.send("info@tracked.test", ["unknown-via-server@remote.test"]).accepted
    wait_events(stack, lambda e: e["recipient"] == "unknown-via-server@remote.test" and e["type"] == "bounce")
    assert "bounce handled: exit 0" in stack.pipe_server_log.read_text()
    stack.kill_pipe_server()  # its socket file stays behind: connections are refused
    fallbacks_before = pipe_fallback.read_counts(CACHE_DIR)[NO_SERVER]
    try:
        assert stack.send("info@tracked.test", ["unknown-no-server@remote.test"]).accepted
        (event,) = wait_events(stack, lambda e: e["recipient"] == "unknown-no-server@remote.test"
                               and e["type"] == "bounce")
        assert event["token_status"] == "valid" and event["reason"] == "userunknown"
        # ... and says so, for bouncetrack_pipe_fallbacks_total (the pipe's cache directory)
        assert pipe_fallback.read_counts(CACHE_DIR)[NO_SERVER] > fallbacks_before
    finally:
        stack.start_pipe_server()
