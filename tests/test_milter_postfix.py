"""The tracking milter inside a real private Postfix, over real SMTP (issue 3).

What the fake remote MX receives is the proof: the envelope sender and every
DSN parameter (MAIL FROM RET/ENVID, RCPT TO NOTIFY/ORCPT). Bounces travel back
through Postfix to the real bounce pipe and land in the real SQLite store.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import pytest

from bouncetrack.harness.fakemx import Transaction
from tests.storeview import rows

pytestmark = pytest.mark.postfix

STACK_OPTIONS = {"with_milter": True, "pipe": "real"}


@pytest.fixture(scope="module", autouse=True)
def route_untracked_to_fake_mx(stack: Any) -> None:
    # Bounces for untracked senders go back to them: let the fake MX receive those too.
    stack.postfix.set_routes({**stack.postfix.routes, "untracked.test": stack.postfix.routes["remote.test"],
                              "tracked.test": stack.postfix.routes["remote.test"]})


@pytest.fixture(autouse=True)
def clean(stack: Any) -> None:
    stack.reset()
    if not stack.milter_running():
        stack.start_milter()


def events(stack: Any) -> list[sqlite3.Row]:
    return rows(stack.db_path)


def new_events(stack: Any, before: int, count: int, timeout: float = 30) -> list[sqlite3.Row]:
    found: list[sqlite3.Row] = stack.wait_for(lambda: (e := events(stack)[before:]) and len(e) >= count and e, timeout)
    return found


def delivered_to(stack: Any, rcpt: str, timeout: float = 20) -> Transaction:
    def done(f: Any) -> list[Transaction]:
        # Complete: DATA done, or this recipient refused (no DATA follows for it alone).
        return [t for t in f.for_rcpt(rcpt) if t.data is not None or not t.rcpt(rcpt).accepted]

    txs: list[Transaction] = stack.fakemx.wait_for(done, timeout)
    return txs[-1]


def test_tracked_one_recipient(stack: Any) -> None:
    before = len(events(stack))
    r = stack.send("info@tracked.test", ["unknown-one@remote.test"],
                   mail_options=["RET=FULL", "ENVID=client-envid"], rcpt_options=["NOTIFY=NEVER"])
    assert r.accepted, r
    tx = delivered_to(stack, "unknown-one@remote.test")
    local, _, domain = tx.mail_from.partition("@")
    assert domain == "bounce.test" and local.startswith("b+")
    token = local[2:]
    assert tx.mail_params["RET"] == "HDRS" and tx.mail_params["ENVID"] == token
    rcpt = tx.rcpt("unknown-one@remote.test")
    assert rcpt is not None
    assert rcpt.params["NOTIFY"] == "FAILURE,DELAY"  # NEVER overridden
    assert rcpt.params["ORCPT"] == "rfc822;unknown-one@remote.test"  # added
    (event,) = new_events(stack, before, 1)
    assert event["token"] == token and event["token_status"] == "valid"
    assert (event["recipient"], event["type"], event["reason"], event["hard"]) == (
        "unknown-one@remote.test", "bounce", "userunknown", 1)
    assert event["domain"] == "tracked.test" and event["original_sender"] == "info@tracked.test"


def test_tracked_several_recipients_each_bounce_attributed(stack: Any) -> None:
    before = len(events(stack))
    rcpts = ["unknown-a@remote.test", "ok-b@remote.test", "unknown-c@remote.test"]
    r = stack.send("news@tracked.test", rcpts,
                   rcpt_options={"unknown-c@remote.test": ["ORCPT=rfc822;Alias-C@list.test"]})
    assert r.accepted, r
    tx = delivered_to(stack, "ok-b@remote.test")
    assert [x.params["NOTIFY"] for x in tx.rcpts] == ["FAILURE,DELAY"] * 3
    rcpt_c = tx.rcpt("unknown-c@remote.test")
    assert rcpt_c is not None
    assert rcpt_c.params["ORCPT"] == "rfc822;Alias-C@list.test"  # kept
    # The message record carries Postfix's queue id: the milter asks for the macro
    # ``i`` at end of message only (setsymlist), and Postfix sends it there.
    assert tx.data is not None
    received = re.search(rb"\(Postfix\) with E?SMTP id ([0-9A-Za-z]+)", tx.data)
    assert received is not None, tx.data[:400]
    token = tx.mail_from[2:].partition("@")[0]

    def row() -> Any:
        with sqlite3.connect(stack.db_path) as db:
            return db.execute("SELECT queue_id FROM messages WHERE token = ?", (token,)).fetchone()

    stack.wait_for(lambda: row() is not None, 10)  # the journal writer's lag (issue 20)
    (queue_id,) = row()
    assert queue_id == received.group(1).decode()
    got = new_events(stack, before, 2)
    assert sorted((e["recipient"], e["type"], e["flagged"]) for e in got) == [
        ("unknown-a@remote.test", "bounce", 0), ("unknown-c@remote.test", "bounce", 0)]
    assert len({e["token"] for e in got}) == 1 and len({e["message_pk"] for e in got}) == 1


def test_tracked_return_path_header_is_removed(stack: Any) -> None:
    data = ("From: info@tracked.test\r\nTo: ok-rp@remote.test\r\nReturn-Path: <elsewhere@tracked.test>\r\n"
            "Subject: rp\r\n\r\nbody\r\n")
    assert stack.send("info@tracked.test", ["ok-rp@remote.test"], data).accepted
    tx = delivered_to(stack, "ok-rp@remote.test")
    assert tx.mail_from.startswith("b+")
    assert tx.data is not None
    assert b"Return-Path:" not in tx.data


def test_untracked_envelope_and_dsn_arrive_unchanged(stack: Any) -> None:
    r = stack.send("info@untracked.test", ["ok-u@remote.test"], mail_options=["RET=FULL", "ENVID=xyz-1"],
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig-u@remote.test"])
    assert r.accepted, r
    tx = delivered_to(stack, "ok-u@remote.test")
    assert tx.mail_from == "info@untracked.test"
    assert (tx.mail_params["RET"], tx.mail_params["ENVID"]) == ("FULL", "xyz-1")
    rcpt = tx.rcpt("ok-u@remote.test")
    assert rcpt is not None
    assert (rcpt.params["NOTIFY"], rcpt.params["ORCPT"]) == ("SUCCESS,FAILURE", "rfc822;orig-u@remote.test")


def test_untracked_notify_never_produces_no_bounce(stack: Any) -> None:
    # Control: without NOTIFY=NEVER the sender gets its bounce back...
    assert stack.send("control@untracked.test", ["unknown-ctl@remote.test"]).accepted
    delivered_to(stack, "control@untracked.test", timeout=30)
    # ...with it, nothing comes back, though the recipient was rejected the same way.
    assert stack.send("quiet@untracked.test", ["unknown-never@remote.test"], rcpt_options=["NOTIFY=NEVER"]).accepted
    delivered_to(stack, "unknown-never@remote.test")
    stack.postfix.wait_queue_empty(30)
    time.sleep(2)
    stack.postfix.flush()
    time.sleep(1)
    assert stack.fakemx.for_rcpt("quiet@untracked.test") == []
    assert all(e["recipient"] != "unknown-never@remote.test" for e in events(stack))


def test_untracked_return_path_header_moves_the_bounce_address(stack: Any) -> None:
    data = ("From: info@untracked.test\r\nTo: unknown-rp@remote.test\r\n"
            "Return-Path: <bounces-here@untracked.test>\r\nSubject: rp\r\n\r\nbody\r\n")
    assert stack.send("info@untracked.test", ["unknown-rp@remote.test"], data, mail_options=["RET=FULL"]).accepted
    tx = delivered_to(stack, "unknown-rp@remote.test")
    assert tx.mail_from == "bounces-here@untracked.test" and tx.mail_params.get("RET") == "FULL"
    bounce = delivered_to(stack, "bounces-here@untracked.test", timeout=30)
    assert bounce.mail_from == ""  # a bounce, with the null sender


def test_untracked_return_path_in_another_tenants_domain_is_refused(stack: Any) -> None:
    """Issue 16: MAIL FROM untracked.test with a Return-Path at tracked.test is refused
    (replies.RETURN_PATH_FOREIGN), after Postfix's own sender checks had passed."""
    data = ("From: news@untracked.test\r\nTo: ok-foreign-rp@remote.test\r\n"
            "Return-Path: <victim@tracked.test>\r\nSubject: rp\r\n\r\nbody\r\n")
    r = stack.send("news@untracked.test", ["ok-foreign-rp@remote.test"], data)
    assert r.data is not None and r.data[0] == 550, r
    assert r.data[1].startswith("5.7.1 Return-Path must be in the sender's own domain"), r
    time.sleep(1)
    assert stack.fakemx.for_rcpt("ok-foreign-rp@remote.test") == []


