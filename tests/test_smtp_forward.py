"""SMTP forward of the original bounce: header building (injection-safe) and real
delivery through the outbox worker to an aiosmtpd sink, with the real SQLite store."""

from __future__ import annotations

import base64
import random
import uuid
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from bouncetrack.core.config import Config, DomainPolicy, OutboxConfig, PipeConfig, WebhookConfig
from bouncetrack.core.config_loader import load_config
from bouncetrack.forward.jobs import jobs_for
from bouncetrack.forward.smtp import build_forward, clean_value
from bouncetrack.forward.worker import WorkerStats, run_worker
from bouncetrack.harness.smtpsink import SmtpSink
from bouncetrack.harness.webhook_receiver import WebhookReceiver, free_port
from bouncetrack.store import open_store
from bouncetrack.store.base import BounceEvent
from bouncetrack.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
FORWARD = "bounces@example.com"
SECRET = "whsec_" + base64.b64encode(b"smtp-forward-test-key-0123456789").decode()

RAW = (
    b"Return-Path: <>\n"
    b"Delivered-To: b+aebagbafaydqqcikbmgq2dq4@bounce.example.com\n"
    b"X-Bounce-Type: delivered\n"  # forged by whoever sent the "bounce"
    b"X-Bounce-Reason: nothing\n"
    b"  to see here\n"
    b"Auto-Submitted: auto-replied\n"
    b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\n"
    b"Subject: Undelivered Mail Returned to Sender\n"
    b"To: b+aebagbafaydqqcikbmgq2dq4@bounce.example.com\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"\n"
    b"I'm sorry to have to inform you that your message could not be delivered.\n"
    b".a line starting with a dot\n"
    b"<bob@example.net>: 550 5.1.1 unknown user \xc3\xa9\n"
)


class FakeClock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def make_event(n: int = 0, **kw: object) -> BounceEvent:
    values: dict[str, object] = dict(
        event_id=uuid.uuid4().hex, type="bounce", hard=True, reason="userunknown", status="5.1.1",
        reply_code="550", diagnostic="smtp; 550 5.1.1 unknown user", recipient=f"bob{n}@example.net",
        reported_recipient=f"bob{n}@example.net", action="failed", remote_mta="dns; mx.example.net",
        domain="example.com", original_sender="news@example.com",
        original_message_id=f"<orig{n}@example.com>", token="aebagbafaydqqcikbmgq2dq4",
        token_status="valid", flagged=False, message_pk=None, received_at=T0, dedupe_key="r1",
    )
    values.update(kw)
    return BounceEvent(**values)  # type: ignore[arg-type]


def make_config(tmp_path: Path, smtp_port: int, webhook_url: str | None = None) -> Config:
    policy = DomainPolicy(
        name="example.com",
        forward=FORWARD,
        webhook=WebhookConfig(url=webhook_url, secret=SECRET) if webhook_url else None,
    )
    return Config(
        path=tmp_path / "bt.yaml", bounce_domain="bounce.example.com", verp_prefix="b",
        secret_file=tmp_path / "verp.key", key_grace_period_seconds=0.0,
        store_url=f"sqlite:///{tmp_path}/bt.db", milter_socket=tmp_path / "m.sock",
        pipe=PipeConfig(), outbox=OutboxConfig(smtp_host="127.0.0.1", smtp_port=smtp_port),
        domains={"example.com": policy}, default=DomainPolicy(name="default"),
    )


def run_once(config: Config, store: SQLiteStore, clock: FakeClock) -> WorkerStats:
    return run_worker(config, store, once=True, clock=clock, sleep=lambda s: None,
                      rng=random.Random(2), handle_signals=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "bt.db"))
    yield s
    s.close()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def store_report(store: SQLiteStore, config: Config, events: list[BounceEvent], raw: bytes = RAW) -> None:
    store.store_report(events, raw, jobs_for(events, config.policy_for("example.com"), now=T0), events[0].dedupe_key)


# --- building the forward ------------------------------------------------------------


