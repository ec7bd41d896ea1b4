"""The send endpoint without an MTA: compose.py (pure), validation, auth, SMTP error mapping.

The real Postfix + milter path is in tests/test_api_send_postfix.py.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import socket
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bouncetrack.api import send as send_mod
from bouncetrack.api.deps import ApiContext
from bouncetrack.api.compose import SendRequest, compose, html_to_text
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.store.base import MessageRecord, RecipientRecord
from bouncetrack.store.sqlite import SQLiteStore
from bouncetrack.core.tokens import hash_api_token

TOKEN_A = "bt_token-for-a"  # a.test (tracked) and a2.test (untracked)
TOKEN_B = "bt_token-for-b"  # b.test


def make_config(tmp_path: Path) -> Config:
    text = f"""
bounce_domain: bounce.test
secret_file: {tmp_path}/verp.key
store: sqlite:///{tmp_path}/bt.db
outbox:
  smtp_host: 127.0.0.1
  smtp_port: 2525
domains:
  a.test:
    tracking: true
    api_tokens: ["{hash_api_token(TOKEN_A)}"]
  a2.test:
    tracking: false
    api_tokens: ["{hash_api_token(TOKEN_A)}"]
  b.test:
    tracking: false
    api_tokens: ["{hash_api_token(TOKEN_B)}"]
