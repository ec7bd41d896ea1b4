"""Webhook signing/verification, payload schema, response handling, backoff, job selection.

Delivery tests use real HTTP on loopback (harness.webhook_receiver).
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from contextlib import closing
from dataclasses import replace
from email.utils import formatdate

import pytest

from bouncetrack.core.config import DomainPolicy, WebhookConfig
from bouncetrack.core.events import event_to_json, iso_utc
from bouncetrack.forward import backoff, webhook
from bouncetrack.forward.httpclient import HttpClient
from bouncetrack.forward.jobs import jobs_for, primary_event
from bouncetrack.harness.webhook_receiver import WebhookReceiver
from bouncetrack.store.base import BounceEvent

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def make_event(**kw: object) -> BounceEvent:
    values: dict[str, object] = dict(
        event_id="3f2b9c0e8d5a4e1f9b7c6d5e4f3a2b1c",
        type="bounce",
        hard=True,
        reason="userunknown",
        status="5.1.1",
        reply_code="550",
        diagnostic="smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected",
        recipient="bob@example.net",
        reported_recipient="bob@example.net",
        action="failed",
        remote_mta="dns; mx.example.net",
        domain="example.com",
        original_sender="news@example.com",
        original_message_id="<20240501120000.1234@example.com>",
        token="aebagbafaydqqcikbmgq2dq4",
        token_status="valid",
        flagged=False,
        message_pk=1,
        received_at=1714564805.25,
        dedupe_key="k1",
        sent_at=1714564800.0,
        queue_id="4Xk9Qn1vZtz3Jb",
    )
    values.update(kw)
    return BounceEvent(**values)  # type: ignore[arg-type]


# --- signing -------------------------------------------------------------------


def test_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    sig = webhook.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secret_bytes() -> None:
    assert webhook.secret_bytes("whsec_" + base64.b64encode(b"\x00\xffkey").decode()) == b"\x00\xffkey"
    assert webhook.secret_bytes("plain secret é") == "plain secret é".encode()
    with pytest.raises(ValueError):
        webhook.secret_bytes("whsec_not*base64")


def test_signature_round_trip_and_headers() -> None:
    event = make_event()
    now = 1_700_000_000.7
    req = webhook.build_request(event, "http://x/hook", SECRET, now)
    h = req.headers
    assert h["webhook-id"] == h["idempotency-key"] == event.event_id
    assert h["webhook-timestamp"] == "1700000000"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", h["webhook-signature"])
    # Mixed-case header names, as a receiver's framework may hand them over.
    received = {k.title(): v for k, v in h.items()}
    assert webhook.verify_signature(SECRET, received, req.body, now) == event.event_id
    # A plain (non-whsec) secret works the same way.
    req2 = webhook.build_request(event, "http://x/hook", "s3cret", now)
    assert webhook.verify_signature("s3cret", req2.headers, req2.body, now) == event.event_id


@pytest.mark.parametrize(
    "tamper",
    ["body", "id", "timestamp", "secret", "signature", "version", "missing"],
)
def test_tampering_is_rejected(tamper: str) -> None:
    now = 1_700_000_000.0
    req = webhook.build_request(make_event(), "http://x/hook", SECRET, now)
    headers, body, secret = dict(req.headers), req.body, SECRET
    if tamper == "body":
        body = body.replace(b'"hard":true', b'"hard":false')
        assert body != req.body
    elif tamper == "id":
        headers["webhook-id"] = "someotherid"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(now) + 1)
    elif tamper == "secret":
        secret = "whsec_" + base64.b64encode(b"another key entirely").decode()
    elif tamper == "signature":
        headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    elif tamper == "version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif tamper == "missing":
        del headers["webhook-signature"]
    with pytest.raises(webhook.SignatureError):
        webhook.verify_signature(secret, headers, body, now)


def test_rotation_any_signature_matches() -> None:
    now = 1_700_000_000.0
    req = webhook.build_request(make_event(), "http://x/hook", SECRET, now)
    headers = dict(req.headers)
    headers["webhook-signature"] = "v1,bm9wZQ== " + headers["webhook-signature"]
    assert webhook.verify_signature(SECRET, headers, req.body, now)


def test_replay_window() -> None:
    sent = 1_700_000_000.0
    req = webhook.build_request(make_event(), "http://x/hook", SECRET, sent)
    # Inside the 5-minute window, both directions (clock skew).
    for now in (sent, sent + 300, sent - 300):
        webhook.verify_signature(SECRET, req.headers, req.body, now)
    with pytest.raises(webhook.SignatureError, match="too old"):
        webhook.verify_signature(SECRET, req.headers, req.body, sent + 301)
    with pytest.raises(webhook.SignatureError, match="future"):
        webhook.verify_signature(SECRET, req.headers, req.body, sent - 301)
    # A wider tolerance is the receiver's choice.
    webhook.verify_signature(SECRET, req.headers, req.body, sent + 3600, tolerance=3600)


def test_retries_keep_id_and_body_but_resign() -> None:
    event = make_event()
    a = webhook.build_request(event, "http://x/hook", SECRET, 1_700_000_000)
    b = webhook.build_request(event, "http://x/hook", SECRET, 1_700_000_090)
    assert a.body == b.body
    assert a.headers["webhook-id"] == b.headers["webhook-id"]
    assert a.headers["webhook-signature"] != b.headers["webhook-signature"]


# --- payload -------------------------------------------------------------------


def test_payload_schema() -> None:
    event = make_event()
    doc = json.loads(webhook.body_for(event))
    assert doc["type"] == "bounce.event"
    assert doc["version"] == 1
    assert doc["timestamp"] == "2024-05-01T12:00:05.250Z"
    data = doc["data"]
    assert data == event_to_json(event)
    assert data["event_id"] == event.event_id
    assert data["type"] == "bounce" and data["hard"] is True and data["severity"] == "hard"
    assert data["received_at"] == "2024-05-01T12:00:05.250Z"
    assert data["sent_at"] == "2024-05-01T12:00:00.000Z"
    assert data["queue_id"] == "4Xk9Qn1vZtz3Jb"  # the original's Postfix queue id (issue 15)
    for key in (
        "reason", "status", "reply_code", "diagnostic", "recipient", "original_sender",
        "original_message_id", "token", "domain", "feedback_type", "flagged", "token_status",
    ):
        assert key in data
    soft = event_to_json(replace(event, hard=False, type="delay", sent_at=None))
    assert soft["severity"] == "soft" and soft["hard"] is False and soft["sent_at"] is None
    assert event_to_json(replace(event, type="weird"))["type"] == "unknown"


def test_body_is_ascii_json_even_for_utf8() -> None:
    body = webhook.body_for(make_event(recipient="jörg@exämple.de", diagnostic="550 \u2014 nope"))
    assert body.isascii()
    assert json.loads(body)["data"]["recipient"] == "jörg@exämple.de"


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1714564805.9996) == "2024-05-01T12:00:06.000Z"
    assert iso_utc(None) is None


def test_events_module_is_cheap_to_import() -> None:
    import subprocess
    import sys

    code = "import sys, bouncetrack.core.events; print(sorted(m for m in ('json','datetime','httpx','click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- response handling -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"), (202, "delivered"), (204, "delivered"),
        (410, "dead"),
        (408, "retry"), (425, "retry"), (429, "retry"), (500, "retry"), (502, "retry"),
        (503, "retry"), (504, "retry"),
        (400, "retry"), (401, "retry"), (404, "retry"), (301, "retry"),
    ],
)
def test_classify_response(status: int, outcome: str) -> None:
    assert webhook.classify_response(status, {}, 0.0).outcome == outcome


def test_retry_after() -> None:
    now = time.time()
    r = webhook.classify_response(429, {"Retry-After": "120"}, now)
    assert r.outcome == "retry" and r.retry_after == 120
    date = formatdate(now + 600, usegmt=True)
    r = webhook.classify_response(503, {"retry-after": date}, now)
    assert r.retry_after is not None and 598 <= r.retry_after <= 601
    assert webhook.parse_retry_after("garbage", now) is None
    assert webhook.parse_retry_after(formatdate(now - 100, usegmt=True), now) == 0.0


# --- delivery over real HTTP -------------------------------------------------------


def test_deliver_to_real_receiver() -> None:
    event = make_event()
    with WebhookReceiver(SECRET) as rx, closing(HttpClient()) as client:
        req = webhook.build_request(event, rx.url, SECRET, time.time())
        result = webhook.deliver(client, req, 5.0, time.time())
        assert result.outcome == "delivered" and result.status_code == 200
        [got] = rx.accepted()
        assert got.verified and got.webhook_id == got.idempotency_key == event.event_id
        assert got.json()["data"]["recipient"] == "bob@example.net"

        # The receiver rejects a request signed with another secret (401: retried, logged).
        bad = webhook.build_request(event, rx.url, "wrong", time.time())
        result = webhook.deliver(client, bad, 5.0, time.time())
        assert result.outcome == "retry" and result.status_code == 401

        rx.fail_next(1, 429, retry_after=30)
        result = webhook.deliver(client, req, 5.0, time.time())
        assert (result.outcome, result.status_code, result.retry_after) == ("retry", 429, 30)

        rx.answer_always(410)
        result = webhook.deliver(client, req, 5.0, time.time())
        assert result.outcome == "dead" and result.error is not None and "410" in result.error
        rx.answer_always(None)

        rx.slow(2.0, n=1)
        started = time.monotonic()
        result = webhook.deliver(client, req, 0.3, time.time())
        assert result.outcome == "retry" and result.error is not None and "timeout" in result.error
        assert time.monotonic() - started < 1.5

        rx.go_down()
        result = webhook.deliver(client, req, 2.0, time.time())
        assert result.outcome == "retry" and result.status_code is None
        rx.come_up()
        result = webhook.deliver(client, req, 5.0, time.time())
        assert result.outcome == "delivered"


def test_keep_alive_receiver_serves_many_deliveries_on_one_connection() -> None:
    """bench/capacity.py's receiver (keep_alive): the worker's client reuses its connection."""
    with WebhookReceiver(SECRET, keep_alive=True) as rx, closing(HttpClient()) as client:
        for _ in range(3):
            req = webhook.build_request(make_event(), rx.url, SECRET, time.time())
            assert webhook.deliver(client, req, 5.0, time.time()).outcome == "delivered"
        got = rx.accepted()
        assert len(got) == 3 and len({r.peer for r in got}) == 1  # one client port: one connection
    with WebhookReceiver(SECRET) as rx, closing(HttpClient()) as client:  # the default: a connection per request
        for _ in range(2):
            req = webhook.build_request(make_event(), rx.url, SECRET, time.time())
            assert webhook.deliver(client, req, 5.0, time.time()).outcome == "delivered"
        assert len({r.peer for r in rx.accepted()}) == 2


def test_deliver_invalid_url_is_retry_not_crash() -> None:
    req = webhook.build_request(make_event(), "http://[::1/nope", SECRET, time.time())
    with closing(HttpClient()) as client:
        assert webhook.deliver(client, req, 1.0, time.time()).outcome == "retry"


# --- backoff ---------------------------------------------------------------------


def test_backoff_ceilings_and_jitter() -> None:
    rng = random.Random(7)
    assert [backoff.ceiling(n, 30, 3600) for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600
    ]
    for n in range(1, 40):
        c = backoff.ceiling(n, 30, 3600)
        for _ in range(50):
            d = backoff.next_delay(n, 30, 3600, rng)
            assert c / 2 <= d <= c
    assert backoff.ceiling(10_000, 30, 3600) == 3600  # no overflow


def test_backoff_schedule_with_defaults_is_hours_long() -> None:
    low, high = backoff.total_wait_bounds(20, 30, 3600)
    assert (low, high) == (23505, 47010)  # 6.5 h .. 13.1 h, as documented
    # A receiver down for an hour never exhausts the attempts.
    assert low > 3600 * 6


# --- job selection ---------------------------------------------------------------


POLICY = DomainPolicy(
    name="example.com",
    forward="bounces@example.com",
    webhook=WebhookConfig(url="https://hooks.example.com/b", secret=SECRET),
)


def test_jobs_for_one_webhook_per_event_one_smtp_per_report() -> None:
    a = make_event(event_id="a", hard=False, reason="mailboxfull", recipient="a@x")
    b = make_event(event_id="b", hard=True, recipient="b@x")
    jobs = jobs_for([a, b], POLICY, now=5.0)
    assert [(j.channel, j.event_id, j.target) for j in jobs] == [
        ("webhook", "a", "https://hooks.example.com/b"),
        ("webhook", "b", "https://hooks.example.com/b"),
        ("smtp", "b", "bounces@example.com"),  # the hard bounce names the forward
    ]
    assert all(j.next_attempt_at == 5.0 and j.state == "pending" for j in jobs)


def test_jobs_for_never_forwards_unattributed() -> None:
    for status in ("forged", "unknown", "missing", "expired"):
        assert jobs_for([make_event(token_status=status)], POLICY) == []
    assert jobs_for([make_event(domain=None)], POLICY) == []


def test_jobs_for_flagged_and_delivery_reports() -> None:
    flagged = jobs_for([make_event(flagged=True)], POLICY)
    assert {j.channel for j in flagged} == {"webhook", "smtp"}
    delivered = jobs_for([make_event(type="delivered", hard=False)], POLICY)
    assert [j.channel for j in delivered] == ["webhook"]  # no SMTP forward of success DSNs
    assert jobs_for([make_event()], DomainPolicy(name="x")) == []
    only_forward = jobs_for([make_event()], DomainPolicy(name="x", forward="f@x"))
    assert [j.channel for j in only_forward] == ["smtp"]


def test_primary_event_order() -> None:
    events = [
        make_event(event_id="d", type="delay", hard=False),
        make_event(event_id="s", type="bounce", hard=False),
        make_event(event_id="h", type="bounce", hard=True),
    ]
    assert primary_event(events) is events[2]
    assert primary_event([]) is None