def test_locally_submitted_mail_goes_through_the_milter(stack: Any) -> None:
    proc = stack.send_local("info@tracked.test", ["ok-local@remote.test"])
    assert proc.returncode == 0, proc.stderr
    tx = delivered_to(stack, "ok-local@remote.test", timeout=30)
    assert tx.mail_from.startswith("b+") and tx.mail_from.endswith("@bounce.test")
    rcpt = tx.rcpt("ok-local@remote.test")
    assert rcpt is not None
    assert rcpt.params["NOTIFY"] == "FAILURE,DELAY"


def test_milter_stopped_tempfails_and_restarted_milter_flows(stack: Any) -> None:
    stack.kill_milter()
    r = stack.send("info@tracked.test", ["ok-down@remote.test"])
    codes = [r.mail[0] if r.mail else None, *(c for c, _ in r.rcpts.values()), r.data[0] if r.data else None]
    assert any(c is not None and 400 <= c < 500 for c in codes), r
    assert not r.accepted
    time.sleep(1)
    assert stack.fakemx.for_rcpt("ok-down@remote.test") == []  # not sent untracked either
    stack.start_milter()
    r = stack.send("info@tracked.test", ["ok-down@remote.test"])  # the client's retry
    assert r.accepted, r
    assert delivered_to(stack, "ok-down@remote.test").mail_from.startswith("b+")


def test_sighup_reloads_configuration_without_restart(stack: Any) -> None:
    original = stack.config_path.read_text()
    pid = stack._milter.pid
    try:
        stack.config_path.write_text(original.replace(
            "untracked.test:\n    tracking: false", "untracked.test:\n    tracking: true"))
        stack.reload_milter()
        time.sleep(1.5)
        assert stack.send("info@untracked.test", ["ok-hup@remote.test"]).accepted
        assert delivered_to(stack, "ok-hup@remote.test").mail_from.startswith("b+")
        # An invalid file on SIGHUP is refused; the milter keeps running on the last good one.
        stack.config_path.write_text(original + "\nnot_a_key: 1\n")
        stack.reload_milter()
        time.sleep(1.5)
        assert stack.milter_running() and stack._milter.pid == pid
        assert stack.send("info@untracked.test", ["ok-hup2@remote.test"]).accepted
        assert delivered_to(stack, "ok-hup2@remote.test").mail_from.startswith("b+")
    finally:
        stack.config_path.write_text(original)
        stack.reload_milter()
        time.sleep(1.5)