"""
    return load_config_text(text, tmp_path / "bouncetrack.yaml")


def send_app(config: Config) -> FastAPI:
    """The send router on its own app, wired as ``create_app`` wires it (ApiContext in
    ``app.state.ctx``), so these tests do not depend on the other routers."""
    app = FastAPI(title="bouncetrack send")
    app.state.ctx = ApiContext(config)
    app.include_router(send_mod.router)
    return app


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(send_app(config)) as c:
        yield c


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "envelope": "info@a2.test",
        "recipient": "rcpt@remote.test",
        "from": "info@a2.test",
        "to": "rcpt@remote.test",
        "subject": "Hello",
        "html": "<p>This is example content.</p>",
        "dsn": {"notify": "FAILURE", "ret": "HDRS"},
    }
    b.update(over)
    return {k: v for k, v in b.items() if v is not None}


def req(**over: Any) -> SendRequest:
    return SendRequest.model_validate(body(**over))


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# --------------------------------------------------------------------------- compose


def test_compose_html_and_text_is_multipart_alternative() -> None:
    sub = compose(req(text="Plain version.\n", html="<p>HTML version.</p>", cc="Boss <boss@a2.test>"))
    assert b"\r\n" in sub.message and b"\n" not in sub.message.replace(b"\r\n", b"")
    msg = parse(sub.message)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Plain version."
    assert "HTML version." in parts[1].get_content()
    assert msg["Message-ID"] == sub.message_id and sub.message_id.endswith("@a2.test>")
    assert msg["MIME-Version"] == "1.0" and msg["Date"] and msg["Subject"] == "Hello"
    assert msg["From"] == "info@a2.test" and msg["To"] == "rcpt@remote.test"
    assert msg["Cc"] == "Boss <boss@a2.test>"
    assert "Return-Path" not in msg


def test_compose_html_only_gets_a_derived_text_alternative() -> None:
    sub = compose(req(html="<h1>Title</h1><p>Hello&nbsp;<b>you</b> &amp; me<br>next</p>"
                           "<ul><li>one</li><li>two</li></ul><a href='https://x.test/a'>read</a>"
                           "<style>p{color:red}</style><script>alert(1)</script>"))
    plain, html = list(parse(sub.message).iter_parts())
    text = plain.get_content()
    assert text == "Title\n\nHello you & me\nnext\n\n- one\n- two\nread (https://x.test/a)\n"
    assert "alert" not in text and "color" not in text
    assert html.get_content_type() == "text/html"


def test_compose_text_only_is_single_part() -> None:
    msg = parse(compose(req(html=None, text="Just text.")).message)
    assert msg.get_content_type() == "text/plain" and msg.get_content().strip() == "Just text."


def test_compose_non_ascii_is_7bit_encoded() -> None:
    sub = compose(req(**{"from": "Jürgen <info@a2.test>", "subject": "Grüße", "html": "<p>wörld ✓</p>"}))
    assert sub.message.isascii()  # no 8BITMIME/SMTPUTF8 needed
    msg = parse(sub.message)
    assert str(msg["Subject"]) == "Grüße" and msg["From"].addresses[0].display_name == "Jürgen"
    assert "wörld ✓" in list(msg.iter_parts())[1].get_content()


def test_compose_envelope_and_dsn_parameters() -> None:
    sub = compose(req(recipient=["a@remote.test", "B@remote.test", "a@remote.test"],
                      dsn={"notify": "delay,failure", "ret": "full"}))
    assert sub.mail_from == "info@a2.test" and sub.mail_options == ("RET=FULL",)
    assert sub.recipients == ("a@remote.test", "B@remote.test")  # duplicate dropped
    assert sub.rcpt_options["B@remote.test"] == ("NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;B@remote.test")


def test_compose_defaults_envelope_to_from_and_bounce_to_return_path() -> None:
    sub = compose(req(envelope=None, dsn=None, bounce="bounces@a2.test", **{"from": "Info <news@a2.test>"}))
    assert sub.mail_from == "news@a2.test" and sub.mail_options == ()
    assert sub.rcpt_options["rcpt@remote.test"] == ("ORCPT=rfc822;rcpt@remote.test",)
    assert parse(sub.message)["Return-Path"] == "<bounces@a2.test>"


def test_compose_to_accepts_lists_and_display_names() -> None:
    msg = parse(compose(req(to=["A <a@remote.test>, b@remote.test", '"Doe, J" <j@remote.test>'])).message)
    assert [a.addr_spec for a in msg["To"].addresses] == ["a@remote.test", "b@remote.test", "j@remote.test"]
    assert msg["To"].addresses[2].display_name == "Doe, J"


_ADDRISH = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[ -~]{0,10}<?[a-z.]{0,5}@[a-z.\[\]0-9:]{0,12}>?[ -~]{0,5}", fullmatch=True),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(frm=_ADDRISH, to=st.one_of(_ADDRISH, st.lists(_ADDRISH, max_size=3)), env=st.one_of(st.none(), _ADDRISH),
       rcpt=st.one_of(_ADDRISH, st.lists(_ADDRISH, max_size=3)), subject=st.one_of(st.none(), st.text(max_size=30)),
       html=st.one_of(st.none(), st.text(max_size=60)), notify=st.one_of(st.none(), st.text(max_size=20)))
def test_any_input_is_valid_or_a_validation_error_never_a_crash_or_injection(
        frm: str, to: str | list[str], env: str | None, rcpt: str | list[str], subject: str | None,
        html: str | None, notify: str | None) -> None:
    raw = {"from": frm, "to": to, "cc": to, "recipient": rcpt, "envelope": env, "subject": subject,
           "html": html, "text": "t", "dsn": {"notify": notify}}
    try:
        request = SendRequest.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError:
        return  # -> 422
    message = compose(request).message
    assert message.isascii()
    head = message.split(b"\r\n\r\n", 1)[0]
    names = {line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")}
    assert names <= {b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"MIME-Version",
                     b"Content-Type", b"Content-Transfer-Encoding"}, head


def test_html_to_text_empty() -> None:
    assert html_to_text("") == "\n" and html_to_text("<script>x</script>") == "\n"


# --------------------------------------------------------------------------- endpoint: auth


def test_missing_and_wrong_token_401(client: TestClient) -> None:
    r = client.post("/v1/send", json=body())
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r2 = client.post("/v1/send?access_token=nope", json=body())
    assert r2.status_code == 401 and r2.json() == r.json()
    # No token: 401 before the body is looked at (no validation details for strangers).
    r3 = client.post("/v1/send", json={"recipient": []})
    assert r3.status_code == 401 and r3.json() == r.json()


@pytest.mark.parametrize("field,over", [
    ("from", {"from": "info@b.test"}),
    ("envelope", {"envelope": "info@b.test"}),
    ("bounce", {"bounce": "bounces@b.test"}),
    ("envelope", {"envelope": None, "from": "x@elsewhere.test"}),  # from is checked first
])
def test_sender_outside_token_domains_403(client: TestClient, field: str, over: dict[str, Any]) -> None:
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json=body(**over))
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert detail["error"] == "forbidden_sender_domain"
    assert detail["field"] == ("from" if "from" in over else field)
    assert "not one of this access token's domains" in detail["message"]


def test_bearer_token_accepted_and_other_domains_token_refused(client: TestClient, monkeypatch: Any) -> None:
    monkeypatch.setattr(send_mod, "submit", lambda config, sub: send_mod.Queued("ABC123", "2.0.0 Ok: queued as ABC123"))
    r = client.post("/v1/send", json=body(), headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert r.status_code == 202, r.text
    r = client.post("/v1/send", json=body(), headers={"Authorization": f"Bearer {TOKEN_B}"})
    assert r.status_code == 403


# --------------------------------------------------------------------------- endpoint: 422


def loc_of(r: Any) -> list[tuple[str, ...]]:
    assert r.status_code == 422, r.text
    return [tuple(str(p) for p in e["loc"]) for e in r.json()["detail"]]


@pytest.mark.parametrize("over,loc,words", [
    ({"dsn": {"notify": "NEVER,FAILURE"}}, ("body", "dsn", "notify"), "NEVER must be the only value"),
    ({"dsn": {"notify": "FAILURE, DELAY,"}}, ("body", "dsn", "notify"), "empty NOTIFY item"),
    ({"dsn": {"notify": "SOMETIMES"}}, ("body", "dsn", "notify"), "unknown NOTIFY value"),
    ({"dsn": {"ret": "BODY"}}, ("body", "dsn", "ret"), "RET must be FULL or HDRS"),
    ({"dsn": {"notify": "FAILURE", "when": "now"}}, ("body", "dsn", "when"), "Extra inputs"),
    ({"recipient": []}, ("body", "recipient"), "at least one recipient"),
    ({"recipient": ["ok@remote.test", "not-an-address"]}, ("body", "recipient"), "item 1"),
    ({"recipient": "a b@remote.test"}, ("body", "recipient"), "invalid local part"),
    ({"recipient": "a@remote.test>\r\nRCPT TO:<x@y.test"}, ("body", "recipient"), "CR or LF"),
    ({"recipient": "ü@remote.test"}, ("body", "recipient"), "non-ASCII"),
    ({"envelope": "info@"}, ("body", "envelope"), "not an email address"),
    ({"envelope": "info@a2.test\r\nBcc: x@y.test"}, ("body", "envelope"), "CR or LF"),
    ({"bounce": "bounce at a2.test"}, ("body", "bounce"), "not an email address"),
    ({"from": "info@a2.test, other@a2.test"}, ("body", "from"), "exactly one From address"),
    ({"from": "Info\r\nBcc: victim@x.test <info@a2.test>"}, ("body", "from"), "CR or LF"),
    ({"to": "Friend <friend@remote.test>\nBcc: victim@x.test"}, ("body", "to"), "CR or LF"),
    ({"to": ["ok@remote.test", "<<bad"]}, ("body", "to"), "item 1"),
    ({"cc": "cc@@remote.test"}, ("body", "cc"), ""),
    ({"to": "0@"}, ("body", "to"), "not a valid address list"),  # the stdlib parser raised IndexError
    ({"subject": "Hi\r\nBcc: victim@x.test"}, ("body", "subject"), "CR or LF"),
    ({"subject": "Hi\nthere"}, ("body", "subject"), "CR or LF"),
    ({"html": None, "text": None}, ("body", "html"), "either html or text"),
    ({"html": "a\x00b"}, ("body", "html"), "NUL"),
    ({"recipients": "typo@remote.test"}, ("body", "recipients"), "Extra inputs"),
])
def test_validation_422_names_the_field(client: TestClient, over: dict[str, Any], loc: tuple[str, ...],
                                         words: str) -> None:
    b = body(**over)
    if over.get("html", "x") is None:
        b.pop("html", None)
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json=b)
    assert loc in loc_of(r), r.json()
    msgs = " ".join(e["msg"] for e in r.json()["detail"])
    assert words in msgs, msgs


def test_missing_required_fields_422(client: TestClient) -> None:
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json={"html": "x"})
    locs = loc_of(r)
    assert {("body", "recipient"), ("body", "from"), ("body", "to")} <= set(locs)


def test_validation_before_domain_check(client: TestClient) -> None:
    # A malformed request of a foreign domain is a 422, not a 403 (nothing to check yet).
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json=body(**{"from": "x@b.test", "recipient": []}))
    assert r.status_code == 422


def test_openapi_documents_the_send_request(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/send"]["post"]
    assert set(op["responses"]) >= {"202", "401", "403", "422", "502", "503"}
    props = schema["components"]["schemas"]["SendRequest"]["properties"]
    assert {"envelope", "recipient", "from", "to", "html", "text", "bounce", "dsn"} <= set(props)
    assert "Return-Path" in props["bounce"]["description"]
    dsn = schema["components"]["schemas"]["DsnOptions"]["properties"]
    assert "NEVER" in dsn["notify"]["description"]


# --------------------------------------------------------------------------- endpoint: SMTP edge


class FakeSMTP:
    """Stands in for smtplib.SMTP: scripted replies, records the commands."""

    script: dict[str, tuple[int, bytes]] = {}
    log: list[tuple[str, Any]] = []

    def __init__(self, host: str, port: int, timeout: float, local_hostname: str) -> None:
        self.log.append(("connect", (host, port)))

    def __enter__(self) -> "FakeSMTP":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.log.append(("quit", None))

    def ehlo(self) -> tuple[int, bytes]:
        return 250, b"ok"

    def mail(self, sender: str, options: list[str]) -> tuple[int, bytes]:
        self.log.append(("mail", (sender, options)))
        return self.script.get("mail", (250, b"2.1.0 Ok"))

    def rcpt(self, rcpt: str, options: list[str]) -> tuple[int, bytes]:
        self.log.append(("rcpt", (rcpt, options)))
        return self.script.get(f"rcpt:{rcpt}", (250, b"2.1.5 Ok"))

    def data(self, msg: bytes) -> tuple[int, bytes]:
        self.log.append(("data", msg))
        return self.script.get("data", (250, b"2.0.0 Ok: queued as 4QxYz12"))

    def rset(self) -> tuple[int, bytes]:
        self.log.append(("rset", None))
        return 250, b"ok"


@pytest.fixture
def fake_smtp(monkeypatch: Any) -> type[FakeSMTP]:
    FakeSMTP.script = {}
    FakeSMTP.log = []
    monkeypatch.setattr("bouncetrack.api.send.smtplib.SMTP", FakeSMTP)
    return FakeSMTP


def test_untracked_send_202_and_what_goes_on_the_wire(client: TestClient, fake_smtp: type[FakeSMTP]) -> None:
    r = client.post(f"/v1/send?access_token={TOKEN_A}",
                    json=body(recipient=["x@remote.test", "y@remote.test"], bounce="bounce@a2.test"))
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["queue_id"] == "4QxYz12" and got["tracked"] is False and got["token"] is None
    assert got["envelope_sender"] == "bounce@a2.test" and got["recipients"] == ["x@remote.test", "y@remote.test"]
    assert got["warnings"] == []
    log = fake_smtp.log
    assert log[0] == ("connect", ("127.0.0.1", 2525))
    assert log[1] == ("mail", ("info@a2.test", ["RET=HDRS"]))
    assert log[2] == ("rcpt", ("x@remote.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;x@remote.test"]))
    data = dict(log)["data"]
    msg = parse(data)
    assert msg["Message-ID"] == got["message_id"] and msg["Return-Path"] == "<bounce@a2.test>"


def test_tracked_response_carries_the_milters_token(client: TestClient, config: Config,
                                                    fake_smtp: type[FakeSMTP], monkeypatch: Any) -> None:
    # Play the milter: record the message (by Message-ID and queue id) during DATA.
    store = SQLiteStore.from_url(config.store_url)

    def data(self: FakeSMTP, msg: bytes) -> tuple[int, bytes]:
        store.record_message(MessageRecord(
            token_id=77, token="tok77tok77tok77tok77tok7", queue_id="4QxYz12",
            message_id=parse(msg)["Message-ID"], sender_domain="a.test", envelope_sender="info@a.test",
            verp_sender="b+tok77tok77tok77tok77tok7@bounce.test", dsn_ret=None, dsn_envid=None,
            recipients=(RecipientRecord("rcpt@remote.test", "rfc822;rcpt@remote.test", None),),
            created_at=time.time()))
        return 250, b"2.0.0 Ok: queued as 4QxYz12"

    monkeypatch.setattr(fake_smtp, "data", data)
    try:
        r = client.post(f"/v1/send?access_token={TOKEN_A}",
                        json=body(envelope="info@a.test", **{"from": "info@a.test"}))
    finally:
        store.close()
    assert r.status_code == 202, r.text
    got = r.json()
    assert (got["tracked"], got["token"], got["envelope_sender"]) == (
        True, "tok77tok77tok77tok77tok7", "b+tok77tok77tok77tok77tok7@bounce.test")


def test_tracked_domain_without_milter_record_warns(client: TestClient, fake_smtp: type[FakeSMTP]) -> None:
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json=body(envelope="info@a.test", **{"from": "info@a.test"}))
    assert r.status_code == 202
    assert r.json()["tracked"] is False and "milter recorded no message" in r.json()["warnings"][0]


@pytest.mark.parametrize("script,code,error,stage", [
    ({"mail": (451, b"4.3.0 Temporary lookup failure")}, 503, "smtp_unavailable", "MAIL FROM:<info@a2.test>"),
    ({"mail": (553, b"5.7.1 Sender address rejected")}, 502, "smtp_rejected", "MAIL FROM:<info@a2.test>"),
    ({"rcpt:rcpt@remote.test": (550, b"5.1.1 User unknown")}, 502, "smtp_rejected", "RCPT TO:<rcpt@remote.test>"),
    ({"rcpt:rcpt@remote.test": (452, b"4.5.3 Too many recipients")}, 503, "smtp_unavailable",
     "RCPT TO:<rcpt@remote.test>"),
    ({"data": (554, b"5.7.1 Message rejected by milter")}, 502, "smtp_rejected", "DATA"),
    ({"data": (451, b"4.7.1 Service unavailable - try again later")}, 503, "smtp_unavailable", "DATA"),
])
def test_smtp_replies_map_to_http(client: TestClient, fake_smtp: type[FakeSMTP], script: dict[str, Any],
                                  code: int, error: str, stage: str) -> None:
    fake_smtp.script = script
    r = client.post(f"/v1/send?access_token={TOKEN_A}", json=body())
    assert r.status_code == code, r.text
    d = r.json()["detail"]
    assert (d["error"], d["smtp_stage"], d["smtp_code"]) == (error, stage, int(next(iter(script.values()))[0]))
    assert d["smtp_reply"] == next(iter(script.values()))[1].decode()
    assert d["retryable"] is (code == 503)
    assert ("retry-after" in r.headers) is (code == 503)
    if "rcpt" in stage.lower() or "MAIL" in stage:
        assert ("rset", None) in fake_smtp.log and not any(k == "data" for k, _ in fake_smtp.log)


def test_refused_recipient_aborts_whole_transaction(client: TestClient, fake_smtp: type[FakeSMTP]) -> None:
    fake_smtp.script = {"rcpt:b@remote.test": (554, b"5.7.1 <b@remote.test>: Relay access denied")}
    r = client.post(f"/v1/send?access_token={TOKEN_A}",
                    json=body(recipient=["a@remote.test", "b@remote.test", "c@remote.test"]))
    assert r.status_code == 502 and "Relay access denied" in r.json()["detail"]["smtp_reply"]
    assert [k for k, _ in fake_smtp.log] == ["connect", "mail", "rcpt", "rcpt", "rset", "quit"]


def test_connection_refused_503(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path)
    config = dataclasses.replace(config, outbox=dataclasses.replace(config.outbox, smtp_port=port))
    with TestClient(send_app(config)) as c:
        r = c.post(f"/v1/send?access_token={TOKEN_A}", json=body())
    assert r.status_code == 503, r.text
    d = r.json()["detail"]
    assert d["error"] == "smtp_unavailable" and d["retryable"] is True and d["smtp_code"] is None
    assert "cannot reach the local MTA" in d["message"] and r.headers["retry-after"]


# --------------------------------------------------------------------------- store query


def test_store_message_by_message_id(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        def rec(token_id: int, queue_id: str | None, mid: str | None) -> MessageRecord:
            return MessageRecord(token_id=token_id, token=f"t{token_id}", queue_id=queue_id, message_id=mid,
                                 sender_domain="a.test", envelope_sender="i@a.test", verp_sender="b+t@bounce.test",
                                 dsn_ret=None, dsn_envid=None,
                                 recipients=(RecipientRecord("r@remote.test", None, None),), created_at=1.0)
        store.record_message(rec(1, "Q1", "<m@a.test>"))
        store.record_message(rec(2, "Q2", "<m@a.test>"))
        store.record_message(rec(3, "Q3", None))
        got = store.message_by_message_id("<m@a.test>")
        assert got is not None and got.token_id == 2 and got.recipients[0].address == "r@remote.test"
        got = store.message_by_message_id("<m@a.test>", "Q1")
        assert got is not None and got.token_id == 1
        assert store.message_by_message_id("<m@a.test>", "Q3") is None
        assert store.message_by_message_id("<other@a.test>") is None
    finally:
        store.close()