def test_build_forward_headers_and_body() -> None:
    out = build_forward(RAW, make_event())
    assert b"\n" not in out.replace(b"\r\n", b"")  # CRLF only, no bare LF
    msg = message_from_bytes(out)
    assert msg.get_all("X-Bounce-Type") == ["bounce"]  # the forged one is gone
    assert msg.get_all("X-Bounce-Reason") == ["userunknown"]
    assert msg["X-Bounce-Severity"] == "hard"
    assert msg["X-Bounce-Status"] == "5.1.1"
    assert msg["X-Bounce-Recipient"] == "bob0@example.net"
    assert msg["X-Bounce-Message-ID"] == "<orig0@example.com>"
    assert msg.get_all("Auto-Submitted") == ["auto-generated"]  # RFC 3834: once
    assert msg["X-Bouncetrack-Forwarded"] == "1"
    assert msg["Return-Path"] is None
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Delivered-To"] and msg["From"] and msg["To"]
    body = out.split(b"\r\n\r\n", 1)[1]
    assert body == RAW.split(b"\n\n", 1)[1].replace(b"\n", b"\r\n")  # byte for byte (8-bit kept)


def test_header_injection_is_neutralised() -> None:
    event = make_event(
        recipient="bob@example.net\r\nBcc: victim@evil.example",
        original_message_id="<x@y>\nX-Injected: yes\r\n\r\nbody",
        reason="userunknown\x00\x1b[31m",
        status="5.1.1\rSubject: pwned",
        type="bounce\n",
    )
    out = build_forward(RAW, event)
    msg = message_from_bytes(out)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert msg.get_all("Subject") == ["Undelivered Mail Returned to Sender"]
    assert msg["X-Bounce-Recipient"] == "bob@example.net Bcc: victim@evil.example"
    assert msg["X-Bounce-Message-ID"] == "<x@y> X-Injected: yes body"
    assert msg["X-Bounce-Reason"] == "userunknown [31m"
    assert msg["X-Bounce-Type"] == "bounce"
    headers = out.split(b"\r\n\r\n", 1)[0]
    assert not any(0 <= c < 32 and c not in (9,) for c in headers.replace(b"\r\n", b""))


def test_non_ascii_values_are_rfc2047_encoded() -> None:
    value = clean_value("jörg@exämple.de")
    assert value.isascii() and value.startswith("=?utf-8?")
    assert str(make_header(decode_header(value))) == "jörg@exämple.de"
    assert len(clean_value("x" * 5000)) == 256


def test_message_without_header_section() -> None:
    out = build_forward(b"just some text\nno headers\n", make_event())
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"X-Bounce-Type: bounce" in head
    assert body == b"just some text\r\nno headers\r\n"


# --- real delivery ---------------------------------------------------------------------


def test_forward_arrives_at_sink_with_null_sender(tmp_path: Path, store: SQLiteStore, sink: SmtpSink) -> None:
    config = make_config(tmp_path, sink.port)
    a = make_event(1, hard=False, type="bounce", reason="mailboxfull", status="4.2.2")
    b = make_event(2)
    store_report(store, config, [a, b])
    [job] = store.jobs()
    assert (job.channel, job.event_id, job.target) == ("smtp", b.event_id, FORWARD)

    stats = run_once(config, store, FakeClock())
    assert stats.delivered == 1
    assert sink.wait_for(1)
    [mail] = sink.messages
    assert mail.mail_from == "<>"  # MAIL FROM:<> - can never bounce back into a loop
    assert mail.rcpt_tos == (FORWARD,)
    assert "BODY=8BITMIME" in mail.mail_options
    msg = mail.message()
    assert msg["X-Bounce-Recipient"] == "bob2@example.net"  # the hard bounce names the forward
    assert msg["X-Bounce-Type"] == "bounce" and msg["X-Bounce-Status"] == "5.1.1"
    assert msg["X-Bouncetrack-Forwarded"] == "1" and msg["Auto-Submitted"] == "auto-generated"
    assert b"\xc3\xa9" in mail.data and b"\r\n..a line" not in mail.data  # dot-unstuffed
    assert [j.state for j in store.jobs()] == ["delivered"]


def test_forward_retries_on_temporary_rejection(tmp_path: Path, store: SQLiteStore, sink: SmtpSink) -> None:
    config = make_config(tmp_path, sink.port)
    store_report(store, config, [make_event()])
    sink.reject_next(1)
    clock = FakeClock()
    assert run_once(config, store, clock).retried == 1
    [job] = store.jobs()
    assert job.state == "pending" and job.attempts == 1 and "451" in (job.last_error or "")
    clock.t = job.next_attempt_at
    assert run_once(config, store, clock).delivered == 1
    assert len(sink.messages) == 1


