"""POST /v1/send through the real private Postfix + milter + bounce pipe (issue 5).

The API submits to the stack's Postfix (``outbox.smtp_host``/``smtp_port`` pointed at
it); what the fake remote MX receives is the proof: the envelope sender and every
DSN parameter, tracked (milter overrides what the request asked for) and untracked
(the request's envelope, bounce and DSN options arrive as given).
"""

from __future__ import annotations

import dataclasses
import email
import sqlite3
import time
from typing import Any, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bouncetrack.api import send as send_mod
from bouncetrack.api.deps import ApiContext
from bouncetrack.core.config_loader import load_config
from bouncetrack.harness.fakemx import Transaction
from bouncetrack.core.tokens import hash_api_token
from tests.storeview import rows

pytestmark = pytest.mark.postfix

TRACKED_TOKEN = "bt_api-send-tracked"
UNTRACKED_TOKEN = "bt_api-send-untracked"

MESSAGE_SIZE_LIMIT = 200_000

STACK_OPTIONS = {
    "with_milter": True,
    "pipe": "real",
    "postfix_extra": {"message_size_limit": str(MESSAGE_SIZE_LIMIT)},
    "domains": {
        "tracked.test": {"tracking": True, "api_tokens": [hash_api_token(TRACKED_TOKEN)]},
        "untracked.test": {"tracking": False, "api_tokens": [hash_api_token(UNTRACKED_TOKEN)]},
    },
}


@pytest.fixture(scope="module")
def client(stack: Any) -> Iterator[TestClient]:
    # Bounces for untracked senders go back to them: let the fake MX receive those too.
    remote = stack.postfix.routes["remote.test"]
    stack.postfix.set_routes({**stack.postfix.routes, "untracked.test": remote, "tracked.test": remote})
    config = load_config(stack.config_path)
    config = dataclasses.replace(
        config, outbox=dataclasses.replace(config.outbox, smtp_host=stack.postfix.host, smtp_port=stack.postfix.port))
    app = FastAPI()
    app.state.ctx = ApiContext(config)  # as create_app wires it
    app.include_router(send_mod.router)
    with TestClient(app) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(stack: Any) -> None:
    stack.reset()
    if not stack.milter_running():
        stack.start_milter()


def post(client: TestClient, token: str, **body: Any) -> Any:
    body.setdefault("to", body["recipient"] if isinstance(body["recipient"], str) else ", ".join(body["recipient"]))
    body.setdefault("subject", "send API test")
    body.setdefault("html", "<p>Hello from the send API.</p>")
    return client.post(f"/v1/send?access_token={token}", json={k: v for k, v in body.items() if v is not None})


def events(stack: Any) -> list[sqlite3.Row]:
    return rows(stack.db_path)


def new_events(stack: Any, before: int, count: int, timeout: float = 30) -> list[sqlite3.Row]:
    got: list[sqlite3.Row] = stack.wait_for(lambda: (e := events(stack)[before:]) and len(e) >= count and e, timeout)
    return got


def delivered_to(stack: Any, rcpt: str, timeout: float = 20) -> Transaction:
    def done(f: Any) -> list[Transaction]:
        return [t for t in f.for_rcpt(rcpt) if t.data is not None or not t.rcpt(rcpt).accepted]

    txs: list[Transaction] = stack.fakemx.wait_for(done, timeout)
    return txs[-1]


def header(data: bytes, name: str) -> str | None:
    value = email.message_from_bytes(data)[name]
    return None if value is None else str(value)


def test_tracked_domain_milter_overrides_envelope_bounce_and_dsn(stack: Any, client: TestClient) -> None:
    before = len(events(stack))
    r = post(client, TRACKED_TOKEN, envelope="info@tracked.test", bounce="elsewhere@tracked.test",
             recipient=["unknown-api1@remote.test", "ok-api1@remote.test"], **{"from": "Info <info@tracked.test>"},
             dsn={"notify": "NEVER", "ret": "FULL"})
    assert r.status_code == 202, r.text
    got = r.json()
    token = got["token"]
    assert got["tracked"] is True and token and got["queue_id"]
    assert got["envelope_sender"] == f"b+{token}@bounce.test" and got["warnings"] == []

    tx = delivered_to(stack, "ok-api1@remote.test")
    assert tx.mail_from == f"b+{token}@bounce.test"  # the token the API returned is the one on the wire
    assert tx.mail_params["RET"] == "HDRS" and tx.mail_params["ENVID"] == token  # not RET=FULL
    for rcpt in ("unknown-api1@remote.test", "ok-api1@remote.test"):
        params = tx.rcpt(rcpt).params  # type: ignore[union-attr]
        assert params["NOTIFY"] == "FAILURE,DELAY" and params["ORCPT"] == f"rfc822;{rcpt}"  # not NEVER
    assert tx.data is not None
    assert header(tx.data, "Message-ID") == got["message_id"]
    assert header(tx.data, "Return-Path") is None  # the bounce field is ignored and never leaks
    assert (header(tx.data, "Content-Type") or "").startswith("multipart/alternative")

    # The rejected recipient's bounce comes back through the pipe, attributed to it.
    (event,) = new_events(stack, before, 1)
    assert (event["token"], event["token_status"], event["recipient"]) == (token, "valid", "unknown-api1@remote.test")
    assert (event["type"], event["hard"], event["domain"]) == ("bounce", 1, "tracked.test")
    assert event["original_message_id"] == got["message_id"]
    assert stack.fakemx.for_rcpt("elsewhere@tracked.test") == []


