"""The harness itself, against a real private Postfix over real SMTP (no milter, files pipe)."""

from __future__ import annotations

import os
import pwd
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.harness.postfix import pid_alive
from bouncetrack.harness.stack import Stack, unavailable_reason

pytestmark = pytest.mark.postfix

STACK_OPTIONS = {"with_milter": False, "pipe": "files"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_dsn_parameters_reach_the_fake_mx(stack: Stack) -> None:
    envid = "xyz"
    res = stack.send(
        "sender@untracked.test", ["ok@remote.test"],
        mail_options=["RET=FULL", f"ENVID={envid}"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;ok@remote.test"],
    )
    assert res.accepted, res
    t = stack.fakemx.wait_for(
        lambda mx: [t for t in mx.delivered()
                    if t.rcpt("ok@remote.test") and t.mail_params.get("ENVID") == envid], 15)[0]
    assert t.mail_from == "sender@untracked.test"
    assert t.mail_params["RET"] == "FULL"
    rcpt = t.rcpt("ok@remote.test")
    assert rcpt is not None and rcpt.accepted
    assert rcpt.params["NOTIFY"] == "SUCCESS,FAILURE"
    assert rcpt.params["ORCPT"] == "rfc822;ok@remote.test"
    assert t.data is not None and b"Hello from the bouncetrack harness." in t.data


def test_rejected_recipient_bounce_is_piped(stack: Stack) -> None:
    sender = f"{uniq('x')}@bounce.test"
    res = stack.send(sender, ["unknown-1@remote.test"])
    assert res.accepted, res
    item = stack.wait_for(
        lambda: [b for b in stack.bounces_in_spool() if b.recipient == sender], 20)[0]
    assert item.argv == [sender, "MAILER-DAEMON"]  # pipe(8): null sender → MAILER-DAEMON
    # Made by this Postfix's bounce service: no SMTP client (issue 16: what the pipe trusts).
    assert item.client_address == ""
    assert item.uid == pwd.getpwnam("bouncetrack").pw_uid  # never root
    assert b"multipart/report" in item.data and b"report-type=delivery-status" in item.data
    assert b"Final-Recipient: rfc822; unknown-1@remote.test" in item.data
    assert b"Status: 5.1.1" in item.data
    # The same report handed over by an SMTP client (anyone on the Internet): its address.
    forged = f"{uniq('y')}@bounce.test"
    assert stack.send("", [forged], item.data).accepted
    relayed = stack.wait_for(lambda: [b for b in stack.bounces_in_spool() if b.recipient == forged], 20)[0]
    assert relayed.client_address == "127.0.0.1"


def test_notify_never_produces_no_bounce(stack: Stack) -> None:
    sender = f"{uniq('never')}@bounce.test"
    rcpt = "unknown-2@remote.test"
    res = stack.send(sender, [rcpt], rcpt_options=["NOTIFY=NEVER"])
    assert res.accepted and res.queue_id, res
    qid = res.queue_id
    # Postfix tried, the fake MX refused, and the message left the queue without a DSN.
    stack.wait_for(lambda: f"{qid}: removed" in stack.postfix.log_text(), 20)
    assert f"{qid}: to=<{rcpt}>" in stack.postfix.log_text()
    assert "status=bounced" in stack.postfix.log_text()
    stack.postfix.wait_queue_empty(10)
    assert not [b for b in stack.bounces_in_spool() if b.recipient == sender]


def test_locally_submitted_mail_is_delivered_and_bounced(stack: Stack) -> None:
    ok = f"{uniq('ok-local')}@remote.test"
    proc = stack.send_local("someone@untracked.test", [ok], envid="loc1", ret="HDRS")
    assert proc.returncode == 0, proc.stderr
    t = stack.fakemx.wait_for(lambda mx: [t for t in mx.delivered() if t.rcpt(ok)], 15)[0]
    assert t.mail_from == "someone@untracked.test"
    assert t.mail_params.get("ENVID") == "loc1" and t.mail_params.get("RET") == "HDRS"

    sender = f"{uniq('local')}@bounce.test"
    proc = stack.send_local(sender, ["unknown-3@remote.test"])
    assert proc.returncode == 0, proc.stderr
    stack.wait_for(lambda: [b for b in stack.bounces_in_spool() if b.recipient == sender], 20)


def test_soft_failure_becomes_bounce_with_short_queue_lifetime(make_stack: Any) -> None:
    st: Stack = make_stack(with_milter=False, pipe="files", maximal_queue_lifetime="0")
    sender = f"{uniq('soft')}@bounce.test"
    res = st.send(sender, ["full-1@remote.test"])
    assert res.accepted, res
    item = st.wait_for(lambda: [b for b in st.bounces_in_spool() if b.recipient == sender], 20)[0]
    assert b"Status: 4.2.2" in item.data


def _group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # fields after "comm)": state ppid pgrp ...
            out.append(int(stat.parent.name))
    return out


def test_teardown_leaves_nothing_running_even_after_an_interrupt() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    st = Stack(with_milter=False, pipe="files")
    with pytest.raises(KeyboardInterrupt):
        with st:
            pid = st.postfix.master_pid()
            assert pid is not None and pid_alive(pid)
            assert st.send("a@untracked.test", ["ok@remote.test"]).accepted
            port = st.fakemx.port
            raise KeyboardInterrupt
    assert st.postfix.master_pid() is None
    assert pid is not None and not pid_alive(pid)
    assert _group_members(pid) == []
    assert not st.workdir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