def test_relay_down_is_retried(tmp_path: Path, store: SQLiteStore) -> None:
    config = make_config(tmp_path, free_port())
    store_report(store, config, [make_event()])
    assert run_once(config, store, FakeClock()).retried == 1
    [job] = store.jobs()
    assert job.state == "pending" and "Connection" in (job.last_error or "")


def test_purged_raw_report_is_dead(tmp_path: Path, store: SQLiteStore, sink: SmtpSink) -> None:
    config = make_config(tmp_path, sink.port)
    store_report(store, config, [make_event()])
    store.purge_raw_before(T0 + 1)
    assert run_once(config, store, FakeClock()).dead == 1
    [job] = store.jobs()
    assert job.state == "dead" and "raw report" in (job.last_error or "")
    assert not sink.messages


def test_delivery_reports_are_not_forwarded_by_smtp(tmp_path: Path, store: SQLiteStore, sink: SmtpSink) -> None:
    config = make_config(tmp_path, sink.port)
    store_report(store, config, [make_event(type="delivered", hard=False, action="delivered")])
    assert store.jobs() == []


def test_one_report_both_channels(tmp_path: Path, store: SQLiteStore, sink: SmtpSink) -> None:
    clock = FakeClock()
    with WebhookReceiver(SECRET, clock=clock) as rx:
        config = make_config(tmp_path, sink.port, webhook_url=rx.url)
        events = [make_event(1), make_event(2)]
        store_report(store, config, events)
        assert sorted(j.channel for j in store.jobs()) == ["smtp", "webhook", "webhook"]
        assert run_once(config, store, clock).delivered == 3
        assert sorted(rx.accepted_ids()) == sorted(e.event_id for e in events)
        assert len(sink.messages) == 1


# --- end to end through the real Postfix harness -----------------------------------------


@pytest.mark.postfix
def test_through_postfix_bounce_is_forwarded_by_smtp_and_webhook(make_stack: Callable[..., Any]) -> None:
    """Rejected recipient -> Postfix bounce -> VERP -> real pipe -> store + outbox ->
    worker -> SMTP sink (null sender, X-Bounce-*) and signed webhook."""
    with SmtpSink() as sink, WebhookReceiver(SECRET) as rx:
        st = make_stack(
            with_milter=True,
            pipe="real",
            domains={"tracked.test": {
                "tracking": True,
                "forward": "postmaster@tracked.test",
                "webhook": {"url": rx.url, "secret": SECRET, "timeout_seconds": 5},
            }},
            config_extra={"outbox": {"smtp_host": "127.0.0.1", "smtp_port": sink.port}},
        )
        res = st.send("news@tracked.test", ["unknown-e2e@remote.test"])
        assert res.accepted, res
        config = load_config(st.config_path)
        store = open_store(config.store_url)
        try:
            jobs = st.wait_for(lambda: len(store.jobs()) >= 2 and store.jobs(), 40)
            assert sorted(j.channel for j in jobs) == ["smtp", "webhook"]
            stats = run_worker(config, store, once=True, handle_signals=False)
            assert stats.delivered == 2, stats
        finally:
            store.close()
        [body] = [r.json() for r in rx.accepted()]
        data = body["data"]
        assert (data["type"], data["recipient"], data["hard"], data["reason"]) == (
            "bounce", "unknown-e2e@remote.test", True, "userunknown")
        assert data["original_sender"] == "news@tracked.test" and data["token_status"] == "valid"
        assert sink.wait_for(1)
        [mail] = sink.messages
        assert mail.mail_from == "<>" and mail.rcpt_tos == ("postmaster@tracked.test",)
        msg = mail.message()
        assert msg["X-Bounce-Recipient"] == "unknown-e2e@remote.test"
        assert msg["X-Bounce-Type"] == "bounce" and msg["X-Bounce-Status"] == "5.1.1"
        assert msg["X-Bouncetrack-Forwarded"] == "1"
        assert msg.get_content_type() == "multipart/report"  # the original bounce itself