def test_tracked_without_envelope_uses_from(stack: Any, client: TestClient) -> None:
    r = post(client, TRACKED_TOKEN, recipient="ok-api2@remote.test", **{"from": "news@tracked.test"})
    assert r.status_code == 202, r.text
    assert r.json()["tracked"] is True
    assert delivered_to(stack, "ok-api2@remote.test").mail_from == r.json()["envelope_sender"]


def test_untracked_envelope_and_dsn_arrive_as_given(stack: Any, client: TestClient) -> None:
    r = post(client, UNTRACKED_TOKEN, envelope="sender@untracked.test", recipient="ok-api3@remote.test",
             text="plain", **{"from": "info@untracked.test"}, dsn={"notify": "SUCCESS,FAILURE", "ret": "FULL"})
    assert r.status_code == 202, r.text
    got = r.json()
    assert (got["tracked"], got["token"], got["envelope_sender"]) == (False, None, "sender@untracked.test")
    tx = delivered_to(stack, "ok-api3@remote.test")
    assert tx.mail_from == "sender@untracked.test" and tx.mail_params["RET"] == "FULL"
    assert "ENVID" not in tx.mail_params
    params = tx.rcpt("ok-api3@remote.test").params  # type: ignore[union-attr]
    assert (params["NOTIFY"], params["ORCPT"]) == ("SUCCESS,FAILURE", "rfc822;ok-api3@remote.test")
    assert tx.data is not None and header(tx.data, "Message-ID") == got["message_id"]


def test_untracked_bounce_becomes_the_envelope_sender(stack: Any, client: TestClient) -> None:
    r = post(client, UNTRACKED_TOKEN, envelope="info@untracked.test", bounce="bounces-api@untracked.test",
             recipient="unknown-api4@remote.test", **{"from": "info@untracked.test"}, dsn={"ret": "HDRS"})
    assert r.status_code == 202, r.text
    assert r.json()["envelope_sender"] == "bounces-api@untracked.test"
    tx = delivered_to(stack, "unknown-api4@remote.test")
    assert tx.mail_from == "bounces-api@untracked.test" and tx.mail_params.get("RET") == "HDRS"
    bounce = delivered_to(stack, "bounces-api@untracked.test", timeout=30)  # the bounce goes there...
    assert bounce.mail_from == ""
    assert stack.fakemx.for_rcpt("info@untracked.test") == []  # ...not to the envelope


def test_untracked_notify_never_no_bounce_comes_back(stack: Any, client: TestClient) -> None:
    # Control: without NOTIFY=NEVER the envelope sender gets its bounce back...
    r = post(client, UNTRACKED_TOKEN, envelope="control-api@untracked.test", recipient="unknown-api5@remote.test",
             **{"from": "info@untracked.test"})
    assert r.status_code == 202, r.text
    delivered_to(stack, "control-api@untracked.test", timeout=30)
    # ...with it, nothing comes back, though the recipient is rejected the same way.
    r = post(client, UNTRACKED_TOKEN, envelope="quiet-api@untracked.test", recipient="unknown-api6@remote.test",
             **{"from": "info@untracked.test"}, dsn={"notify": "NEVER"})
    assert r.status_code == 202, r.text
    tx = delivered_to(stack, "unknown-api6@remote.test")
    assert tx.rcpt("unknown-api6@remote.test").params["NOTIFY"] == "NEVER"  # type: ignore[union-attr]
    stack.postfix.wait_queue_empty(30)
    time.sleep(2)
    stack.postfix.flush()
    time.sleep(1)
    assert stack.fakemx.for_rcpt("quiet-api@untracked.test") == []


def test_other_domains_token_refused_and_nothing_sent(stack: Any, client: TestClient) -> None:
    r = post(client, UNTRACKED_TOKEN, recipient="ok-api7@remote.test", **{"from": "info@tracked.test"})
    assert r.status_code == 403 and r.json()["detail"]["field"] == "from"
    time.sleep(1)
    assert stack.fakemx.for_rcpt("ok-api7@remote.test") == []


def test_postfix_refusal_is_502_with_the_smtp_reply(stack: Any, client: TestClient) -> None:
    # Over the instance's message_size_limit (STACK_OPTIONS): Postfix answers 552 to DATA.
    r = post(client, UNTRACKED_TOKEN, recipient="ok-api8@remote.test", **{"from": "info@untracked.test"},
             html="<p>" + "x" * (MESSAGE_SIZE_LIMIT + 1000) + "</p>")
    assert r.status_code == 502, r.text
    d = r.json()["detail"]
    assert (d["error"], d["smtp_stage"], d["smtp_code"], d["retryable"]) == ("smtp_rejected", "DATA", 552, False)
    assert "too big" in d["smtp_reply"]
    time.sleep(1)
    assert stack.fakemx.for_rcpt("ok-api8@remote.test") == []


def test_milter_down_is_503_retryable(stack: Any, client: TestClient) -> None:
    stack.kill_milter()
    try:
        r = post(client, TRACKED_TOKEN, recipient="ok-api9@remote.test", **{"from": "info@tracked.test"})
        assert r.status_code == 503, r.text
        assert r.json()["detail"]["retryable"] is True and r.headers["retry-after"]
    finally:
        stack.start_milter()
    r = post(client, TRACKED_TOKEN, recipient="ok-api9@remote.test", **{"from": "info@tracked.test"})
    assert r.status_code == 202 and r.json()["tracked"] is True
